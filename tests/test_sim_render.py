"""Synthetic world: catalog, determinism, camera model, ground truth, masks, queries (real open3d)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.sim.camera import CameraIntrinsics, look_at
from part_point_ros.sim.catalog import OBJECT_TYPES, object_part_pairs
from part_point_ros.sim.ground_truth import innermost_pixel
from part_point_ros.sim.layout import sample_layout
from part_point_ros.sim.meshes import BUILDERS, object_part_meshes
from part_point_ros.sim.render import raycasting_scene, render_scene, world_meshes

W, H = 160, 120  # small images keep the suite fast; the default 320x240 is rendered once


@pytest.fixture(scope="module")
def scenes():
    return {seed: render_scene(seed, width=W, height=H) for seed in (0, 1, 2)}


@pytest.fixture(scope="module")
def twin_seed() -> int:
    """The first seed whose scene holds one type twice (found from the layout, no rendering)."""
    for seed in range(60):
        types = Counter(o.object_type for o in sample_layout(seed).objects)
        if max(types.values()) > 1:
            return seed
    pytest.fail("no seed in 0..59 puts the same object type twice on the table")


def test_catalog_has_enough_types_and_parts():
    assert len(OBJECT_TYPES) >= 8
    pairs = object_part_pairs()
    assert len(pairs) >= 24 and len(set(pairs)) == len(pairs)
    assert set(BUILDERS) == set(OBJECT_TYPES)
    for name, spec in OBJECT_TYPES.items():
        parts = object_part_meshes(name)
        assert tuple(parts) == spec.parts, name
        z_min = min(v[:, 2].min() for v, _ in parts.values())
        assert z_min == pytest.approx(0.0, abs=1e-9), f"{name} does not rest on the table"
        for part, (v, f) in parts.items():
            assert len(f) > 0 and f.max() < len(v), f"{name}:{part} has a broken mesh"


def test_same_seed_same_arrays_different_seed_differs(scenes):
    again = render_scene(1, width=W, height=H)
    first = scenes[1]
    np.testing.assert_array_equal(again.rgb, first.rgb)
    np.testing.assert_array_equal(again.depth_m, first.depth_m)  # NaNs compare equal here
    np.testing.assert_array_equal(again.part_ids, first.part_ids)
    np.testing.assert_array_equal(again.camera_pose, first.camera_pose)
    assert [q.text for q in again.queries] == [q.text for q in first.queries]
    other = scenes[2]
    assert not np.array_equal(other.rgb, first.rgb)
    assert not np.allclose(other.camera_pose, first.camera_pose)


def test_layout_does_not_depend_on_resolution(scenes):
    big = render_scene(0, width=320, height=240)
    small = scenes[0]
    np.testing.assert_array_equal(big.camera_pose, small.camera_pose)
    assert [(o.object_type, o.colour) for o in big.objects] == [
        (o.object_type, o.colour) for o in small.objects
    ]
    assert big.rgb.shape == (240, 320, 3) and big.depth_mm.shape == (240, 320)
    assert big.intrinsics.fx == pytest.approx(2 * small.intrinsics.fx)


def test_scene_arrays_have_documented_types(scenes):
    s = scenes[0]
    assert s.rgb.dtype == np.uint8 and s.rgb.shape == (H, W, 3)
    assert s.depth_m.dtype == np.float32 and s.depth_mm.dtype == np.uint16
    assert s.part_ids.dtype == np.uint16
    hit = np.isfinite(s.depth_m)
    assert hit.mean() > 0.9  # the camera looks down at the table
    np.testing.assert_array_equal(s.depth_mm == 0, ~hit)
    np.testing.assert_array_equal(s.depth_mm[hit], np.round(s.depth_m[hit] * 1000).astype(np.uint16))
    assert s.intrinsics == CameraIntrinsics.from_hfov(width=W, height=H, hfov_deg=60.0)


def test_objects_count_and_rest_on_table():
    for seed in range(20):
        layout = sample_layout(seed)
        assert 2 <= len(layout.objects) <= 5, seed
        for o in layout.objects:
            assert o.pose[2, 3] == 0.0 and np.allclose(o.pose[:3, 2], [0, 0, 1])


def test_camera_looks_down_in_optical_convention(scenes):
    for s in scenes.values():
        rotation, eye = s.camera_pose[:3, :3], s.camera_pose[:3, 3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        assert eye[2] > 0.2  # above the table
        assert rotation[2, 2] < -0.5  # optical z (forward) points down
        assert rotation[2, 1] < 0  # optical y (down in the image) has a downward world component


def test_depth_deprojects_onto_the_mesh_surface(scenes):
    seed = 2
    s = scenes[seed]
    o3d_scene, _ = raycasting_scene(world_meshes(sample_layout(seed)))
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(np.isfinite(s.depth_m))
    pick = rng.choice(rows.size, size=300, replace=False)
    pts_cam = np.stack(
        [
            s.intrinsics.deproject(c, r, float(s.depth_m[r, c]))
            for r, c in zip(rows[pick], cols[pick], strict=True)
        ]
    )
    pts_world = pts_cam @ s.camera_pose[:3, :3].T + s.camera_pose[:3, 3]  # (N, 3) optical -> base_link
    import open3d as o3d

    dist = o3d_scene.compute_distance(o3d.core.Tensor(pts_world.astype(np.float32))).numpy()
    assert dist.max() < 1e-4, f"deprojected depth lies {dist.max():.2e} m off the meshes"
    # and the pixels of a part's mask deproject onto that part's own mesh
    biggest = max(s.parts, key=lambda p: p.pixel_count)
    own = [m for m in world_meshes(sample_layout(seed)) if m.part_id == biggest.part_id]
    part_scene, _ = raycasting_scene(own)
    rows, cols = np.nonzero(s.part_masks[biggest.part_id])
    pts_cam = np.stack(
        [s.intrinsics.deproject(c, r, float(s.depth_m[r, c])) for r, c in zip(rows, cols, strict=True)]
    )
    pts_world = pts_cam @ s.camera_pose[:3, :3].T + s.camera_pose[:3, 3]
    dist = part_scene.compute_distance(o3d.core.Tensor(pts_world.astype(np.float32))).numpy()
    assert dist.max() < 1e-4, (
        f"{biggest.object_type}:{biggest.part} pixels lie {dist.max():.2e} m off its mesh"
    )


def test_gt_point_projects_back_into_its_part_mask(scenes):
    checked = 0
    for s in scenes.values():
        for p in s.parts:
            if p.pixel_count == 0:
                assert p.point_2d is None and p.point_3d is None
                continue
            u, v = p.point_2d
            assert s.part_ids[v, u] == p.part_id
            cam = (p.point_3d - s.camera_pose[:3, 3]) @ s.camera_pose[:3, :3]  # base_link -> optical
            np.testing.assert_allclose(cam, p.point_3d_camera, atol=1e-9)
            ((pu, pv),) = s.intrinsics.project(cam)
            assert (pu, pv) == pytest.approx((u, v), abs=1e-6)
            assert s.part_masks[p.part_id][int(round(pv)), int(round(pu))]
            assert s.gt_points_3d[p.part_id] is p.point_3d
            checked += 1
    assert checked >= 10


def test_masks_agree_with_part_id_image(scenes):
    for s in scenes.values():
        union = np.zeros(s.part_ids.shape, dtype=int)
        for p in s.parts:
            mask = s.part_masks[p.part_id]
            np.testing.assert_array_equal(mask, s.part_ids == p.part_id)
            assert int(mask.sum()) == p.pixel_count
            union += mask
        np.testing.assert_array_equal(union, (s.part_ids > 0).astype(int))  # disjoint, covering
        for o in s.objects:
            expected = np.isin(s.part_ids, list(o.part_ids))
            np.testing.assert_array_equal(s.instance_masks[o.object_id], expected)
            assert {s.part(i).object_id for i in o.part_ids} == {o.object_id}


def test_queries_refer_to_the_parts_they_name(scenes):
    kinds = Counter()
    for s in scenes.values():
        assert s.queries
        for q in s.queries:
            kinds[q.kind] += 1
            assert q.part in q.text or q.kind == "reasoning"
            assert q.object_type in q.text
            for pid in q.part_ids:
                part = s.part(pid)
                assert (part.object_type, part.part) == (q.object_type, q.part)
                assert part.pixel_count > 0
            assert s.query_mask(q).sum() == sum(s.part(i).pixel_count for i in q.part_ids)
    assert kinds["direct"] > 0 and kinds["reasoning"] > 0


def test_twin_objects_colour_query_picks_one_instance(twin_seed):
    s = render_scene(twin_seed, width=W, height=H)
    twins = [t for t, n in Counter(o.object_type for o in s.objects).items() if n > 1]
    assert twins
    object_type = twins[0]
    instances = [o for o in s.objects if o.object_type == object_type]
    assert len({o.colour for o in instances}) == len(instances)  # colours tell them apart
    coloured = [q for q in s.queries if q.object_type == object_type and q.colour is not None]
    assert coloured, f"seed {twin_seed}: no colour-qualified query for the two {object_type}s"
    for q in coloured:
        assert f"{q.colour} {object_type}" in q.text
        assert len(q.object_ids) == 1 and len(q.part_ids) == 1 and not q.ambiguous
        owner = next(o for o in instances if o.object_id == q.object_ids[0])
        assert owner.colour == q.colour and q.part_ids[0] in owner.part_ids
    plain = [q for q in s.queries if q.object_type == object_type and q.colour is None]
    assert plain and all(q.ambiguous for q in plain)
    assert any(len(q.part_ids) == 2 for q in plain)  # union of both instances


def test_innermost_pixel_is_the_deepest_inside():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:11, 5:26] = True  # rows 2..10, cols 5..25: distance 5 only on row 6, cols 9..21
    u, v = innermost_pixel(mask)
    assert v == 6 and 9 <= u <= 21
    assert innermost_pixel(np.zeros((4, 4), dtype=bool)) is None
    edge = np.zeros((10, 10), dtype=bool)
    edge[:, :5] = True  # touches the border: the point keeps away from it
    u, v = innermost_pixel(edge)
    assert 2 <= u <= 3 and 2 <= v <= 7


def test_look_at_and_projection_round_trip():
    pose = look_at(np.array([0.0, 0.0, 1.0]), np.array([0.5, 0.0, 0.0]))
    forward = pose[:3, 2]
    np.testing.assert_allclose(forward, np.array([0.5, 0, -1]) / np.linalg.norm([0.5, 0, -1]))
    np.testing.assert_allclose(pose[:3, 0], [0, -1, 0], atol=1e-12)  # right = -y when facing +x
    k = CameraIntrinsics.from_hfov(width=64, height=48, hfov_deg=60)
    p = k.deproject(10.0, 30.0, 0.8)
    np.testing.assert_allclose(k.project(p[None]), [[10.0, 30.0]])


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"seed": 0, "width": 4}])
def test_bad_arguments_raise_input_error(kwargs):
    seed = kwargs.pop("seed")
    with pytest.raises(InputError):
        render_scene(seed, **kwargs)
