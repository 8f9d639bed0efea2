"""Synthetic depth for the geometry and ROS tests: planes seen by a (possibly distorted) camera."""

from __future__ import annotations

import numpy as np

from part_point_ros.geometry.camera import PinholeCamera


def plane_normal(tilt_deg: float, axis: str = "x") -> np.ndarray:
    """Unit normal toward the camera of a plane facing it, tilted ``tilt_deg`` about the optical
    x (or y) axis: tilt 0 gives (0, 0, -1)."""
    t = np.deg2rad(tilt_deg)
    if axis == "x":
        return np.array([0.0, np.sin(t), -np.cos(t)])
    return np.array([np.sin(t), 0.0, -np.cos(t)])


def plane_depth(camera: PinholeCamera, normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Depth image (H, W) float64 metres of the plane through ``point`` with ``normal``: every
    pixel's (undistorted) ray meets the plane at z = (n . p) / (n . ray)."""
    cols, rows = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    uv = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)  # (H*W, 2)
    rays = camera.pixel_rays(uv)  # (H*W, 3), z = 1
    z = float(normal @ point) / (rays @ normal)
    return z.reshape(camera.height, camera.width)  # (H*W,) -> (H, W)


def ray_plane_point(
    camera: PinholeCamera, u: float, v: float, normal: np.ndarray, point: np.ndarray
) -> np.ndarray:
    """Where the ray of pixel (u, v) meets the plane: the exact 3D point a lifter should find."""
    ray = camera.pixel_rays(np.array([[u, v]]))[0]
    return ray * float(normal @ point) / float(normal @ ray)
