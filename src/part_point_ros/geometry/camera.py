"""Pinhole camera with lens distortion, in the conventions of sensor_msgs/CameraInfo.

Pixel coordinates (u, v): u to the right, v down, the CENTRE of the top-left pixel is (0, 0)
(OpenCV and CameraInfo). 3D points are in the camera's optical frame (REP-103: z forward, x right,
y down), metres. Depth means the z coordinate (what aligned depth images store), not ray length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from part_point_ros.errors import InputError

# CameraInfo distortion models this camera handles, with their number of coefficients
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "none": 0, "": 0}
# Plausible focal lengths, pixels. Outside, no real camera: fx < 1e-3 px is a field of view above
# 179.8 degrees even for a 2 px wide image, fx > 1e6 px one below 0.24 degrees for a 4096 px wide one.
FOCAL_RANGE_PX = (1e-3, 1e6)
K_FORM = "K = [fx s cx; 0 fy cy; 0 0 1], pixels"


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics ``k`` (3, 3), distortion ``d`` (plumb_bob k1 k2 t1 t2 k3, or rational_polynomial
    k1 k2 t1 t2 k3 k4 k5 k6), image ``width`` x ``height`` in pixels, optical ``frame_id``."""

    k: np.ndarray
    d: np.ndarray
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    frame_id: str = ""
    _k_inv: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = np.asarray(self.k, dtype=np.float64)
        if k.size != 9:
            raise InputError(f"camera matrix K must have 9 numbers (3x3), got {k.size}")
        k = k.reshape(3, 3)
        d = np.asarray(self.d, dtype=np.float64).reshape(-1)
        check_intrinsics(k, d, self.width, self.height)
        model = self.distortion_model
        if model not in DISTORTION_MODELS:
            raise InputError(
                f"distortion model {model!r} is not supported: use one of "
                f"{', '.join(m for m in DISTORTION_MODELS if m)} (or rectified images)"
            )
        expected = DISTORTION_MODELS[model]
        if d.size > expected and np.any(d[expected:] != 0):
            raise InputError(f"{model} takes {expected} distortion coefficients, got {d.size}")
        d = np.pad(d[:expected], (0, expected - min(d.size, expected)))
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "_k_inv", np.linalg.inv(k))

    @classmethod
    def from_intrinsics(
        cls,
        *,
        fx: float,
        fy: float,
        cx: float,
        cy: float,
        width: int,
        height: int,
        d: Sequence[float] = (),
        distortion_model: str = "plumb_bob",
        frame_id: str = "",
    ) -> PinholeCamera:
        """A camera from focal lengths and principal point (pixels)."""
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return cls(
            k=k,
            d=np.asarray(d, dtype=np.float64),
            width=width,
            height=height,
            distortion_model=distortion_model,
            frame_id=frame_id,
        )

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.d != 0))

    def project(self, points: np.ndarray) -> np.ndarray:
        """3D points (N, 3) in the optical frame -> pixels (N, 2), with distortion.

        Points at or behind the camera (z <= 0) give NaN.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.full((pts.shape[0], 2), np.nan)
        front = pts[:, 2] > 0
        if np.any(front):
            uv, _ = cv2.projectPoints(pts[front], np.zeros(3), np.zeros(3), self.k, self.d)
            out[front] = uv.reshape(-1, 2)  # (M, 1, 2) -> (M, 2)
        return out

    def pixel_rays(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) -> undistorted rays (N, 3) with z = 1 (normalised image coordinates)."""
        pix = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.has_distortion:
            # (N, 2) -> (N, 1, 2) for OpenCV; iterative undistortion with tight criteria
            xy = cv2.undistortPoints(
                pix.reshape(-1, 1, 2),
                self.k,
                self.d,
                criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12),
            ).reshape(-1, 2)  # (N, 1, 2) -> (N, 2)
        else:
            homog = np.column_stack([pix, np.ones(len(pix))])  # (N, 3)
            xy = (homog @ self._k_inv.T)[:, :2]
        return np.column_stack([xy, np.ones(len(xy))])

    def deproject(self, uv: np.ndarray, depth: np.ndarray | float) -> np.ndarray:
        """Pixels (N, 2) and depth (N,) or scalar, metres along z -> 3D points (N, 3)."""
        rays = self.pixel_rays(uv)
        z = np.broadcast_to(np.asarray(depth, dtype=np.float64).reshape(-1), (rays.shape[0],))
        return rays * z[:, None]

    def contains(self, u: float, v: float) -> bool:
        """Whether pixel (u, v) lies on the image (pixel centres 0 .. width-1, half a pixel margin)."""
        return -0.5 <= u < self.width - 0.5 and -0.5 <= v < self.height - 0.5


def check_intrinsics(k: np.ndarray, d: np.ndarray, width: int, height: int) -> None:
    """Raise a one-line InputError unless ``k`` (3, 3), ``d`` and the image size make a usable camera.

    Usable: every number finite; the last row of K is [0, 0, 1] and K[1][0] = 0 (an invertible
    upper-triangular camera matrix); fx, fy within FOCAL_RANGE_PX; the principal point no farther
    than one image size off the image; width, height > 0. A singular or non-finite K would give
    NaN or absurd 3D points (e.g. K[2][2] = 0 cannot be inverted; fx = 1e-300 puts a point 1e301 m away).
    """
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    if not np.all(np.isfinite(k)):
        raise InputError(f"camera matrix K has non-finite entries {k.ravel().tolist()}: {K_FORM}")
    if not np.all(np.isfinite(d)):
        raise InputError(f"distortion coefficients D have non-finite entries {d.tolist()}")
    if abs(k[2, 2] - 1.0) > 1e-6:
        raise InputError(f"camera matrix K[2][2] is {k[2, 2]:g} but must be 1 ({K_FORM})")
    if max(abs(k[1, 0]), abs(k[2, 0]), abs(k[2, 1])) > 1e-6 * max(abs(k[0, 0]), abs(k[1, 1]), 1.0):
        lower = [float(k[1, 0]), float(k[2, 0]), float(k[2, 1])]
        raise InputError(f"camera matrix K[1][0], K[2][0], K[2][1] must be 0, got {lower} ({K_FORM})")
    fx, fy = float(k[0, 0]), float(k[1, 1])
    lo, hi = FOCAL_RANGE_PX
    if not (lo <= fx <= hi and lo <= fy <= hi):
        raise InputError(f"camera matrix needs fx, fy > 0 in {lo:g} .. {hi:g} px, got fx={fx:g}, fy={fy:g}")
    cx, cy = float(k[0, 2]), float(k[1, 2])
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise InputError(
            f"principal point (cx, cy) = ({cx:g}, {cy:g}) px is more than an image size off the "
            f"{width}x{height} image ({K_FORM})"
        )
