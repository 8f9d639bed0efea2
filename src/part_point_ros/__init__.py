"""part_point_ros: point at object parts from language with a frozen MLLM and a small head.

The ROS-free core lives in the subpackages ``backbones``, ``heads``, ``grounding``, ``geometry``,
``data``, ``training``, ``sim`` and ``cli``; only ``ros`` imports rclpy.
"""

__version__ = "0.1.0"

# The ROS 2 build (colcon, ros2_ws) installs this package merged with its generated ``msg`` and
# ``srv`` subpackages. When these sources come first on sys.path (editable install, scripts/env.sh),
# look for those subpackages in the installed copy too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
