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
"""

from __future__ import annotations

import numpy as np

from part_point_ros.sim.catalog import OBJECT_TYPES, object_phrase, possessive
from part_point_ros.sim.scene import ObjectInstance, PartInstance, Query

# A part is asked about when it covers at least a quarter of one image token of the shipped backbone
# (16x16 px of a 320x240 frame: 64 px): smaller parts cannot be told apart on its token grid
# (docs/synthetic_world.md, "Part sizes"). A share of the image, so queries do not depend on the size.
MIN_QUERY_FRACTION = 64 / (320 * 240)
SINGLE_COLOUR_PROBABILITY = 0.3


def _direct_text(rng: np.random.Generator, object_type: str, part: str, colour: str | None) -> str:
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
    out = [Query(text=_direct_text(rng, object_type, part, colour), kind="direct", **common)]
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
