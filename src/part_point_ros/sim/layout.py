"""Random tabletop layout from a seed: which objects, where, in which colours, seen from where.

Everything random about a scene is drawn here from ``numpy.random.default_rng(seed)`` in a fixed
order, and nothing here depends on the image size, so one seed is one scene at any resolution.
World frame = ``base_link`` (REP-103: x forward, y left, z up); the table top is the plane z = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from part_point_ros.errors import InputError
from part_point_ros.sim.camera import look_at
from part_point_ros.sim.catalog import OBJECT_TYPES, PALETTE
from part_point_ros.sim.meshes import footprint, object_part_meshes

# Table in front of the robot: top centre, size (x, y) and thickness, in metres (base_link).
TABLE_CENTRE = np.array([0.55, 0.0])
TABLE_SIZE = np.array([0.9, 1.2])
TABLE_THICKNESS = 0.03
TABLE_HEIGHT = 0.72  # floor at z = -TABLE_HEIGHT
# Where object footprints may lie (a margin inside the table top).
PLACE_MIN = np.array([0.28, -0.34])
PLACE_MAX = np.array([0.84, 0.34])

MIN_OBJECTS, MAX_OBJECTS = 2, 5
DUPLICATE_PROBABILITY = 0.35  # chance that one object type appears twice in a scene
HFOV_DEG = 60.0  # default horizontal field of view (square pixels)
_FIT_ASPECT = 4.0 / 3.0  # the framing check assumes 4:3 so the layout never depends on image size
CAMERA_DISTANCE_M = (0.4, 0.6)  # first try; backed off in 5 % steps until every part centre is in view


@dataclass(frozen=True)
class PlacedObject:
    """One object instance: type, uniform scale, pose (4, 4) object -> base_link, colour per part."""

    object_id: int
    object_type: str
    scale: float
    pose: np.ndarray
    part_colours: dict[str, str]

    @property
    def colour(self) -> str:
        """The colour that names the object: that of its type's main part ("the red mug")."""
        return self.part_colours[OBJECT_TYPES[self.object_type].main_part]


@dataclass(frozen=True)
class SceneLayout:
    seed: int
    objects: tuple[PlacedObject, ...]
    camera_pose: np.ndarray  # (4, 4) camera optical frame -> base_link
    light_dir: np.ndarray  # (3,) unit vector towards the light, base_link
    hfov_deg: float


def _yaw_pose(x: float, y: float, yaw: float) -> np.ndarray:
    pose = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:2, 3] = (x, y)
    return pose


def _pick_types(rng: np.random.Generator) -> list[str]:
    names = sorted(OBJECT_TYPES)
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    types = [str(t) for t in rng.choice(names, size=n, replace=False)]
    if rng.random() < DUPLICATE_PROBABILITY:
        types[-1] = types[0]
    return types


def _pick_colours(rng: np.random.Generator, object_type: str, taken_main: set[str]) -> dict[str, str]:
    """Distinct colours for the parts of one object; the main colour differs from its twins'."""
    spec = OBJECT_TYPES[object_type]
    names = list(PALETTE)
    main = str(rng.choice([c for c in names if c not in taken_main]))
    others = [
        str(c) for c in rng.choice([c for c in names if c != main], size=len(spec.parts) - 1, replace=False)
    ]
    colours = dict(zip([p for p in spec.parts if p != spec.main_part], others, strict=True))
    colours[spec.main_part] = main
    return {p: colours[p] for p in spec.parts}


def _place_objects(rng: np.random.Generator, types: list[str]) -> tuple[list[PlacedObject], np.ndarray]:
    """Objects at random free spots with random yaw; also every part's footprint centre (N, 2).

    Each part's footprint is a circle; circles of different objects keep 1 cm apart and all stay
    inside the placement area. An object without room is left out; when fewer than MIN_OBJECTS
    fit, the whole placement is drawn again (the stream of draws stays deterministic).
    """
    candidates = []
    for object_type in types:
        scale = float(rng.uniform(0.9, 1.1))
        candidates.append((object_type, scale, footprint(object_part_meshes(object_type, scale))))
    candidates.sort(key=lambda c: -sum(r * r for _, r in c[2]))  # biggest first
    for _ in range(20):
        placed: list[tuple[np.ndarray, float]] = []
        objects: list[PlacedObject] = []
        taken_main: dict[str, set[str]] = {}
        for object_type, scale, circles in candidates:
            pose = _yaw_pose(0.0, 0.0, float(rng.uniform(-math.pi, math.pi)))
            local = [(pose[:2, :2] @ c, r) for c, r in circles]
            for _ in range(100):
                origin = rng.uniform(PLACE_MIN, PLACE_MAX)
                world = [(c + origin, r) for c, r in local]
                inside = all(np.all(c - r >= PLACE_MIN) and np.all(c + r <= PLACE_MAX) for c, r in world)
                if inside and all(np.linalg.norm(c - q) > r + s + 0.01 for c, r in world for q, s in placed):
                    break
            else:
                continue  # no room left: leave this object out
            pose[:2, 3] = origin
            placed += world
            colours = _pick_colours(rng, object_type, taken_main.setdefault(object_type, set()))
            taken_main[object_type].add(colours[OBJECT_TYPES[object_type].main_part])
            objects.append(PlacedObject(len(objects) + 1, object_type, scale, pose, colours))
        if len(objects) >= MIN_OBJECTS:
            break
    return objects, np.array([c for c, _ in placed])


