import sys

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable: run scripts/setup.sh (ROS 2 wheels) first")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from part_point_ros.errors import InputError  # noqa: E402
from part_point_ros.geometry.camera import PinholeCamera  # noqa: E402
from part_point_ros.geometry.transforms import RigidTransform  # noqa: E402
from part_point_ros.ros.conversions import (  # noqa: E402
    camera_from_camera_info,
    camera_info_from_camera,
    image_to_numpy,
    numpy_to_image,
    transform_from_msg,
    transform_msg,
)

RNG = np.random.default_rng(0)


def raw_image(encoding, rows_bytes, width, height, step, bigendian=False):
    msg = Image(encoding=encoding, width=width, height=height, step=step, is_bigendian=int(bigendian))
    msg.data = b"".join(rows_bytes)
    return msg


@pytest.mark.parametrize(
    ("encoding", "array"),
    [
        ("rgb8", RNG.integers(0, 255, (5, 7, 3), dtype=np.uint8)),
        ("bgr8", RNG.integers(0, 255, (4, 3, 3), dtype=np.uint8)),
        ("mono8", RNG.integers(0, 255, (6, 2), dtype=np.uint8)),
        ("16UC1", RNG.integers(0, 65535, (3, 5), dtype=np.uint16)),
        ("mono16", RNG.integers(0, 65535, (2, 2), dtype=np.uint16)),
        ("32FC1", RNG.normal(size=(4, 6)).astype(np.float32)),
    ],
)
def test_numpy_image_round_trip(encoding, array):
    msg = numpy_to_image(array, encoding)
    assert isinstance(msg, Image) and msg.encoding == encoding
    assert (msg.height, msg.width, msg.step) == (array.shape[0], array.shape[1], array[0].nbytes)
    assert msg.is_bigendian == (sys.byteorder == "big")
    back = image_to_numpy(msg)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_padded_rows_are_cut_at_the_width():
    # 3 px of rgb8 = 9 bytes per row, step 12: 3 padding bytes that must not leak into pixels
    rows = [bytes([r * 10 + c for c in range(9)]) + b"\xff\xff\xff" for r in range(2)]
    out = image_to_numpy(raw_image("rgb8", rows, width=3, height=2, step=12))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[1, 2], [16, 17, 18])
    assert 255 not in out


def test_big_endian_16uc1_with_padding():
    values = np.array([[1, 513, 65534], [258, 0, 4096]], dtype=np.uint16)
    rows = [values[r].astype(">u2").tobytes() + b"\x00\x00" for r in range(2)]  # step 8 = 6 + 2 padding
    out = image_to_numpy(raw_image("16UC1", rows, width=3, height=2, step=8, bigendian=True))
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_big_endian_32fc1():
    values = np.array([[0.5, -2.25], [1e-3, 7.0]], dtype=np.float32)
    rows = [values[r].astype(">f4").tobytes() for r in range(2)]
    np.testing.assert_array_equal(image_to_numpy(raw_image("32FC1", rows, 2, 2, 8, bigendian=True)), values)


def test_unsupported_encoding_is_one_line_naming_the_supported_ones():
    msg = raw_image("yuv422", [b"\x00" * 4], width=2, height=1, step=4)
    with pytest.raises(InputError) as err:
        image_to_numpy(msg)
    text = str(err.value)
    assert "\n" not in text and "'yuv422'" in text
    assert all(enc in text for enc in ("rgb8", "bgr8", "mono8", "16UC1", "32FC1"))


def test_inconsistent_images_are_input_errors():
    with pytest.raises(InputError, match="step 4 is smaller"):
        image_to_numpy(raw_image("rgb8", [b"\x00" * 4], width=2, height=1, step=4))
    with pytest.raises(InputError, match="need 12"):
        image_to_numpy(raw_image("mono8", [b"\x00" * 6], width=6, height=2, step=6))
    with pytest.raises(InputError, match="empty"):
        image_to_numpy(raw_image("mono8", [], width=0, height=0, step=0))
    with pytest.raises(InputError, match="dtype uint16"):
        numpy_to_image(np.zeros((2, 2), np.float32), "16UC1")
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")


def test_camera_info_round_trip_keeps_intrinsics_and_distortion():
    cam = PinholeCamera.from_intrinsics(
        fx=610.0,
        fy=612.0,
        cx=321.0,
        cy=238.0,
        width=640,
        height=480,
        d=[0.1, -0.2, 0.001, 0.002, 0.3, 0.01, 0.02, 0.03],
        distortion_model="rational_polynomial",
    )
    info = camera_info_from_camera(cam)
    info.header.frame_id = "opt"
    back = camera_from_camera_info(info)
    np.testing.assert_array_equal(back.k, cam.k)
    np.testing.assert_array_equal(back.d, cam.d)
    assert (back.width, back.height, back.distortion_model, back.frame_id) == (
        640,
        480,
        "rational_polynomial",
        "opt",
    )
    info.k = [0.0] * 9
    with pytest.raises(InputError, match="not calibrated"):
        camera_from_camera_info(info)


def test_transform_stamped_round_trip():
    t = RigidTransform.from_translation_quaternion(
        [0.1, 0.2, 0.3], [0.2, -0.1, 0.5, 0.8], parent_frame="a", child_frame="b"
    )
    msg = transform_msg(t, stamp=TransformStamped().header.stamp)
    assert (msg.header.frame_id, msg.child_frame_id) == ("a", "b")
    back = transform_from_msg(msg)
    np.testing.assert_allclose(back.matrix, t.matrix, atol=1e-12)
