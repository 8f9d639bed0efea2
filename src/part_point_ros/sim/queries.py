"""Language queries for a rendered scene, each with the part instances it refers to.

Policy (also in docs/synthetic_world.md):
- Only parts that cover at least ``MIN_QUERY_FRACTION`` of the image are asked about.
- A type present once: one direct query per visible part and one reasoning query per part that has
  reasoning templates; ~30 % of them name the object's colour ("the red mug's handle").
- A type present more than once: the query without colour is ambiguous on purpose and refers to
  the union of that part over every instance (``ambiguous=True``); in addition, each instance gets
  colour-qualified queries that refer to its own part only. The colour is that of the instance's
  main part (the mug's body), distinct between instances of one type, and is only used when that
  main part is itself visible.

Two more families (docs/evaluation.md, "Not here, and every instance"), made only on request so
that ``render_scene``'s queries stay as they were:
- ``make_absent_queries``: what a robot user asks when the thing is not there ("is it here?"): a few
  object types of the catalog that are not in the scene ("the spout of the teapot", no teapot), and,
  for every type on the table, a part it does not have (``catalog.ABSENT_PARTS``: "the lid of the
  mug"). They refer to no part instance; the right answer is "not found".
- ``make_plural_queries``: "the handles of the mugs" when two or more instances of a type show that
  part; every instance is meant (the twin scenes of ``render.render_twin_scene``).
"""

from __future__ import annotations

import math

import numpy as np

from part_point_ros.sim.catalog import (
    ABSENT_PARTS,
    OBJECT_TYPES,
    PALETTE,
    object_phrase,
    plural_noun,
    possessive,
)
from part_point_ros.sim.scene import PLURAL_KIND, ObjectInstance, PartInstance, Query, Scene

# A part is asked about when it covers at least a quarter of one image token of the shipped backbone
# (16x16 px of a 320x240 frame: 64 px): smaller parts cannot be told apart on its token grid
# (docs/synthetic_world.md, "Part sizes"). A share of the image, so queries do not depend on the size.
MIN_QUERY_FRACTION = 64 / (320 * 240)
SINGLE_COLOUR_PROBABILITY = 0.3
ABSENT_OBJECTS_PER_SCENE = 4  # "the spout of the teapot" with no teapot: this many absent types a scene
ABSENT_REASONING_PROBABILITY = 0.5  # an absent object's query is a reasoning one this often (if it can be)


def min_query_pixels(width: int, height: int) -> int:
    """The fewest visible pixels of a part asked about in a ``width`` x ``height`` image."""
    return math.ceil(MIN_QUERY_FRACTION * width * height)


def direct_text(rng: np.random.Generator, object_type: str, part: str, colour: str | None) -> str:
    """A direct query's words: "the handle of the (red) mug" or "the (red) mug's handle", 50/50."""
    obj = object_phrase(object_type, colour)
    if rng.random() < 0.5:
        return f"the {part} of {obj}"
    return f"{possessive(obj)} {part}"


def _queries_for(
    rng: np.random.Generator,
    object_type: str,
    part: str,
    targets: list[tuple[ObjectInstance, PartInstance]],
    colour: str | None,
    ambiguous: bool,
) -> list[Query]:
    common = dict(
        object_type=object_type,
        part=part,
        part_ids=tuple(p.part_id for _, p in targets),
        object_ids=tuple(o.object_id for o, _ in targets),
        colour=colour,
        ambiguous=ambiguous,
    )
    out = [Query(text=direct_text(rng, object_type, part, colour), kind="direct", **common)]
    templates = OBJECT_TYPES[object_type].reasoning.get(part, ())
    if templates:
        template = str(rng.choice(templates))
        out.append(
            Query(text=template.format(obj=object_phrase(object_type, colour)), kind="reasoning", **common)
        )
    return out


def make_queries(
    seed: int,
    objects: list[ObjectInstance],
    parts: list[PartInstance],
    *,
    min_pixels: int,
) -> list[Query]:
    """Direct and reasoning queries for the parts of ``objects`` with at least ``min_pixels`` visible
    pixels (deterministic by seed)."""
    rng = np.random.default_rng([seed, 1])  # its own stream: queries never shift the layout
    by_id = {p.part_id: p for p in parts}
    by_type: dict[str, list[ObjectInstance]] = {}
    for o in objects:
        by_type.setdefault(o.object_type, []).append(o)

    def part_of(o: ObjectInstance, name: str) -> PartInstance:
        return next(by_id[i] for i in o.part_ids if by_id[i].part == name)

    def named(o: ObjectInstance) -> bool:  # can a viewer see the colour that names it?
        return part_of(o, OBJECT_TYPES[o.object_type].main_part).pixel_count >= min_pixels

    queries: list[Query] = []
    for object_type, instances in by_type.items():
        for part in OBJECT_TYPES[object_type].parts:
            visible = [(o, part_of(o, part)) for o in instances if part_of(o, part).pixel_count >= min_pixels]
            if not visible:
                continue
            if len(instances) > 1:
                queries += _queries_for(rng, object_type, part, visible, None, ambiguous=True)
                for o, p in visible:
                    if named(o):
                        queries += _queries_for(rng, object_type, part, [(o, p)], o.colour, ambiguous=False)
            else:
                o, p = visible[0]
                colour = o.colour if rng.random() < SINGLE_COLOUR_PROBABILITY and named(o) else None
                queries += _queries_for(rng, object_type, part, [(o, p)], colour, ambiguous=False)
    return queries


