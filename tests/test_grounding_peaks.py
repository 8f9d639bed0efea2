"""Peaks: argmax, LENS sub-pixel refinement, NMS and Gaussian smoothing on hand-built maps."""

from __future__ import annotations

import numpy as np
import pytest

from part_point_ros.grounding.peaks import (
    Peak,
    argmax_peak,
    gaussian_smooth,
    nms_peaks,
    refine_peak,
    subpixel_offset,
)


def quadratic(shape, centre, *, a=1.0, b=0.6, c=0.2):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dr, dc = rows - centre[0], cols - centre[1]
    return 10.0 - (a * dc**2 + b * dr**2 + c * dr * dc)


@pytest.mark.parametrize("centre", [(5.3, 7.8), (4.6, 3.45), (6.0, 6.0), (2.51, 9.49)])
def test_subpixel_recovers_quadratic_peak(centre):
    values = quadratic((12, 14), centre)
    peak = refine_peak(values, argmax_peak(values))
    assert abs(peak.row - centre[0]) < 0.05 and abs(peak.col - centre[1]) < 0.05


def test_subpixel_on_gaussian_beats_integer_peak():
    rows, cols = np.mgrid[0:16, 0:16]
    true = (7.3, 8.6)
    values = np.exp(-((rows - true[0]) ** 2 + (cols - true[1]) ** 2) / (2 * 2.0**2))
    integer = argmax_peak(values)
    refined = refine_peak(values, integer)
    err_int = np.hypot(integer.row - true[0], integer.col - true[1])
    err_ref = np.hypot(refined.row - true[0], refined.col - true[1])
    assert err_ref < err_int and err_ref < 0.15


def test_subpixel_offset_is_clipped_and_border_safe():
    ramp = np.tile(np.arange(10, dtype=float), (10, 1))  # linear: Newton step would be huge
    d_row, d_col = subpixel_offset(ramp, 5, 5)
    assert -1.0 <= d_col <= 1.0 and -1.0 <= d_row <= 1.0
    flat = np.ones((5, 5))
    assert subpixel_offset(flat, 2, 2) == (0.0, 0.0)
    values = quadratic((6, 6), (0.0, 2.4))  # peak on the top border: no row offset
    d_row, d_col = subpixel_offset(values, 0, 2)
    assert d_row == 0.0 and abs(2 + d_col - 2.4) < 0.05


def test_argmax_first_on_ties_and_nan_ignored():
    values = np.zeros((3, 4))
    values[1, 2] = values[2, 0] = 5.0
    values[0, 0] = np.nan
    assert argmax_peak(values) == Peak(1.0, 2.0, 5.0)
    with pytest.raises(ValueError, match="2D"):
        argmax_peak(np.zeros(4))


def test_nms_finds_separated_blobs_in_order_and_suppresses_neighbours():
    values = np.zeros((20, 20))
    values[3, 4], values[3, 5] = 1.0, 0.9  # neighbour within the radius: suppressed
    values[15, 15] = 0.8
    values[10, 2] = 0.5
    peaks = nms_peaks(values, radius=4.0, max_points=16)
    assert [(p.row, p.col) for p in peaks] == [(3, 4), (15, 15), (10, 2)]
    assert [p.value for p in peaks] == [1.0, 0.8, 0.5]
    assert len(nms_peaks(values, radius=4.0, max_points=2)) == 2
    assert [(p.row, p.col) for p in nms_peaks(values, radius=4.0, min_value=0.6)] == [(3, 4), (15, 15)]
    assert len(nms_peaks(values, radius=0.5)) == 3  # radius below one cell: (3, 5) is no local maximum
    assert len(nms_peaks(values, radius=0.5, local_max=False)) == 4  # plain NMS: the neighbour survives


def test_nms_takes_no_shoulder_of_a_blob_wider_than_its_radius():
    rows, cols = np.mgrid[0:40, 0:40]
    blob = np.exp(-(((cols - 20) / 10.0) ** 2) - ((rows - 20) / 2.0) ** 2)  # one wide peak at (20, 20)
    second = 0.7 * np.exp(-((cols - 5) ** 2 + (rows - 32) ** 2) / 2.0)  # a separate one at (32, 5)
    values = blob + second
    plain = nms_peaks(values, radius=4.0, max_points=5, min_value=0.5, local_max=False)
    assert len(plain) > 2 and all(abs(p.row - 20) <= 2 for p in plain[1:3])  # shoulders of the blob
    peaks = nms_peaks(values, radius=4.0, max_points=5, min_value=0.5)
    assert [(p.row, p.col) for p in peaks] == [(20.0, 20.0), (32.0, 5.0)]


def test_one_peak_per_region_keeps_one_point_on_a_ridge_and_one_per_valley_separated_blob():
    """A long handle: two bumps on one ridge that never falls below min_value are one instance; a
    second object, beyond a valley, is another."""
    rows, cols = np.mgrid[0:30, 0:60]
    ridge = np.exp(-(((rows - 10) / 1.5) ** 2)) * (cols < 40)  # a handle along row 10, cols 0-39
    bumps = 0.3 * np.exp(-((rows - 10) ** 2 + (cols - 8) ** 2) / 4.0) + 0.2 * np.exp(
        -((rows - 10) ** 2 + (cols - 30) ** 2) / 4.0
    )  # two local maxima on it, 22 cells apart
    other = 0.9 * np.exp(-((rows - 24) ** 2 + (cols - 50) ** 2) / 3.0)  # a second object
    values = ridge + bumps + other
    plain = nms_peaks(values, radius=4.0, max_points=5, min_value=0.5)
    assert [(p.row, p.col) for p in plain] == [(10.0, 8.0), (10.0, 30.0), (24.0, 50.0)]
    regions = nms_peaks(values, radius=4.0, max_points=5, min_value=0.5, one_per_region=True)
    assert [(p.row, p.col) for p in regions] == [(10.0, 8.0), (24.0, 50.0)]
    # a valley below min_value between the bumps makes them two regions again
    cut = values.copy()
    cut[:, 18:20] = 0.0
    assert len(nms_peaks(cut, radius=4.0, max_points=5, min_value=0.5, one_per_region=True)) == 3


def test_gaussian_smooth_7x7_sigma1():
    impulse = np.zeros((11, 11), dtype=np.float32)
    impulse[5, 5] = 1.0
    smooth = gaussian_smooth(impulse)
    assert smooth.sum() == pytest.approx(1.0, abs=1e-5)
    assert argmax_peak(smooth) == Peak(5.0, 5.0, pytest.approx(smooth.max()))
    # sigma 1: the neighbour over the peak is exp(-1/2) of it
    assert smooth[5, 6] / smooth[5, 5] == pytest.approx(np.exp(-0.5), rel=1e-3)
    assert smooth[5, 9] == 0.0  # outside the 7x7 support
