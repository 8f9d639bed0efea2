"""Lift a 2D part point to a 3D grasp pose with an aligned depth image.

Grasp frame convention (used by every node and the service):
  - z: the APPROACH direction, against the surface normal (the gripper moves along +z into the part);
  - x: in the surface plane, the camera's x axis (image right) projected onto the plane, or the
    camera's y axis (image down) when x is nearly parallel to the normal; deterministic;
  - y = z cross x (right-handed); the origin is the surface point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from part_point_ros.geometry.camera import PinholeCamera
from part_point_ros.geometry.depth import robust_depth
from part_point_ros.geometry.normals import estimate_normal, local_points
from part_point_ros.geometry.transforms import RigidTransform


def grasp_rotation(normal: np.ndarray, *, reference: np.ndarray | None = None) -> np.ndarray:
    """Rotation (3, 3) whose columns are the grasp x, y, z axes; z = -normal.

    ``reference`` (default the frame's x axis) fixes the in-plane rotation: x is its projection
    onto the plane orthogonal to z; the frame's y axis is used when the projection is too short.
    """
    z = -np.asarray(normal, dtype=np.float64)
    z = z / np.linalg.norm(z)
    candidates = [np.array([1.0, 0.0, 0.0]) if reference is None else np.asarray(reference, dtype=np.float64)]
    candidates.append(np.array([0.0, 1.0, 0.0]))
    for ref in candidates:
        x = ref - (ref @ z) * z
        if np.linalg.norm(x) > 0.3 * np.linalg.norm(ref):
            break
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


@dataclass(frozen=True)
class GraspResult:
    """A grasp in the camera's optical frame: ``point`` (3,) m, outward ``normal`` (3,),
    ``pose`` (camera <- grasp), the robust ``depth`` at the pixel, and how flat the patch was."""

    point: np.ndarray
    normal: np.ndarray
    pose: RigidTransform
    depth: float
    n_points: int
    residual: float

    ok = True

    @property
    def approach(self) -> np.ndarray:
        """Unit approach direction (the grasp z axis), = -normal."""
        return self.pose.rotation[:, 2]


@dataclass(frozen=True)
class LiftFailure:
    """Why a pixel could not be lifted, in one line."""

    reason: str

    ok = False


@dataclass(frozen=True)
class GraspLifter:
    """Pixel + aligned depth (metres) + camera -> GraspResult in the optical frame, or LiftFailure.

    Args:
        depth_window: side of the box (pixels) whose median valid depth is the depth at the pixel.
        normal_radius: half side (pixels) of the patch the normal is estimated from.
        min_depth, max_depth: valid depth range, metres.
        depth_band: patch points farther than this (metres) from the median depth are dropped
            (background behind a thin part); None = 5 % of the depth, at least 1 cm.
        min_points: fewest patch points for a normal.
    """

    depth_window: int = 5
    normal_radius: int = 7
    min_depth: float = 0.1
    max_depth: float = 10.0
    depth_band: float | None = None
    min_points: int = 10

    def lift(
        self, u: float, v: float, depth_m: np.ndarray, camera: PinholeCamera
    ) -> GraspResult | LiftFailure:
        h, w = depth_m.shape[:2]
        if (w, h) != (camera.width, camera.height):
            return LiftFailure(
                f"depth image is {w}x{h} but camera_info says {camera.width}x{camera.height}: "
                "use depth aligned to the colour image"
            )
        if not camera.contains(u, v):
            return LiftFailure(f"pixel ({u:.1f}, {v:.1f}) is outside the {w}x{h} image")
        reading = robust_depth(
            depth_m, u, v, window=self.depth_window, min_depth=self.min_depth, max_depth=self.max_depth
        )
        if not reading.ok:
            return LiftFailure(reading.reason)
        z0 = reading.value
        band = self.depth_band if self.depth_band is not None else max(0.01, 0.05 * z0)
        pts = local_points(
            depth_m, camera, u, v, radius_px=self.normal_radius, depth_center=z0, depth_band=band
        )
        pts = pts[np.all(np.isfinite(pts), axis=1)]  # (N, 3): a failed undistortion gives NaN rows
        if pts.shape[0] < self.min_points:
            return LiftFailure(
                f"too few depth points around ({u:.1f}, {v:.1f}) for a surface normal: "
                f"{pts.shape[0]} < {self.min_points}"
            )
        center = camera.deproject(np.array([[u, v]]), z0)[0]
        surface = estimate_normal(pts, center=center)
        # the point: the pixel's ray meets the local plane (exact on flat parts, sub-pixel);
        # fall back to the median depth when the ray grazes the plane or lands off the patch
        ray = camera.pixel_rays(np.array([[u, v]]))[0]
        denom = float(surface.normal @ ray)
        point = center
        if abs(denom) > 1e-3 * np.linalg.norm(ray):
            t = float(surface.normal @ surface.centroid) / denom
            if t > 0 and abs(t - z0) <= band:
                point = ray * t
        rotation = grasp_rotation(surface.normal)
        if not all(np.all(np.isfinite(a)) for a in (point, surface.normal, rotation)):
            return LiftFailure(
                f"the 3D point at ({u:.1f}, {v:.1f}) is not finite: check the camera_info (K, D) "
                "and the depth image"
            )
        pose = RigidTransform.from_rotation_translation(rotation, point, parent_frame=camera.frame_id)
        return GraspResult(
            point=point,
            normal=surface.normal,
            pose=pose,
            depth=float(point[2]),
            n_points=surface.n_points,
            residual=surface.residual,
        )
