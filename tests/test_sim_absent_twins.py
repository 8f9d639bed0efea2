"""Synthetic world, issue #14: questions about what is not there, and twin scenes (real open3d).

The new query kinds are opt-in (``absent_queries``) or live in their own seed range
(``render_twin_scene``), so the ordinary scenes, their queries and every number measured on them
stay as they were: the first test pins two of them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.sim.catalog import ABSENT_PARTS, OBJECT_TYPES, plural_noun
from part_point_ros.sim.layout import TWIN_SPLIT_SEEDS, sample_layout, sample_twin_layout
from part_point_ros.sim.queries import absent_queries, make_absent_queries, min_query_pixels
from part_point_ros.sim.records import query_records
from part_point_ros.sim.render import render_scene, render_twin_scene
from part_point_ros.sim.scene import ABSENT_KINDS, PLURAL_KIND
from part_point_ros.sim.vqa import PLURALS

PLAIN_SEEDS = range(200_000, 200_006)  # held-out test scenes
TWIN_SEEDS = range(1_200_000, 1_200_006)  # held-out twin scenes
# sha256 of json.dumps(query_records(render_scene(seed))) before issue #14 (texts, kinds, part ids)
GOLDEN_QUERIES = {
    5: ("d8f2ce34d11f35a71e7954ae8697b32f497d7949c49db72962f106f9bae255d8", 28),
    200_000: ("1f364d2e0524bfb71e27a9594c90985c1ac61283598d7fc75397145e2bd7a38e", 15),
}


@pytest.fixture(scope="module")
def plain():
    return {seed: render_scene(seed) for seed in PLAIN_SEEDS}


@pytest.fixture(scope="module")
def twins():
    return {seed: render_twin_scene(seed) for seed in TWIN_SEEDS}


@pytest.mark.parametrize("seed", sorted(GOLDEN_QUERIES))
def test_ordinary_scenes_keep_their_queries(seed):
    scene = render_scene(seed)
    digest = hashlib.sha256(json.dumps(query_records(scene)).encode()).hexdigest()
    assert (digest, len(scene.queries)) == GOLDEN_QUERIES[seed]
    assert {q.kind for q in scene.queries} <= {"direct", "reasoning"}  # new kinds are opt-in


def test_absent_parts_table_names_parts_the_type_does_not_have():
    vocabulary = {p for t in OBJECT_TYPES.values() for p in t.parts}
    assert set(ABSENT_PARTS) == set(OBJECT_TYPES)
    for name, parts in ABSENT_PARTS.items():
        assert parts and set(parts) <= vocabulary, name
        assert not set(parts) & set(OBJECT_TYPES[name].parts), name
        # neither a singular nor a plural of one of its own parts ("handles" of a mug)
        assert not {plural_noun(p) for p in parts} & {plural_noun(p) for p in OBJECT_TYPES[name].parts}, name


def test_absent_object_queries_name_types_that_are_not_in_the_scene(plain):
    asked = Counter()
    for scene in plain.values():
        present = {o.object_type for o in scene.objects}
        queries = [q for q in absent_queries(scene) if q.kind == "absent_object"]
        assert len(queries) == min(4, len(OBJECT_TYPES) - len(present))
        assert len({q.object_type for q in queries}) == len(queries)  # distinct absent types
        for q in queries:
            assert q.absent and q.object_type not in present, (scene.seed, q)
            assert q.part in OBJECT_TYPES[q.object_type].parts
            assert q.object_type in q.text and q.part_ids == () and q.object_ids == ()
            assert not scene.query_mask(q).any() and scene.instance_part_masks(q) == []
            asked[q.object_type] += 1
    assert len(asked) >= 5  # not always the same few types


def test_absent_part_queries_ask_a_present_type_for_a_part_it_lacks(plain):
    for scene in plain.values():
        queries = [q for q in absent_queries(scene) if q.kind == "absent_part"]
        seen_types = {p.object_type for p in scene.parts if p.pixel_count > 0}
        assert {q.object_type for q in queries} <= seen_types and queries
        for q in queries:
            assert q.absent and q.part not in OBJECT_TYPES[q.object_type].parts
            assert q.part in ABSENT_PARTS[q.object_type]
            assert q.part in q.text and q.object_type in q.text and q.part_ids == ()
            owners = tuple(o.object_id for o in scene.objects if o.object_type == q.object_type)
            assert q.object_ids == owners
    assert set(ABSENT_KINDS) == {"absent_object", "absent_part"}


def test_absent_queries_are_deterministic_and_leave_the_scene_alone(plain):
    seed = PLAIN_SEEDS[0]
    scene = plain[seed]
    before = list(scene.queries)
    first = absent_queries(scene)
    again = absent_queries(render_scene(seed))
    assert first == again and scene.queries == before
    other = make_absent_queries(
        seed + 1, scene.objects, scene.parts, min_pixels=min_query_pixels(320, 240)
    )  # another seed, same objects: another draw
    assert [q.text for q in other] != [q.text for q in first]


def test_twin_seeds_have_their_own_range():
    assert TWIN_SPLIT_SEEDS["test"][0] == TWIN_SEEDS[0]
    ranges = sorted(TWIN_SPLIT_SEEDS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for seed in (5, 200_000, 2_000_000, True):
        with pytest.raises(InputError, match="twin scene seeds"):
            sample_twin_layout(seed)
    with pytest.raises(InputError):
        render_twin_scene(5)


def test_every_twin_layout_holds_two_or_three_of_one_type():
    copies, kinds = Counter(), Counter()
    for seed in range(1_200_000, 1_200_120):
        layout = sample_twin_layout(seed)
        counts = Counter(o.object_type for o in layout.objects)
        twin, n = counts.most_common(1)[0]
        assert 2 <= n <= 3 and len(layout.objects) <= 5, seed
        colours = [o.colour for o in layout.objects if o.object_type == twin]
        assert len(set(colours)) == len(colours)  # twins differ in their naming colour
        copies[n] += 1
        kinds[twin] += 1
    assert copies[2] and copies[3] and len(kinds) == len(OBJECT_TYPES)
    # the same number as an ordinary seed is another scene: the ranges keep them apart
    assert sample_layout(1_200_000).objects != sample_twin_layout(1_200_000).objects


def test_twin_scene_instances_are_visible_and_their_masks_disjoint(twins):
    min_pixels = min_query_pixels(320, 240)
    plural_seen = 0
    for seed, scene in twins.items():
        counts = Counter(o.object_type for o in scene.objects)
        twin, n = counts.most_common(1)[0]
        assert n >= 2, seed
        for o in scene.objects:
            if o.object_type == twin:
                assert scene.instance_masks[o.object_id].any(), (seed, o)
        every = [q for q in scene.queries if (q.ambiguous or q.kind == PLURAL_KIND) and len(q.part_ids) >= 2]
        assert every, f"twin seed {seed}: no question about two instances"
        for q in every:
            masks = scene.instance_part_masks(q)
            assert len(masks) == len(q.part_ids) == len(q.object_ids) >= 2
            assert all(int(m.sum()) >= min_pixels for m in masks)
            assert not any((a & b).any() for a, b in combinations(masks, 2))
            np.testing.assert_array_equal(np.logical_or.reduce(masks), scene.query_mask(q))
            owners = [scene.part(pid) for pid in q.part_ids]
            assert len({p.object_id for p in owners}) == len(owners)
            assert all((p.object_type, p.part) == (q.object_type, q.part) for p in owners)
        for q in (q for q in scene.queries if q.kind == PLURAL_KIND):
            plural_seen += 1
            assert plural_noun(q.object_type) in q.text and plural_noun(q.part) in q.text
            assert not q.ambiguous and q.colour is None
            ambiguous = [
                a for a in every if a.ambiguous and a.part == q.part and a.object_type == q.object_type
            ]
            assert ambiguous and ambiguous[0].part_ids == q.part_ids  # same instances, asked for in plural
    assert plural_seen >= len(twins)


def test_twin_scenes_are_deterministic(twins):
    seed = TWIN_SEEDS[1]
    again = render_twin_scene(seed)
    np.testing.assert_array_equal(again.rgb, twins[seed].rgb)
    np.testing.assert_array_equal(again.part_ids, twins[seed].part_ids)
    assert again.queries == twins[seed].queries
    assert not np.array_equal(twins[TWIN_SEEDS[0]].rgb, twins[seed].rgb)


def test_plural_nouns():
    cases = {"mug": "mugs", "body": "bodies", "knife": "knives", "scissors": "scissors", "blades": "blades"}
    assert {w: plural_noun(w) for w in cases} == cases
    assert {t: plural_noun(t) for t in OBJECT_TYPES} == PLURALS  # as the VQA questions say it