def make_absent_queries(
    seed: int,
    objects: list[ObjectInstance],
    parts: list[PartInstance],
    *,
    min_pixels: int,
    absent_objects: int = ABSENT_OBJECTS_PER_SCENE,
) -> list[Query]:
    """Queries about what the scene does not hold, deterministic by seed (its own random stream).

    First ``absent_objects`` object types of the catalog that are not in ``objects`` at all (not even
    hidden), each with one of its parts, phrased as a direct or a reasoning query, sometimes with a
    colour ("the red teapot's spout"): kind "absent_object". Then, for every type on the table with
    at least one part of ``min_pixels`` visible pixels, one part it does not have
    (``catalog.ABSENT_PARTS``): kind "absent_part", ``object_ids`` = the instances that lack it. The
    absent-object queries do not depend on the image size; the absent-part ones only through which
    types can be seen. No query refers to a part instance (``part_ids`` is empty).
    """
    rng = np.random.default_rng([seed, 2])  # never shifts the layout nor the other queries
    present = list(dict.fromkeys(o.object_type for o in objects))  # first-appearance order
    missing = [t for t in OBJECT_TYPES if t not in present]  # catalog order
    queries: list[Query] = []
    for index in rng.permutation(len(missing))[: max(0, absent_objects)]:
        object_type = missing[int(index)]
        spec = OBJECT_TYPES[object_type]
        part = str(rng.choice(spec.parts))
        colour = str(rng.choice(list(PALETTE))) if rng.random() < SINGLE_COLOUR_PROBABILITY else None
        templates = spec.reasoning.get(part, ())
        if templates and rng.random() < ABSENT_REASONING_PROBABILITY:
            text = str(rng.choice(templates)).format(obj=object_phrase(object_type, colour))
        else:
            text = direct_text(rng, object_type, part, colour)
        queries.append(Query(text, "absent_object", object_type, part, (), (), colour, False))
    seen = {p.object_id for p in parts if p.pixel_count >= min_pixels}
    for object_type in present:
        instances = tuple(o.object_id for o in objects if o.object_type == object_type)
        if not seen.intersection(instances):
            continue
        part = str(rng.choice(ABSENT_PARTS[object_type]))
        text = direct_text(rng, object_type, part, None)
        queries.append(Query(text, "absent_part", object_type, part, (), instances, None, False))
    return queries


def _plural_text(rng: np.random.Generator, object_type: str, part: str, copies: int) -> str:
    objects, part_words = plural_noun(object_type), plural_noun(part)
    form = int(rng.integers(3))
    if form == 0:
        return f"the {part_words} of the {objects}"
    if form == 1:
        return f"{possessive('the ' + objects)} {part_words}"
    every = "both" if copies == 2 else "all the"
    return f"the {part_words} of {every} {objects}"


def make_plural_queries(
    seed: int,
    objects: list[ObjectInstance],
    parts: list[PartInstance],
    *,
    min_pixels: int,
) -> list[Query]:
    """Plural queries, kind "plural" ("the handles of the mugs"), for every part that at least two
    instances of one type show with ``min_pixels`` visible pixels; each refers to all of those
    instances. Deterministic by seed (its own random stream)."""
    rng = np.random.default_rng([seed, 3])
    by_id = {p.part_id: p for p in parts}
    by_type: dict[str, list[ObjectInstance]] = {}
    for o in objects:
        by_type.setdefault(o.object_type, []).append(o)
    queries: list[Query] = []
    for object_type, instances in by_type.items():
        if len(instances) < 2:
            continue
        for part in OBJECT_TYPES[object_type].parts:
            visible = [
                (o, by_id[i])
                for o in instances
                for i in o.part_ids
                if by_id[i].part == part and by_id[i].pixel_count >= min_pixels
            ]
            if len(visible) < 2:
                continue
            queries.append(
                Query(
                    text=_plural_text(rng, object_type, part, len(instances)),
                    kind=PLURAL_KIND,
                    object_type=object_type,
                    part=part,
                    part_ids=tuple(p.part_id for _, p in visible),
                    object_ids=tuple(o.object_id for o, _ in visible),
                )
            )
    return queries


def absent_queries(scene: Scene, *, absent_objects: int = ABSENT_OBJECTS_PER_SCENE) -> list[Query]:
    """``make_absent_queries`` for a rendered scene, at its image size."""
    return make_absent_queries(
        scene.seed,
        scene.objects,
        scene.parts,
        min_pixels=min_query_pixels(scene.intrinsics.width, scene.intrinsics.height),
        absent_objects=absent_objects,
    )
