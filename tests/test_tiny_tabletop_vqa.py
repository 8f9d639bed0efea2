"""The VQA generator of the tiny-tabletop backbone: coverage, determinism, balance, no location words."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from part_point_ros.sim.catalog import OBJECT_TYPES, PALETTE, object_part_pairs
from part_point_ros.sim.vqa import (
    FORBIDDEN_WORDS,
    NONE_ANSWER,
    QUERY_WORDS_ALLOWED,
    QUESTION_KINDS,
    SPLIT_SEEDS,
    ObjectFact,
    PartFact,
    SceneFacts,
    answer_vocabulary,
    make_questions,
    query_vocabulary,
    scene_questions,
    split_of,
    vocabulary,
)

WIDTH, HEIGHT = 160, 120


def _facts(seed: int, objects: list[tuple[str, float, str]]) -> SceneFacts:
    """Hand-made facts: (type, centroid column, main colour) per object; every part 200 pixels."""
    obj_facts, part_facts, pid = [], [], 1
    palette = list(PALETTE)
    for oid, (object_type, u, main_colour) in enumerate(objects, start=1):
        spec = OBJECT_TYPES[object_type]
        others = iter(c for c in palette if c != main_colour)
        ids = []
        for part in spec.parts:
            colour = main_colour if part == spec.main_part else next(others)
            part_facts.append(PartFact(pid, oid, object_type, part, colour, 200, u))
            ids.append(pid)
            pid += 1
        obj_facts.append(ObjectFact(oid, object_type, main_colour, tuple(ids)))
    return SceneFacts(seed, WIDTH, HEIGHT, tuple(obj_facts), tuple(part_facts))


@pytest.fixture(scope="module")
def rendered():
    from part_point_ros.sim import render_scene

    return [render_scene(seed, width=WIDTH, height=HEIGHT) for seed in (200_000, 200_001, 200_002, 200_003)]


def test_every_object_part_pair_gets_a_colour_question():
    facts = _facts(3, [(t, 10.0 + 14 * i, "red") for i, t in enumerate(OBJECT_TYPES)])
    items = make_questions(facts)
    asked = {(q.object_type, q.part) for q in items if q.kind == "part_colour"}
    assert asked == set(object_part_pairs()) and len(asked) == 27
    parts = {p.part_id: p for p in facts.parts}
    for q in items:
        if q.kind == "part_colour":
            (pid,) = q.part_ids
            assert q.question == f"what colour is the {q.part} of the {q.object_type}?"
            assert q.answer == parts[pid].colour and parts[pid].part == q.part


def test_twins_are_named_by_colour_and_counted():
    facts = _facts(4, [("mug", 20.0, "red"), ("mug", 140.0, "blue"), ("knife", 30.0, "green")])
    items = make_questions(facts)
    texts = {q.question: q.answer for q in items}
    assert "what colour is the handle of the red mug?" in texts
    assert "what colour is the handle of the blue mug?" in texts
    assert "what colour is the mug?" not in texts  # ambiguous: never asked
    assert texts["how many mugs are there?"] == "two"
    assert texts["how many objects are there?"] == "three"
    assert texts["which side is the knife on?"] == "left"
    assert "which side is the mug on?" not in texts


def test_biggest_part_and_colour_presence():
    facts = _facts(8, [("pan", 40.0, "red"), ("knife", 120.0, "blue")])
    parts = tuple(
        PartFact(**{**p.__dict__, "pixel_count": 900}) if (p.object_type, p.part) == ("pan", "body") else p
        for p in facts.parts
    )
    items = make_questions(SceneFacts(8, WIDTH, HEIGHT, facts.objects, parts))
    texts = {q.question: q.answer for q in items}
    assert texts["what colour is the biggest part?"] == "red"
    present = {p.colour for p in parts}
    asked = [q for q in items if q.kind == "colour_exists"]
    assert sorted(q.answer for q in asked) == ["no", "no", "yes", "yes"]
    for q in asked:
        colour = q.question.removeprefix("is there anything ").removesuffix("?")
        assert (colour in present) == (q.answer == "yes")
    # no clear biggest part: not asked
    assert "what colour is the biggest part?" not in {q.question for q in make_questions(facts)}


def test_side_needs_a_clear_offset():
    centred = make_questions(_facts(5, [("pan", WIDTH * 0.55, "red"), ("mug", WIDTH * 0.9, "blue")]))
    sides = {q.object_type: q.answer for q in centred if q.kind == "side"}
    assert sides == {"mug": "right"}


def test_hidden_parts_are_not_asked():
    facts = _facts(6, [("teapot", 50.0, "red"), ("mug", 100.0, "blue")])
    small = tuple(
        p if p.part != "knob" else PartFact(**{**p.__dict__, "pixel_count": 5}) for p in facts.parts
    )
    items = make_questions(SceneFacts(6, WIDTH, HEIGHT, facts.objects, small))
    assert not [q for q in items if q.part == "knob"]
    assert [q for q in items if q.part == "spout"]


def test_deterministic_words_known_and_no_location_talk(rendered):
    words = set(vocabulary())
    answers = set(answer_vocabulary())
    for scene in rendered:
        first, again = scene_questions(scene), scene_questions(scene)
        assert first == again and first
        for q in first:
            tokens = re.findall(r"\w+|[^\w\s]+", q.question)
            assert set(tokens) <= words, q.question
            assert q.answer in answers and " " not in q.answer
            assert q.kind in QUESTION_KINDS
            allowed = QUERY_WORDS_ALLOWED if q.kind.startswith("query_") else ()
            assert not any(w in q.question for w in FORBIDDEN_WORDS if w not in allowed), q.question
            assert not any(w in q.answer for w in FORBIDDEN_WORDS), q.answer
            text = f"{q.question} {q.answer}"
            assert not re.search(r"\d", text), text


def test_query_colour_asks_the_worlds_own_queries_for_the_named_part():
    from part_point_ros.sim.catalog import OBJECT_TYPES, object_phrase

    facts = _facts(11, [("mug", 40.0, "pink"), ("mug", 160.0, "blue"), ("knife", 250.0, "yellow")])
    items = make_questions(facts)
    part_colour = [q for q in items if q.kind == "part_colour"]
    queried = [q for q in items if q.kind == "query_colour"]
    parts = {p.part_id: p for p in facts.parts}
    objects = {o.object_id: o for o in facts.objects}
    assert {q.part_ids for q in queried} == {q.part_ids for q in part_colour}  # the same parts, no more
    for q in queried:
        (pid,) = q.part_ids
        p = parts[pid]
        assert q.answer == p.colour
        colour = objects[p.object_id].colour if p.object_type == "mug" else None  # the mugs are twins
        phrase = object_phrase(p.object_type, colour)
        templates = [t.format(obj=phrase) for t in OBJECT_TYPES[p.object_type].reasoning.get(p.part, ())]
        direct = (f"the {p.part} of {phrase}", f"{phrase}'s {p.part}")
        assert q.question in (*direct, *templates), q.question
    for pid in {q.part_ids for q in part_colour}:
        kinds = [q.question.endswith("?") for q in queried if q.part_ids == pid]
        has_templates = bool(OBJECT_TYPES[parts[pid[0]].object_type].reasoning.get(parts[pid[0]].part))
        assert kinds == [False, True] if has_templates else kinds == [False]


def test_query_absent_asks_what_the_scene_lacks_and_the_answer_is_none(rendered):
    """The absent queries of a scene are exactly the ones the calibration asks of it (the same texts),
    each about a type not in the scene or a part its type lacks, answered "none"; present-part
    queries are never answered "none"."""
    from part_point_ros.sim.catalog import ABSENT_PARTS
    from part_point_ros.sim.queries import absent_queries

    for scene in rendered:
        items = scene_questions(scene)
        absent = [q for q in items if q.kind == "query_absent"]
        assert [q.question for q in absent] == [q.text for q in absent_queries(scene)]
        present = {o.object_type for o in scene.objects}
        kinds = Counter(q.object_type in present for q in absent)
        assert kinds[False] >= 1 and kinds[True] >= 1  # an absent object and an absent part per scene
        for q in absent:
            assert q.answer == NONE_ANSWER and not q.part_ids
            assert q.object_type not in present or q.part in ABSENT_PARTS[q.object_type], q.question
        assert all(q.answer != NONE_ANSWER for q in items if q.kind != "query_absent")


def test_reverse_lookups_only_for_colours_one_part_has():
    facts = _facts(9, [("mug", 20.0, "pink"), ("knife", 120.0, "yellow")])
    # mug: body pink, handle red, rim green; knife: handle yellow, blade red (shared: never asked)
    colours = Counter(p.colour for p in facts.parts)
    items = make_questions(facts)
    reverse = {q.question: q for q in items if q.kind in ("colour_part", "colour_object")}
    parts = {p.part_id: p for p in facts.parts}
    assert reverse, "no reverse question asked"
    for q in reverse.values():
        (pid,) = q.part_ids
        colour = q.question.split()[-1 if q.kind == "colour_part" else -2].rstrip("?")
        assert colours[colour] == 1 and parts[pid].colour == colour
        assert q.answer == (parts[pid].part if q.kind == "colour_part" else parts[pid].object_type)
    shared = [c for c, n in colours.items() if n > 1]
    assert shared and not any(c in text.split() for c in shared for text in reverse)
    assert shared == ["red"] and len(reverse) == 2 * 3
    assert reverse["which part is pink?"].answer == "body"
    assert reverse["which object has a green part?"].answer == "mug"
    assert reverse["which object has a yellow part?"].answer == "knife"


def test_every_pointing_query_of_the_world_is_in_the_vocabulary(rendered):
    from part_point_ros.sim.queries import make_queries

    words = set(query_vocabulary())
    assert words <= set(vocabulary())
    for scene in rendered:
        for query in make_queries(scene.seed, scene.objects, scene.parts, min_pixels=1):
            assert set(re.findall(r"\w+|[^\w\s]+", query.text.lower())) <= words, query.text


def test_facts_round_trip_through_json(rendered):
    facts = SceneFacts.from_scene(rendered[0])
    again = SceneFacts.from_dict(json.loads(json.dumps(facts.to_dict())))
    assert again == facts
    assert make_questions(again) == scene_questions(rendered[0])
    visible = {p.part_id: p.pixel_count for p in facts.parts}
    assert visible == {p.part_id: int((rendered[0].part_ids == p.part_id).sum()) for p in rendered[0].parts}


def test_answers_are_balanced(rendered):
    items = [q for scene in rendered for q in scene_questions(scene)]
    for kind in ("exists", "colour_exists"):
        yes_no = Counter(q.answer for q in items if q.kind == kind)
        assert yes_no["yes"] == yes_no["no"] > 0
    colours = Counter(q.answer for q in items if q.kind == "part_colour")
    assert max(colours.values()) <= 0.3 * sum(colours.values())


def test_split_seed_ranges_are_disjoint():
    spans = sorted(SPLIT_SEEDS.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert split_of(0) == "train" and split_of(99_999) == "train"
    assert split_of(100_000) == "val" and split_of(200_000) == "test"
    with pytest.raises(ValueError, match="outside every split"):
        split_of(-1)
