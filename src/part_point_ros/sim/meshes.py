"""Part meshes of every object type, built from open3d primitives in the object's own frame.

Object frame: z up, the object rests on the plane z = 0, the origin is its reference point on the
table. Each builder returns ``{part name: (vertices (V, 3) float64, triangles (F, 3) int32)}`` with
one entry per part of ``catalog.OBJECT_TYPES[name].parts``; a part may merge several primitives
(the two blades of the scissors are one part).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from part_point_ros.sim._open3d import o3d

Mesh = o3d.geometry.TriangleMesh
PartMeshes = dict[str, tuple[np.ndarray, np.ndarray]]

_RES = 24  # segments around cylinders, cones and tori


def _rotation_z_to(direction: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) that maps +z onto ``direction`` (Rodrigues)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, d)
    s, c = np.linalg.norm(axis), float(np.dot(z, d))
    if s < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


_AXES = {"x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]), "z": np.array([0, 0, 1.0])}


def _place(mesh: Mesh, centre, direction=None) -> Mesh:
    if direction is not None:
        mesh.rotate(_rotation_z_to(direction), center=np.zeros(3))
    return mesh.translate(np.asarray(centre, dtype=np.float64))


def box(size, centre) -> Mesh:
    """Axis-aligned box of ``size`` (sx, sy, sz) centred at ``centre``."""
    m = Mesh.create_box(*size)
    return m.translate(np.asarray(centre, dtype=np.float64) - np.asarray(size) / 2)


def tapered_box(size, centre, tip_scale: float) -> Mesh:
    """Box along x whose +x end is narrowed in y by ``tip_scale`` (a blade)."""
    m = Mesh.create_box(*size)
    v = np.asarray(m.vertices) - np.asarray(size) / 2  # centred, (8, 3)
    tip = v[:, 0] > 0
    v[tip, 1] *= tip_scale
    m.vertices = o3d.utility.Vector3dVector(v + np.asarray(centre, dtype=np.float64))
    return m


def cylinder(radius: float, length: float, centre, axis="z") -> Mesh:
    m = Mesh.create_cylinder(radius, length, resolution=_RES, split=1)
    return _place(m, centre, _AXES.get(axis, axis))


def frustum(r_bottom: float, r_top: float, length: float, centre, axis="z") -> Mesh:
    """Truncated cone: radius ``r_bottom`` at -length/2, ``r_top`` at +length/2 along ``axis``."""
    m = Mesh.create_cylinder(r_bottom, length, resolution=_RES, split=1)
    v = np.asarray(m.vertices).copy()  # (V, 3)
    top = v[:, 2] > 0
    v[top, :2] *= r_top / r_bottom
    m.vertices = o3d.utility.Vector3dVector(v)
    return _place(m, centre, _AXES.get(axis, axis))


def cone(radius: float, length: float, base_centre, direction) -> Mesh:
    """Cone with its base disc at ``base_centre`` and its apex ``length`` along ``direction``."""
    m = Mesh.create_cone(radius, length, resolution=_RES)
    return _place(m, base_centre, direction)


def sphere(radius: float, centre, scale_z: float = 1.0) -> Mesh:
    m = Mesh.create_sphere(radius, resolution=12)
    if scale_z != 1.0:
        v = np.asarray(m.vertices).copy()
        v[:, 2] *= scale_z
        m.vertices = o3d.utility.Vector3dVector(v)
    return m.translate(np.asarray(centre, dtype=np.float64))


def torus(ring_radius: float, tube_radius: float, centre, axis="z") -> Mesh:
    """Torus whose ring lies in the plane normal to ``axis``."""
    m = Mesh.create_torus(ring_radius, tube_radius, radial_resolution=_RES, tubular_resolution=10)
    return _place(m, centre, _AXES.get(axis, axis))


def _mug() -> dict[str, list[Mesh]]:
    return {
        "body": [cylinder(0.04, 0.10, (0, 0, 0.05))],
        "handle": [torus(0.03, 0.011, (0.048, 0, 0.05), axis="y")],
        "rim": [torus(0.04, 0.006, (0, 0, 0.10))],
    }


def _knife() -> dict[str, list[Mesh]]:
    return {
        "blade": [tapered_box((0.13, 0.026, 0.003), (0.065, 0, 0.0015), tip_scale=0.15)],
        "handle": [box((0.10, 0.022, 0.016), (-0.05, 0, 0.008))],
    }


def _bottle() -> dict[str, list[Mesh]]:
    return {
        "body": [cylinder(0.035, 0.14, (0, 0, 0.07))],
        "neck": [frustum(0.035, 0.014, 0.04, (0, 0, 0.16)), cylinder(0.014, 0.03, (0, 0, 0.195))],
        "cap": [cylinder(0.017, 0.022, (0, 0, 0.221))],
    }


def _hammer() -> dict[str, list[Mesh]]:
    return {
        "head": [box((0.04, 0.11, 0.035), (0.13, 0, 0.0175))],
        "handle": [cylinder(0.013, 0.26, (0, 0, 0.0175), axis="x")],
    }


def _spatula() -> dict[str, list[Mesh]]:
    return {
        "blade": [box((0.10, 0.07, 0.004), (0.05, 0, 0.002))],
        "handle": [cylinder(0.011, 0.16, (-0.08, 0, 0.011), axis="x")],
    }


def _scissors() -> dict[str, list[Mesh]]:
    blades = []
    for sign in (1, -1):
        blade = tapered_box((0.11, 0.014, 0.004), (0.055, 0, 0.002 + (sign > 0) * 0.004), tip_scale=0.2)
        blade.rotate(Mesh.get_rotation_matrix_from_xyz((0, 0, sign * 0.12)), center=np.zeros(3))
        blades.append(blade)
    handles = [torus(0.02, 0.006, (-0.03, sign * 0.024, 0.006)) for sign in (1, -1)]
    return {"blades": blades, "handles": handles}


def _pan() -> dict[str, list[Mesh]]:
    return {
        "body": [cylinder(0.11, 0.045, (0, 0, 0.0225)), torus(0.11, 0.006, (0, 0, 0.045))],
        "handle": [box((0.18, 0.028, 0.012), (0.20, 0, 0.036))],
    }


def _drawer() -> dict[str, list[Mesh]]:
    return {
        "body": [box((0.20, 0.26, 0.13), (0, 0, 0.065))],
        "front": [box((0.012, 0.23, 0.10), (0.106, 0, 0.065))],
        "knob": [sphere(0.022, (0.128, 0, 0.065))],
    }


def _screwdriver() -> dict[str, list[Mesh]]:
    return {
        "handle": [cylinder(0.016, 0.10, (-0.05, 0, 0.016), axis="x")],
        "shaft": [cylinder(0.008, 0.09, (0.045, 0, 0.016), axis="x")],
        "tip": [cone(0.014, 0.045, (0.09, 0, 0.016), direction=(1, 0, 0))],
    }


def _teapot() -> dict[str, list[Mesh]]:
    spout_dir = np.array([1.0, 0.0, 0.9])
    return {
        "body": [sphere(0.075, (0, 0, 0.06), scale_z=0.8)],
        "spout": [cone(0.024, 0.11, (0.055, 0, 0.05), direction=spout_dir)],
        "handle": [torus(0.04, 0.008, (-0.075, 0, 0.065), axis="y")],
        "lid": [cylinder(0.035, 0.014, (0, 0, 0.118))],
        "knob": [sphere(0.018, (0, 0, 0.138))],
    }


BUILDERS: dict[str, Callable[[], dict[str, list[Mesh]]]] = {
    "mug": _mug,
    "knife": _knife,
    "bottle": _bottle,
    "hammer": _hammer,
    "spatula": _spatula,
    "scissors": _scissors,
    "pan": _pan,
    "drawer": _drawer,
    "screwdriver": _screwdriver,
    "teapot": _teapot,
}


def _merge(meshes: list[Mesh]) -> tuple[np.ndarray, np.ndarray]:
    vertices, triangles, offset = [], [], 0
    for m in meshes:
        v, f = np.asarray(m.vertices), np.asarray(m.triangles)
        vertices.append(v)
        triangles.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(triangles).astype(np.int32)


def object_part_meshes(object_type: str, scale: float = 1.0) -> PartMeshes:
    """The parts of ``object_type`` in its own frame, scaled, resting on z = 0."""
    parts = {name: _merge(meshes) for name, meshes in BUILDERS[object_type]().items()}
    z_min = min(v[:, 2].min() for v, _ in parts.values())
    lift = np.array([0.0, 0.0, -z_min])
    return {name: ((v + lift) * scale, f) for name, (v, f) in parts.items()}


def footprint(parts: PartMeshes) -> list[tuple[np.ndarray, float]]:
    """Circles (centre (2,), radius) in the object's xy plane, one per part, covering that part."""
    circles = []
    for v, _ in parts.values():
        xy = v[:, :2]
        centre = (xy.min(axis=0) + xy.max(axis=0)) / 2
        circles.append((centre, float(np.linalg.norm(xy - centre, axis=1).max())))
    return circles
