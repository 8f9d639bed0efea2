"""The rendered scene as the rest of the project sees it (the sim camera node, the disk writer).

Frames: ``camera_pose`` maps the camera optical frame (REP-103: z forward, x right, y down) to
``base_link`` (x forward, y left, z up; the table top is z = 0). Depth is z-depth along the optical
axis: ``depth_m`` float32 metres with NaN where a ray hits nothing, ``depth_mm`` uint16 millimetres
with 0 there. ``part_ids`` holds a part instance id per pixel (0 = table, floor or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from part_point_ros.sim.camera import CameraIntrinsics


@dataclass(frozen=True)
class ObjectInstance:
    """One object on the table. ``colour`` is its main part's colour, the word that singles it out."""

    object_id: int
    object_type: str
    colour: str
    pose: np.ndarray  # (4, 4) object frame -> base_link
    part_ids: tuple[int, ...]


@dataclass(frozen=True)
class PartInstance:
    """One part of one object, with its ground-truth point.

    ``point_2d`` is the innermost pixel (u, v) of the visible mask (argmax of its L2 distance
    transform); ``point_3d_camera`` / ``point_3d`` lift it with the depth into the optical frame /
    base_link. All three are None when the part is fully hidden (``pixel_count == 0``).
    """

    part_id: int
    object_id: int
    object_type: str
    part: str
    colour: str
    pixel_count: int
    point_2d: tuple[int, int] | None
    point_3d_camera: np.ndarray | None
    point_3d: np.ndarray | None


# Query kinds beyond "direct" and "reasoning", never in ``Scene.queries`` of ``render_scene`` (so the
# shipped scenes, their files and every number measured on them stay as they were):
# - asked about what is not there, made on request (``queries.make_absent_queries``): an object type
#   absent from the scene ("the spout of the teapot", no teapot on the table) or a part that a type on
#   the table does not have ("the spout of the mug"). No part instance: the right answer is "not found".
# - "plural": "the handles of the mugs", in the twin scenes of ``render_twin_scene`` only.
ABSENT_KINDS: tuple[str, ...] = ("absent_object", "absent_part")
PLURAL_KIND = "plural"


@dataclass(frozen=True)
class Query:
    """A language query and the part instances it refers to (the mask is their union).

    ``kind`` is "direct" ("the handle of the mug"), "reasoning" ("where would you grab the mug?"),
    "plural" ("the handles of the mugs": every instance) or one of ``ABSENT_KINDS`` (nothing to point
    at: ``part_ids`` is empty). ``ambiguous`` is True when the query names a type present more than
    once without a colour: it then refers to the part of every such instance, and a pointer that
    returns several points should put one on each (``Scene.instance_part_masks``).
    """

    text: str
    kind: str
    object_type: str
    part: str
    part_ids: tuple[int, ...]
    object_ids: tuple[int, ...]
    colour: str | None = None
    ambiguous: bool = False

    @property
    def absent(self) -> bool:
        """True for a question about something that is not in the scene (expected: found is False)."""
        return self.kind in ABSENT_KINDS


@dataclass(eq=False)
class Scene:
    """One rendered RGB-D frame of the tabletop world with its ground truth."""

    seed: int
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, NaN = no hit
    depth_mm: np.ndarray  # (H, W) uint16 millimetres, 0 = no hit
    part_ids: np.ndarray  # (H, W) uint16 part instance id, 0 = not an object part
    intrinsics: CameraIntrinsics
    camera_pose: np.ndarray  # (4, 4) optical frame -> base_link
    objects: list[ObjectInstance]
    parts: list[PartInstance]
    queries: list[Query]
    light_dir: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))

    @cached_property
    def object_ids(self) -> np.ndarray:
        """(H, W) uint16 object instance id per pixel, 0 = not an object."""
        lut = np.zeros(max([p.part_id for p in self.parts], default=0) + 1, dtype=np.uint16)
        for p in self.parts:
            lut[p.part_id] = p.object_id
        return lut[self.part_ids]

    @cached_property
    def part_masks(self) -> dict[int, np.ndarray]:
        """Part instance id -> visible mask (H, W) bool."""
        return {p.part_id: self.part_ids == p.part_id for p in self.parts}

    @cached_property
    def instance_masks(self) -> dict[int, np.ndarray]:
        """Object instance id -> visible mask (H, W) bool."""
        return {o.object_id: self.object_ids == o.object_id for o in self.objects}

    @property
    def gt_points_3d(self) -> dict[int, np.ndarray]:
        """Part instance id -> ground-truth point (3,) in base_link, for every visible part."""
        return {p.part_id: p.point_3d for p in self.parts if p.point_3d is not None}

    def query_mask(self, query: Query) -> np.ndarray:
        """The mask a query refers to: union of its part instances, (H, W) bool."""
        return np.isin(self.part_ids, np.asarray(query.part_ids, dtype=self.part_ids.dtype))

    def instance_part_masks(self, query: Query) -> list[np.ndarray]:
        """One visible mask (H, W) bool per part instance of ``query``, in ``part_ids`` order: the
        ground truth of "every instance" (two mugs: two handle masks); empty for an absent query."""
        return [self.part_ids == part_id for part_id in query.part_ids]

    def part(self, part_id: int) -> PartInstance:
        for p in self.parts:
            if p.part_id == part_id:
                return p
        raise KeyError(f"scene {self.seed} has no part instance {part_id}")
