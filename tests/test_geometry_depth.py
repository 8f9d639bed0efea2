import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.geometry.depth import depth_to_metres, robust_depth


def test_16uc1_millimetres_become_metres_and_zero_becomes_invalid():
    raw = np.array([[0, 1000], [1234, 65535]], dtype=np.uint16)
    m = depth_to_metres(raw, "16UC1")
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    np.testing.assert_allclose(m[[0, 1, 1], [1, 0, 1]], [1.0, 1.234, 65.535], rtol=1e-6)


def test_32fc1_keeps_metres_and_invalidates_nan_inf_and_non_positive():
    raw = np.array([[0.5, np.nan], [np.inf, -1.0], [0.0, 2.25]], dtype=np.float32)
    m = depth_to_metres(raw, "32FC1")
    assert np.isnan(m[[0, 1, 1, 2], [1, 0, 1, 0]]).all()
    np.testing.assert_allclose(m[[0, 2], [0, 1]], [0.5, 2.25])


def test_unknown_depth_encoding_is_an_input_error_naming_the_supported_ones():
    with pytest.raises(InputError, match="'8UC3'.*16UC1.*32FC1"):
        depth_to_metres(np.zeros((2, 2), np.uint8), "8UC3")


def test_robust_depth_is_the_median_of_valid_pixels_in_the_window():
    depth = np.full((9, 9), np.nan, dtype=np.float32)
    # window 3x3 around (u=4, v=5): rows 4..6, cols 3..5
    depth[4, 3:6] = [1.0, 1.1, 50.0]  # 50 m: out of range
    depth[5, 3:6] = [1.2, 0.05, 1.3]  # 5 cm: below min_depth
    depth[6, 3:6] = [np.nan, 1.4, 1.5]
    depth[0, 0] = 0.2  # outside the window
    reading = robust_depth(depth, 4.0, 5.0, window=3, min_depth=0.1, max_depth=10.0)
    assert reading.ok and reading.n_valid == 6
    assert reading.value == pytest.approx(np.median([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]))


def test_robust_depth_rounds_subpixel_coordinates_to_the_nearest_pixel():
    depth = np.arange(25, dtype=np.float32).reshape(5, 5) / 10 + 1.0
    assert robust_depth(depth, 2.4, 1.6, window=1, min_valid=1).value == pytest.approx(depth[2, 2])


def test_robust_depth_without_valid_pixels_gives_none_and_a_reason():
    depth = np.zeros((6, 6), dtype=np.float32)
    depth[0, 0] = np.nan
    reading = robust_depth(depth, 2.0, 2.0, window=5)
    assert reading.value is None and not reading.ok
    assert "no valid depth at (2.0, 2.0)" in reading.reason and "0 of 25" in reading.reason


def test_robust_depth_off_the_image_says_so():
    reading = robust_depth(np.ones((4, 4), np.float32), 10.0, 1.0)
    assert reading.value is None and "outside the 4x4 depth image" in reading.reason
