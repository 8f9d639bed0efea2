"""Pinhole camera of the synthetic world: intrinsics, REP-103 optical pose, rays.

Pixel convention (OpenCV / ROS CameraInfo): pixel (col u, row v) has its centre at integer
coordinates (u, v); a point (X, Y, Z) in the optical frame (z forward, x right, y down) projects to
u = fx X / Z + cx, v = fy Y / Z + cy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels, no distortion."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_hfov(cls, *, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view in degrees."""
        fx = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
        return cls(fx=fx, fy=fx, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=width, height=height)

    @property
    def matrix(self) -> np.ndarray:
        """K (3, 3) float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def pixel_rays(self) -> np.ndarray:
        """Ray direction of every pixel in the optical frame, z = 1: (H, W, 3) float64."""
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))  # (H, W) each
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones(u.shape)], axis=-1)

    def deproject(self, u: float, v: float, depth_m: float) -> np.ndarray:
        """The optical-frame point (3,) seen at pixel (u, v) with z-depth ``depth_m``."""
        return np.array([(u - self.cx) / self.fx * depth_m, (v - self.cy) / self.fy * depth_m, depth_m])

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """Optical-frame points (N, 3) -> pixel coordinates (N, 2) as (u, v)."""
        p = np.asarray(points_camera, dtype=np.float64).reshape(-1, 3)
        return np.stack(
            [self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=1
        )


def look_at(eye: np.ndarray, target: np.ndarray, *, roll_rad: float = 0.0) -> np.ndarray:
    """Pose (4, 4) of a REP-103 optical frame at ``eye`` looking at ``target`` (world z is up).

    Columns of the rotation are the optical axes in world coordinates: x right, y down, z forward.
    """
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-9:  # looking straight down: pick world -y as "right"
        x = np.array([0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    x, y = c * x + s * y, -s * x + c * y  # roll about the optical axis
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose
