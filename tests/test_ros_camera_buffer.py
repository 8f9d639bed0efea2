"""CameraBuffer without DDS: camera_info is validated on receipt, a bad one never replaces a good one."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from ros_helpers import BAD_CAMERA_INFO, camera_info_msg  # noqa: E402

from part_point_ros.geometry.camera import PinholeCamera  # noqa: E402
from part_point_ros.ros.camera_buffer import CameraBuffer, warn_on_drop  # noqa: E402

TOPIC = "/cam/color/camera_info"
CAMERA = PinholeCamera.from_intrinsics(
    fx=200.0, fy=200.0, cx=63.5, cy=47.5, width=128, height=96, d=[-0.1, 0.02, 0.0, 0.0, 0.0], frame_id="opt"
)


def camera_info(kind=None):
    return camera_info_msg(CAMERA, kind)


@pytest.mark.parametrize("kind", list(BAD_CAMERA_INFO))
def test_invalid_camera_info_is_rejected_in_one_line_and_the_last_valid_one_is_kept(kind):
    buffer = CameraBuffer(depth_size=2, camera_info_topic=TOPIC)
    reason = BAD_CAMERA_INFO[kind][3]
    first = buffer.add_camera_info(camera_info(kind))  # before any valid one
    assert first.startswith(f"camera_info on {TOPIC} (frame 'opt') rejected: {reason}")
    assert first.endswith("; none valid yet, so no grasp poses; fix the camera's calibration (or its driver)")
    assert "\n" not in first
    assert buffer.camera is None and buffer.camera_info_rejections == 1
    assert buffer.camera_info_error.startswith(reason)

    assert buffer.add_camera_info(camera_info()) == ""
    again = buffer.add_camera_info(camera_info(kind))
    assert "keeping the last valid one" in again
    np.testing.assert_array_equal(buffer.camera.k, CAMERA.k)  # the valid one stays
    np.testing.assert_array_equal(buffer.camera.d, CAMERA.d)
    assert buffer.camera_info_rejections == 2


def test_metric_depth_without_a_valid_camera_info_says_why():
    from part_point_ros.ros.conversions import numpy_to_image

    buffer = CameraBuffer(depth_size=2, camera_info_topic=TOPIC)
    depth = numpy_to_image(np.ones((96, 128), np.float32), "32FC1")
    assert buffer.metric_depth(depth) == f"no camera_info received on {TOPIC}"
    buffer.add_camera_info(camera_info("k22_zero"))
    assert buffer.metric_depth(depth) == (
        f"no valid camera_info on {TOPIC}: the last one was rejected "
        "(camera matrix K[2][2] is 0 but must be 1 (K = [fx s cx; 0 fy cy; 0 0 1], pixels))"
    )


class _Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


def test_a_stream_of_invalid_camera_infos_gives_one_warning_line():
    buffer, logger = CameraBuffer(depth_size=2, camera_info_topic=TOPIC), _Logger()
    callback = warn_on_drop(buffer.add_camera_info, logger)
    for _ in range(50):  # a camera streaming a broken calibration at 30 Hz: well within the throttle
        callback(camera_info("k22_zero"))
    callback(camera_info())  # accepted: no warning
    assert len(logger.lines) == 1 and "K[2][2] is 0 but must be 1" in logger.lines[0]
    assert buffer.camera_info_rejections == 50 and buffer.camera is not None
