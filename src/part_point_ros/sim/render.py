"""CPU renderer: cast one ray per pixel into an open3d RaycastingScene and shade the hits.

Shading is Lambertian with one directional light, an ambient term and hard shadows (one shadow ray
per hit). Each part of each object is its own geometry in the raycasting scene, so the geometry id
of a hit says which part instance the pixel sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from part_point_ros.errors import InputError
from part_point_ros.sim._open3d import o3d
from part_point_ros.sim.camera import CameraIntrinsics
from part_point_ros.sim.catalog import BACKGROUND_RGB, FLOOR_RGB, PALETTE, TABLE_RGB
from part_point_ros.sim.ground_truth import innermost_pixel
from part_point_ros.sim.layout import (
    HFOV_DEG,
    TABLE_CENTRE,
    TABLE_HEIGHT,
    TABLE_SIZE,
    TABLE_THICKNESS,
    SceneLayout,
    sample_layout,
    sample_twin_layout,
)
from part_point_ros.sim.meshes import box, object_part_meshes
from part_point_ros.sim.queries import make_plural_queries, make_queries, min_query_pixels
from part_point_ros.sim.scene import ObjectInstance, PartInstance, Scene

AMBIENT = 0.35
DEFAULT_WIDTH, DEFAULT_HEIGHT = 320, 240


@dataclass(frozen=True)
class WorldMesh:
    """A mesh in base_link: ``part_id`` 0 for the table and the floor."""

    name: str  # "table", "floor" or the object type
    part: str  # the part name, "" for the surroundings
    part_id: int
    object_id: int
    rgb: tuple[int, int, int]
    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (F, 3) int32


def _surroundings() -> list[WorldMesh]:
    (x, y), (sx, sy) = TABLE_CENTRE, TABLE_SIZE
    pieces = [("floor", FLOOR_RGB, box((8.0, 8.0, 0.02), (x, y, -TABLE_HEIGHT - 0.01)))]
    pieces.append(("table", TABLE_RGB, box((sx, sy, TABLE_THICKNESS), (x, y, -TABLE_THICKNESS / 2))))
    leg_h = TABLE_HEIGHT - TABLE_THICKNESS
    for dx in (-1, 1):
        for dy in (-1, 1):
            centre = (x + dx * (sx / 2 - 0.05), y + dy * (sy / 2 - 0.05), -TABLE_THICKNESS - leg_h / 2)
            pieces.append(("table", TABLE_RGB, box((0.05, 0.05, leg_h), centre)))
    return [
        WorldMesh(name, "", 0, 0, rgb, np.asarray(m.vertices), np.asarray(m.triangles, dtype=np.int32))
        for name, rgb, m in pieces
    ]


def world_meshes(layout: SceneLayout) -> list[WorldMesh]:
    """Every mesh of the scene in base_link; object parts get ids 1.. in object then catalog order."""
    meshes = _surroundings()
    part_id = 0
    for obj in layout.objects:
        rotation, translation = obj.pose[:3, :3], obj.pose[:3, 3]
        for part, (vertices, triangles) in object_part_meshes(obj.object_type, obj.scale).items():
            part_id += 1
            rgb = PALETTE[obj.part_colours[part]]
            world = vertices @ rotation.T + translation  # (V, 3) object -> base_link
            meshes.append(WorldMesh(obj.object_type, part, part_id, obj.object_id, rgb, world, triangles))
    return meshes


def raycasting_scene(meshes: list[WorldMesh]) -> tuple[o3d.t.geometry.RaycastingScene, list[int]]:
    """An open3d RaycastingScene of ``meshes`` and the geometry id of each mesh, in order."""
    scene = o3d.t.geometry.RaycastingScene()
    ids = [
        scene.add_triangles(
            o3d.core.Tensor(m.vertices.astype(np.float32)), o3d.core.Tensor(m.triangles.astype(np.uint32))
        )
        for m in meshes
    ]
    return scene, ids


@lru_cache(maxsize=8)
def _normalised_pixels(intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """(u - cx) / fx and (v - cy) / fy of every pixel, row-major, float32 (H*W,) each."""
    rays = intrinsics.pixel_rays().astype(np.float32)  # (H, W, 3)
    x, y = rays[..., 0].reshape(-1), rays[..., 1].reshape(-1)  # (H, W) -> (H*W,)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _cast(scene: o3d.t.geometry.RaycastingScene, origins: np.ndarray, directions: np.ndarray) -> dict:
    rays = np.concatenate([origins, directions], axis=1).astype(np.float32)  # (N, 6)
    return {k: v.numpy() for k, v in scene.cast_rays(o3d.core.Tensor(rays)).items()}


def _part_instances(layout, meshes, part_ids, depth_m, intrinsics, camera_pose):
    parts, objects = [], []
    placed = {o.object_id: o for o in layout.objects}
    for m in meshes:
        if m.part_id == 0:
            continue
        obj, part = placed[m.object_id], m.part
        mask = part_ids == m.part_id
        pixel = innermost_pixel(mask)
        point_cam = point_world = None
        if pixel is not None:
            point_cam = intrinsics.deproject(pixel[0], pixel[1], float(depth_m[pixel[1], pixel[0]]))
            point_world = camera_pose[:3, :3] @ point_cam + camera_pose[:3, 3]
        parts.append(
            PartInstance(
                part_id=m.part_id,
                object_id=m.object_id,
                object_type=obj.object_type,
                part=part,
                colour=obj.part_colours[part],
                pixel_count=int(mask.sum()),
                point_2d=pixel,
                point_3d_camera=point_cam,
                point_3d=point_world,
            )
        )
    for obj in layout.objects:
        ids = tuple(p.part_id for p in parts if p.object_id == obj.object_id)
        objects.append(ObjectInstance(obj.object_id, obj.object_type, obj.colour, obj.pose.copy(), ids))
    return objects, parts


def render_layout(layout: SceneLayout, intrinsics: CameraIntrinsics, *, shadows: bool = True) -> Scene:
    """Render ``layout`` through a pinhole camera with ``intrinsics``; see ``render_scene``."""
    h, w = intrinsics.height, intrinsics.width
    meshes = world_meshes(layout)
    scene, geometry_ids = raycasting_scene(meshes)
    rotation, eye = (
        layout.camera_pose[:3, :3].astype(np.float32),
        layout.camera_pose[:3, 3].astype(np.float32),
    )
    x, y = _normalised_pixels(intrinsics)  # (H*W,) each, optical-frame ray = (x, y, 1)
    # (H*W, 3) world directions: the optical ray rotated into base_link (plain broadcasting, no BLAS)
    directions = x[:, None] * rotation[:, 0] + y[:, None] * rotation[:, 1] + rotation[:, 2]
    hits = _cast(scene, np.broadcast_to(eye, directions.shape), directions)
    hit = np.isfinite(hits["t_hit"])  # (H*W,)
    # t_hit is in units of the ray direction, whose optical z is 1: it IS the z-depth.
    depth = np.where(hit, hits["t_hit"], np.nan).astype(np.float32)

    n_geom = max(geometry_ids) + 2
    lut_rgb = np.tile(np.asarray(BACKGROUND_RGB, dtype=np.float32), (n_geom, 1))  # (G+1, 3)
    lut_part = np.zeros(n_geom, dtype=np.uint16)
    for gid, m in zip(geometry_ids, meshes, strict=True):
        lut_rgb[gid], lut_part[gid] = m.rgb, m.part_id
    gids = np.where(hit, hits["geometry_ids"], n_geom - 1).astype(np.int64)  # misses -> background slot

    normals, rays = hits["primitive_normals"][hit], directions[hit]  # (M, 3) each, hits only
    normals[np.einsum("ij,ij->i", normals, rays) > 0] *= -1  # two-sided: the normal faces the camera
    light = layout.light_dir.astype(np.float32)
    lambert = np.clip(np.einsum("ij,j->i", normals, light), 0.0, 1.0)
    if shadows:
        points = eye + rays * hits["t_hit"][hit][:, None] + normals * 1e-3
        blocked = np.isfinite(_cast(scene, points, np.broadcast_to(light, points.shape))["t_hit"])
        lambert[blocked] = 0.0
    shade = np.ones(hit.shape, dtype=np.float32)
    shade[hit] = AMBIENT + (1.0 - AMBIENT) * lambert
    rgb = np.clip(lut_rgb[gids] * shade[:, None], 0, 255).round().astype(np.uint8).reshape(h, w, 3)

    depth_m = depth.reshape(h, w)
    depth_mm = np.where(hit, np.clip(np.round(depth * 1000.0), 1, 65535), 0).astype(np.uint16).reshape(h, w)
    part_ids = lut_part[gids].reshape(h, w)
    objects, parts = _part_instances(layout, meshes, part_ids, depth_m, intrinsics, layout.camera_pose)
    return Scene(
        seed=layout.seed,
        rgb=rgb,
        depth_m=depth_m,
        depth_mm=depth_mm,
        part_ids=part_ids,
        intrinsics=intrinsics,
        camera_pose=layout.camera_pose.copy(),
        objects=objects,
        parts=parts,
        queries=make_queries(layout.seed, objects, parts, min_pixels=min_query_pixels(w, h)),
        light_dir=layout.light_dir.copy(),
    )


def render_scene(
    seed: int,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    hfov_deg: float = HFOV_DEG,
    shadows: bool = True,
) -> Scene:
    """Render the tabletop scene of ``seed`` (same seed -> identical arrays) at ``width`` x ``height``.

    The layout (objects, colours, camera pose, light) depends on the seed only; the intrinsics are a
    centred pinhole with square pixels and a horizontal field of view of ``hfov_deg`` degrees.
    """
    intrinsics = _checked_intrinsics(seed, width, height, hfov_deg)
    return render_layout(sample_layout(int(seed), hfov_deg=hfov_deg), intrinsics, shadows=shadows)


def _checked_intrinsics(seed: int, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"scene seed must be a non-negative integer, got {seed!r}")
    if width < 8 or height < 8:
        raise InputError(f"image size must be at least 8x8 pixels, got {width}x{height}")
    if not 10.0 <= hfov_deg <= 150.0:
        raise InputError(f"hfov_deg must lie in [10, 150] degrees, got {hfov_deg}")
    return CameraIntrinsics.from_hfov(width=width, height=height, hfov_deg=hfov_deg)


def render_twin_scene(
    seed: int,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    hfov_deg: float = HFOV_DEG,
    shadows: bool = True,
) -> Scene:
    """Render the twin scene of ``seed`` (``layout.TWIN_SEEDS``: 1,000,000 to 1,999,999): two or
    three instances of one type and 0-2 other objects (``layout.sample_twin_layout``).

    Its queries are those of any scene (the ambiguous "the handle of the mug", which refers to every
    instance, and the colour-qualified ones), then the "plural" ones ("the handles of the mugs",
    ``queries.make_plural_queries``). The ground truth of every instance is
    ``scene.instance_part_masks(query)``.
    """
    intrinsics = _checked_intrinsics(seed, width, height, hfov_deg)
    scene = render_layout(sample_twin_layout(int(seed), hfov_deg=hfov_deg), intrinsics, shadows=shadows)
    min_pixels = min_query_pixels(width, height)
    plural = make_plural_queries(scene.seed, scene.objects, scene.parts, min_pixels=min_pixels)
    scene.queries = [*scene.queries, *plural]
    return scene
