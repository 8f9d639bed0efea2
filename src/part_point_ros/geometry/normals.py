"""Surface normal at a pixel from the local point cloud of an aligned depth image (open3d)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from part_point_ros.geometry.camera import PinholeCamera


def local_points(
    depth_m: np.ndarray,
    camera: PinholeCamera,
    u: float,
    v: float,
    *,
    radius_px: int,
    depth_center: float,
    depth_band: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """3D points (N, 3), optical frame, of the pixels within ``radius_px`` of (u, v) whose depth is
    within ``depth_band`` metres of ``depth_center`` (keeps the part, drops the background) and,
    given a bool part ``mask`` (H, W), that lie in it (drops a neighbouring part at the same depth)."""
    h, w = depth_m.shape[:2]
    col, row = int(round(u)), int(round(v))
    r0, r1 = max(row - radius_px, 0), min(row + radius_px + 1, h)
    c0, c1 = max(col - radius_px, 0), min(col + radius_px + 1, w)
    patch = depth_m[r0:r1, c0:c1]
    keep = np.isfinite(patch) & (np.abs(patch - depth_center) <= depth_band)
    if mask is not None:
        keep &= mask[r0:r1, c0:c1]
    rows, cols = np.nonzero(keep)
    uv = np.column_stack([cols + c0, rows + r0]).astype(np.float64)  # (N, 2) pixel centres
    return camera.deproject(uv, patch[rows, cols])


@dataclass(frozen=True)
class SurfaceNormal:
    """Unit ``normal`` (3,) pointing toward the camera, the patch ``centroid`` (3,), and the RMS
    distance of the patch from its plane (``residual``, metres; small on flat surfaces)."""

    normal: np.ndarray
    centroid: np.ndarray
    residual: float
    n_points: int


def estimate_normal(
    points: np.ndarray, *, center: np.ndarray, camera_location: np.ndarray | None = None
) -> SurfaceNormal:
    """Normal of the surface at ``center`` from its neighbourhood ``points`` (N, 3), N >= 3.

    open3d estimates a normal per point from its nearest neighbours (PCA); the one of the point
    nearest ``center`` is returned, oriented toward ``camera_location`` (default: the origin).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] < 3:
        raise ValueError(f"a normal needs at least 3 points, got {pts.shape[0]}")
    cam = np.zeros(3) if camera_location is None else np.asarray(camera_location, dtype=np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    cloud.estimate_normals(search_param=o3d.geometry.KDTreeSearchParamKNN(knn=min(pts.shape[0], 64)))
    cloud.orient_normals_towards_camera_location(camera_location=cam)
    nearest = int(np.argmin(np.linalg.norm(pts - np.asarray(center), axis=1)))
    normal = np.asarray(cloud.normals)[nearest]
    normal = normal / np.linalg.norm(normal)
    centroid = pts.mean(axis=0)
    residual = float(np.sqrt(np.mean(((pts - centroid) @ normal) ** 2)))
    return SurfaceNormal(normal=normal, centroid=centroid, residual=residual, n_points=int(pts.shape[0]))
