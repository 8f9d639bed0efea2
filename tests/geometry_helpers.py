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


def cylinder_depth(camera: PinholeCamera, center: np.ndarray, radius: float) -> np.ndarray:
    """Depth image (H, W) metres of an upright cylinder (axis along the optical y, through ``center``)
    of ``radius``: each ray (x, y, 1) meets (X - cx)^2 + (Z - cz)^2 = r^2 at its nearer root; NaN where
    it misses. A curved surface, as a mug's or a bottle's body."""
    cols, rows = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    uv = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)  # (H*W, 2)
    return ray_cylinder_depth(camera.pixel_rays(uv), center, radius).reshape(camera.height, camera.width)


def ray_cylinder_depth(rays: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Depth t (N,) at which rays (N, 3) with z = 1 first meet the upright cylinder; NaN on a miss."""
    x = rays[:, 0]
    a = x**2 + 1.0  # |(x t - cx, t - cz)|^2 = r^2  ->  a t^2 - 2 b t + c = 0
    b = x * center[0] + center[2]
    c = center[0] ** 2 + center[2] ** 2 - radius**2
    disc = b**2 - a * c
    with np.errstate(invalid="ignore"):
        return np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.nan)
