"""ros: thin rclpy nodes over the ROS-free core, message conversions, QoS, bringup.

The only subpackage that imports rclpy. Nodes: part_point_node, depth_fusion_node, sim_camera_node.
"""