def _frames_all(pose: np.ndarray, points: np.ndarray, hfov_deg: float) -> bool:
    """True when every world point (N, 3) is in front of the camera and well inside the image."""
    cam = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> optical frame, (N, 3)
    if np.any(cam[:, 2] < 0.1):
        return False
    tan_x = math.tan(math.radians(hfov_deg) / 2) * 0.8
    tan_y = tan_x / _FIT_ASPECT
    return bool(
        np.all(np.abs(cam[:, 0] / cam[:, 2]) < tan_x) and np.all(np.abs(cam[:, 1] / cam[:, 2]) < tan_y)
    )


def _camera(rng: np.random.Generator, centres: np.ndarray, hfov_deg: float) -> np.ndarray:
    """A robot-head camera behind the table edge, looking down at the part footprints ``centres``."""
    spots = np.concatenate([centres, np.full((len(centres), 1), 0.03)], axis=1)  # (N, 2) -> (N, 3)
    target = np.append(spots[:, :2].mean(axis=0) + rng.normal(0.0, 0.02, size=2), 0.03)
    distance = float(rng.uniform(CAMERA_DISTANCE_M[0], CAMERA_DISTANCE_M[1]))
    elevation = math.radians(rng.uniform(40.0, 75.0))
    azimuth = math.radians(rng.uniform(-35.0, 35.0))  # 0 = from behind the robot, looking along +x
    roll = math.radians(rng.uniform(-5.0, 5.0))
    direction = np.array(
        [
            -math.cos(elevation) * math.cos(azimuth),
            -math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )
    for _ in range(40):  # back off until every object is in view
        pose = look_at(target + distance * direction, target, roll_rad=roll)
        if _frames_all(pose, spots, hfov_deg):
            break
        distance *= 1.05
    return pose


def _framed(
    rng: np.random.Generator, seed: int, objects: list[PlacedObject], centres: np.ndarray, hfov_deg: float
) -> SceneLayout:
    """The placed objects with the camera and the light, drawn from ``rng`` in this order."""
    camera_pose = _camera(rng, centres, hfov_deg)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), 1.0])
    return SceneLayout(seed, tuple(objects), camera_pose, light / np.linalg.norm(light), hfov_deg)


def sample_layout(seed: int, *, hfov_deg: float = HFOV_DEG) -> SceneLayout:
    """The scene of ``seed``: 2-5 objects on the table, their colours, the camera and the light."""
    rng = np.random.default_rng(seed)
    types = _pick_types(rng)
    objects, centres = _place_objects(rng, types)
    return _framed(rng, seed, objects, centres, hfov_deg)


# Twin scenes ("the handle of the mug" with two mugs on the table): their own seed range, so that a
# scene number names one scene and the ordinary seeds keep their scenes. Splits as for the ordinary
# world (docs/evaluation.md, "Not here, and every instance"): train, val, test, disjoint.
TWIN_SEEDS: tuple[int, int] = (1_000_000, 2_000_000)
TWIN_SPLIT_SEEDS: dict[str, tuple[int, int]] = {
    "train": (1_000_000, 1_100_000),
    "val": (1_100_000, 1_200_000),
    "test": (1_200_000, 1_300_000),
}
TWIN_MAX_OTHERS = 2  # besides the twins, 0-2 objects of other types
THREE_COPIES_PROBABILITY = 0.3  # the twin type appears three times instead of twice
TWIN_PLACEMENT_TRIES = 100  # two drawers (the largest type) fit in 2 of 5 placements


def is_twin_seed(seed: int) -> bool:
    return TWIN_SEEDS[0] <= seed < TWIN_SEEDS[1]


def _pick_twin_types(rng: np.random.Generator) -> list[str]:
    names = sorted(OBJECT_TYPES)
    twin = str(rng.choice(names))
    copies = 3 if rng.random() < THREE_COPIES_PROBABILITY else 2
    others = int(rng.integers(0, TWIN_MAX_OTHERS + 1))
    rest = [str(t) for t in rng.choice([n for n in names if n != twin], size=others, replace=False)]
    return [twin] * copies + rest


def sample_twin_layout(seed: int, *, hfov_deg: float = HFOV_DEG) -> SceneLayout:
    """The twin scene of ``seed`` (in ``TWIN_SEEDS``): two or three instances of one type, each with
    its own main-part colour, and 0-2 objects of other types.

    When fewer than two instances fit on the table, the placement is drawn again (from the same
    stream) with one object fewer (another type first, then a third copy) down to the two twins, so
    every twin scene holds at least two instances.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not is_twin_seed(int(seed)):
        raise InputError(
            f"twin scene seeds lie in [{TWIN_SEEDS[0]}, {TWIN_SEEDS[1]}), got {seed!r} "
            "(ordinary scenes: render_scene)"
        )
    rng = np.random.default_rng(int(seed))
    types = _pick_twin_types(rng)
    twin = types[0]
    for _ in range(TWIN_PLACEMENT_TRIES):
        objects, centres = _place_objects(rng, types)
        if sum(o.object_type == twin for o in objects) >= 2:
            return _framed(rng, int(seed), objects, centres, hfov_deg)
        types = types[:-1] if len(types) > 2 else types  # the last is another type, else the third copy
    raise RuntimeError(
        f"twin seed {seed}: two {twin}s did not fit on the table in {TWIN_PLACEMENT_TRIES} tries"
    )
