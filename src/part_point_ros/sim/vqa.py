"""One-word visual questions about a synthetic scene, for training the tiny-tabletop backbone.

The questions need the image (which colour a named part has, whether a type is on the table, how
many, on which side) but never say where anything is: no points, masks or boxes appear in a
question or an answer, so a model trained on them can only carry location implicitly, in its
attention, like a first-generation MLLM.

Question kinds (every answer is one word):
- ``part_colour``: "what colour is the handle of the mug?" for every visible object:part pair; the
  parts of one object have distinct colours, so the answer needs the named part. When a type is
  present twice, the object is named by its colour: "what colour is the handle of the red mug?".
- ``object_colour``: "what colour is the mug?" (the colour of its main part, as the catalog says).
- ``biggest_colour``: "what colour is the biggest part?" (the visible part with the most pixels, when
  it clearly is): answerable from the image as a whole, it opens the image pathway early in training.
- ``colour_exists``: "is there anything red?" yes / no, two present and two absent colours per scene
  (an easy question that teaches the model to read colour off the image tokens first).
- ``exists``: "is there a hammer?" yes / no, one absent type asked per present type.
- ``count``: "how many mugs are there?" zero / one / two; "how many objects are there?" two..five.
- ``side``: "which side is the mug on?" left / right in the image, only when clearly off centre.
- ``colour_part``: "which part is red?" -> "handle", and ``colour_object``: "which object has a red
  part?" -> "mug", for colours that exactly one visible part of the scene has: the reverse lookup,
  which makes the image features of a part say what part (and what object) they belong to.
- ``query_colour``: a pointing query exactly as the synthetic world writes it (``sim.queries``: "the
  handle of the mug", "the red mug's handle", "where would you grab the mug?") -> the colour of the
  part it refers to: one direct and (where the catalog has templates) one reasoning phrasing per
  part asked by ``part_colour``. The stand-in for referring-expression data in instruction tuning
  (LLaVA-1.5's RefCOCO region descriptions): the model resolves the words a user points with to
  their referent in the image, at the prompt's last token, whose attention the pointing methods
  read. Its answer is a colour, never a place, so "where" may appear in its questions (a robot
  user's "where would you grab ...?"), never in an answer.
- ``query_absent``: a pointing query about what the scene does not hold, exactly as the synthetic
  world's absent queries are written (``sim.queries.make_absent_queries``: a type not on the table,
  "the spout of the teapot"; a part a type on the table lacks, "the blade of the mug") -> "none".
  The stand-in for the negative instructions of instruction tuning (LRV-Instruction's "there is no
  teapot"; POPE-style existence questions): the model learns, at the query's own last token, that
  nothing in the image answers it, which the A2P head's presence output can read (issue #14's "not
  here"). Train scenes only, like every kind; the calibration's absent queries are on val and test
  seeds.

Everything is deterministic in the scene seed. Seed ranges of the splits (disjoint, as
docs/synthetic_world.md suggests): train ``0:100000``, val ``100000:200000``, test ``200000:``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from part_point_ros.sim.catalog import OBJECT_TYPES, PALETTE, object_phrase
from part_point_ros.sim.ground_truth import innermost_pixel
from part_point_ros.sim.queries import direct_text, make_absent_queries, min_query_pixels

SPLIT_SEEDS: dict[str, tuple[int, int]] = {
    "train": (0, 100_000),
    "val": (100_000, 200_000),
    "test": (200_000, 300_000),
}
QUESTION_KINDS: tuple[str, ...] = (
    "part_colour",
    "object_colour",
    "biggest_colour",
    "colour_exists",
    "exists",
    "count",
    "side",
    "colour_part",
    "colour_object",
    "query_colour",
    "query_absent",
)
ALWAYS_ASKED: tuple[str, ...] = ("query_absent",)  # asked every step beside the colour kinds (language stage)
NONE_ANSWER = "none"  # ``query_absent``: nothing in the image is what the query refers to
BIGGEST_MARGIN = 1.3  # "the biggest part" is asked when it has this many times the pixels of the next
COLOUR_EXISTS_PER_ANSWER = 2  # "is there anything red?": this many yes and as many no per scene
MIN_PART_FRACTION = 0.002  # a part is asked about when it covers this share of the image
SIDE_MARGIN = 0.1  # "which side": the object's centroid is this far (share of the width) off centre
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")  # the world has 2-5 objects
PLURALS: dict[str, str] = {t: t if t.endswith("s") else t + "s" for t in OBJECT_TYPES} | {"knife": "knives"}
FORBIDDEN_WORDS: tuple[str, ...] = ("point", "mask", "pixel", "box", "coordinate", "where")
QUERY_WORDS_ALLOWED: tuple[str, ...] = ("where",)  # in ``query_*`` questions only (module doc)


@dataclass(frozen=True)
class PartFact:
    """What the questions need to know about one visible part instance."""

    part_id: int
    object_id: int
    object_type: str
    part: str
    colour: str
    pixel_count: int
    centroid_u: float  # mean column of its visible pixels (NaN when hidden)


@dataclass(frozen=True)
class ObjectFact:
    object_id: int
    object_type: str
    colour: str  # the colour of its main part: the word that names it
    part_ids: tuple[int, ...]
    point_u: float = -1.0  # innermost pixel of its whole visible mask (object-level grounding); -1: hidden
    point_v: float = -1.0


@dataclass(frozen=True)
class SceneFacts:
    """The facts of one scene the questions are made from; JSON-friendly (``to_dict``)."""

    seed: int
    width: int
    height: int
    objects: tuple[ObjectFact, ...]
    parts: tuple[PartFact, ...]

    @classmethod
    def from_scene(cls, scene: Any) -> SceneFacts:
        """From a rendered ``sim.Scene``: colours, visible pixel counts and centroids per part."""
        height, width = scene.part_ids.shape
        cols = np.arange(width, dtype=np.float64)
        parts = []
        for p in scene.parts:
            mask = scene.part_ids == p.part_id  # (H, W)
            n = int(mask.sum())
            centroid = float((mask.sum(axis=0) * cols).sum() / n) if n else float("nan")
            parts.append(PartFact(p.part_id, p.object_id, p.object_type, p.part, p.colour, n, centroid))
        objects = []
        for o in scene.objects:
            point = innermost_pixel(np.isin(scene.part_ids, o.part_ids))
            u, v = point if point is not None else (-1.0, -1.0)
            objects.append(
                ObjectFact(o.object_id, o.object_type, o.colour, tuple(o.part_ids), float(u), float(v))
            )
        return cls(int(scene.seed), int(width), int(height), tuple(objects), tuple(parts))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneFacts:
        return cls(
            seed=int(d["seed"]),
            width=int(d["width"]),
            height=int(d["height"]),
            objects=tuple(ObjectFact(**{**o, "part_ids": tuple(o["part_ids"])}) for o in d["objects"]),
            parts=tuple(PartFact(**p) for p in d["parts"]),
        )


@dataclass(frozen=True)
class VqaItem:
    """One question with its one-word answer. ``part_ids``: the part instances a ``part_colour``
    or ``object_colour`` question is about (for attention analysis only; never shown to a model)."""

    question: str
    answer: str
    kind: str
    object_type: str | None = None
    part: str | None = None
    part_ids: tuple[int, ...] = ()


def split_of(seed: int) -> str:
    """The split a scene seed belongs to."""
    for name, (lo, hi) in SPLIT_SEEDS.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} is outside every split range {SPLIT_SEEDS}")


def answer_vocabulary() -> tuple[str, ...]:
    """Every answer word any question can have."""
    parts = dict.fromkeys(p for spec in OBJECT_TYPES.values() for p in spec.parts)
    return (*PALETTE, "yes", "no", *NUMBER_WORDS, "left", "right", *parts, *OBJECT_TYPES, NONE_ANSWER)


def _word_split(text: str) -> list[str]:
    """Words and punctuation runs, as the tiny tokenizer's Whitespace pre-tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def query_vocabulary() -> tuple[str, ...]:
    """Every word the synthetic world's pointing queries (``sim.queries``) can contain: the direct
    phrasings ("the handle of the mug", "the red mug's handle") and the reasoning templates."""
    words = ["the", "of", "'", "s", *PALETTE]
    for spec in OBJECT_TYPES.values():
        words += [spec.name, *spec.parts]
        for templates in spec.reasoning.values():
            for template in templates:
                words += _word_split(template.format(obj="the"))
    return tuple(dict.fromkeys(words))


def vocabulary() -> tuple[str, ...]:
    """Every word a question or an answer can contain (for a word-level tokenizer)."""
    words = [
        "what",
        "colour",
        "is",
        "the",
        "of",
        "there",
        "a",
        "an",
        "how",
        "many",
        "are",
        "objects",
        "anything",
    ]
    words += ["which", "side", "on", "?", "biggest", "part", "has", "object"]
    for spec in OBJECT_TYPES.values():
        words += [spec.name, PLURALS[spec.name], *spec.parts]
    return tuple(dict.fromkeys([*words, *answer_vocabulary(), *query_vocabulary(), *POINT_WORDS]))


def _is_there(object_type: str) -> str:
    if object_type.endswith("s"):  # "scissors"
        return f"are there {object_type}?"
    return f"is there {'an' if object_type[0] in 'aeiou' else 'a'} {object_type}?"


def make_questions(facts: SceneFacts) -> list[VqaItem]:
    """Every question of the scene, in a fixed order (deterministic in ``facts.seed``)."""
    rng = np.random.default_rng([facts.seed, 7])  # its own stream, independent of layout and queries
    min_pixels = MIN_PART_FRACTION * facts.width * facts.height
    parts = {p.part_id: p for p in facts.parts}
    visible = {
        o.object_id: sum(parts[i].pixel_count for i in o.part_ids) >= min_pixels for o in facts.objects
    }
    objects = [o for o in facts.objects if visible[o.object_id]]
    by_type: dict[str, list[ObjectFact]] = {}
    for o in objects:
        by_type.setdefault(o.object_type, []).append(o)
    items: list[VqaItem] = []

    for object_type, instances in by_type.items():
        main = OBJECT_TYPES[object_type].main_part
        twin = len(instances) > 1
        for o in instances:
            own = {parts[i].part: parts[i] for i in o.part_ids}
            if own[main].pixel_count < min_pixels:
                continue  # its naming colour is not visible: neither the object nor its parts are asked
            name = f"{o.colour} {object_type}" if twin else object_type
            if not twin:
                items.append(
                    VqaItem(
                        f"what colour is the {object_type}?",
                        o.colour,
                        "object_colour",
                        object_type,
                        main,
                        (own[main].part_id,),
                    )
                )
            for part_name, p in own.items():
                if p.pixel_count < min_pixels or (twin and part_name == main):
                    continue
                items.append(
                    VqaItem(
                        f"what colour is the {part_name} of the {name}?",
                        p.colour,
                        "part_colour",
                        object_type,
                        part_name,
                        (p.part_id,),
                    )
                )

    twin_types = {t for t, instances in by_type.items() if len(instances) > 1}
    items += query_colour_items(facts, [q for q in items if q.kind == "part_colour"], twin_types)
    items += query_absent_items(facts)

    by_size = sorted((p for p in facts.parts if visible[p.object_id]), key=lambda p: -p.pixel_count)
    if len(by_size) > 1 and by_size[0].pixel_count >= BIGGEST_MARGIN * by_size[1].pixel_count:
        big = by_size[0]
        items.append(
            VqaItem(
                "what colour is the biggest part?",
                big.colour,
                "biggest_colour",
                big.object_type,
                big.part,
                (big.part_id,),
            )
        )

    seen_colours = {p.colour for p in facts.parts if p.pixel_count >= min_pixels}
    unseen_colours = [c for c in PALETTE if not any(p.colour == c and p.pixel_count > 0 for p in facts.parts)]
    n_colour = min(COLOUR_EXISTS_PER_ANSWER, len(seen_colours), len(unseen_colours))
    for answer, pool in (("yes", sorted(seen_colours, key=list(PALETTE).index)), ("no", unseen_colours)):
        for c in rng.choice(pool, size=n_colour, replace=False) if n_colour else ():
            items.append(VqaItem(f"is there anything {c}?", answer, "colour_exists"))

    present = sorted(by_type)
    absent = [t for t in sorted(OBJECT_TYPES) if t not in by_type]
    asked_absent = [str(t) for t in rng.choice(absent, size=min(len(present), len(absent)), replace=False)]
    for t in present:
        items.append(VqaItem(_is_there(t), "yes", "exists", t))
    for t in asked_absent:
        items.append(VqaItem(_is_there(t), "no", "exists", t))

    twins = [t for t in present if len(by_type[t]) > 1]
    singles = [t for t in present if len(by_type[t]) == 1]
    count_types = list(twins)
    if singles and rng.random() < 0.5:
        count_types.append(str(rng.choice(singles)))
    if absent and rng.random() < 0.5:
        count_types.append(str(rng.choice(absent)))
    for t in count_types:
        n = len(by_type.get(t, []))
        items.append(VqaItem(f"how many {PLURALS[t]} are there?", NUMBER_WORDS[n], "count", t))
    if len(objects) < len(NUMBER_WORDS):
        items.append(VqaItem("how many objects are there?", NUMBER_WORDS[len(objects)], "count"))

    for t in singles:
        (o,) = by_type[t]
        seen = [parts[i] for i in o.part_ids if parts[i].pixel_count > 0]
        u = sum(p.centroid_u * p.pixel_count for p in seen) / sum(p.pixel_count for p in seen)
        offset = u / facts.width - 0.5
        if abs(offset) >= SIDE_MARGIN:
            items.append(VqaItem(f"which side is the {t} on?", "left" if offset < 0 else "right", "side", t))

    for c in PALETTE:  # reverse lookups, for colours exactly one visible part has
        having = [p for p in facts.parts if p.colour == c and p.pixel_count > 0]
        if len(having) != 1 or having[0].pixel_count < min_pixels or not visible[having[0].object_id]:
            continue
        (p,) = having
        items.append(
            VqaItem(f"which part is {c}?", p.part, "colour_part", p.object_type, p.part, (p.part_id,))
        )
        items.append(
            VqaItem(
                f"which object has {'an' if c[0] in 'aeiou' else 'a'} {c} part?",
                p.object_type,
                "colour_object",
                p.object_type,
                p.part,
                (p.part_id,),
            )
        )
    return items


def query_colour_items(facts: SceneFacts, part_colour: list[VqaItem], twin_types: set[str]) -> list[VqaItem]:
    """``query_colour`` items for the parts ``part_colour`` asks about: the world's direct phrasing and
    one of its reasoning templates for each, the object named by its colour when its type is one of
    ``twin_types`` (seen more than once, as the part-colour question names it). Their own random
    stream, so the other kinds stay as they were."""
    rng = np.random.default_rng([facts.seed, 8])
    parts = {p.part_id: p for p in facts.parts}
    objects = {o.object_id: o for o in facts.objects}
    items = []
    for q in part_colour:
        (pid,) = q.part_ids
        p = parts[pid]
        colour = objects[p.object_id].colour if p.object_type in twin_types else None
        texts = [direct_text(rng, p.object_type, p.part, colour)]
        templates = OBJECT_TYPES[p.object_type].reasoning.get(p.part, ())
        if templates:
            texts.append(str(rng.choice(templates)).format(obj=object_phrase(p.object_type, colour)))
        items += [VqaItem(t, p.colour, "query_colour", p.object_type, p.part, (pid,)) for t in texts]
    return items


def query_absent_items(facts: SceneFacts) -> list[VqaItem]:
    """``query_absent`` items: the scene's absent queries (``make_absent_queries``, the same texts as
    the head's "not here" training and the calibration use for a scene of this seed), answered
    ``NONE_ANSWER``."""
    min_pixels = min_query_pixels(facts.width, facts.height)
    queries = make_absent_queries(facts.seed, list(facts.objects), list(facts.parts), min_pixels=min_pixels)
    return [VqaItem(q.text, NONE_ANSWER, "query_absent", q.object_type, q.part) for q in queries]


def scene_questions(scene: Any) -> list[VqaItem]:
    """``make_questions`` for a rendered ``sim.Scene``."""
    return make_questions(SceneFacts.from_scene(scene))


# ----- object-level pointing in text (the stand-in for referring / pointing instruction data) -----

POINT_PROMPT = "point to {obj}."  # Molmo's direct prompt, with an object instead of a part
# The pointing prompts of the language stage: Molmo's two forms (the text method's, seed 000 Fig. 5)
# with an object in place of the part: direct ("point to the red mug."), direct with a "the X of"
# that names no part ("point to the centre of the mug."; the answer is the same innermost pixel), and
# the reasoning form ("the mug. please provide a single 2d point pointing at it."). Asked "point to
# the handle of the mug." the model has the syntax but was never shown where a part is.
POINT_PROMPTS: tuple[str, ...] = (
    POINT_PROMPT,
    "point to the centre of {obj}.",
    "{obj}. please provide a single 2d point pointing at it.",
)
POINT_PROMPT_SHARES = (0.5, 0.25, 0.25)
POINT_ANSWER = '<point x="{x}" y="{y}">'  # Molmo's point tag, whole percent of the original image
POINT_WORDS: tuple[str, ...] = (
    "<", "point", "x", '="', '"', "y", '">', ".", "to", *map(str, range(100)),
    "centre", "please", "provide", "single", "2d", "pointing", "at", "it",
)  # fmt: skip


def percent(value: float, size: int) -> int:
    """A pixel coordinate (pixel centres at integers) as a whole percent of the image side, 0..99."""
    return int(min(99, max(0, round((value + 0.5) / size * 100 - 0.5))))


def pointing_items(facts: SceneFacts) -> list[VqaItem]:
    """ "point to the mug." / "point to the red mug." (or another of ``POINT_PROMPTS``) ->
    ``<point x="37" y="52">`` at the innermost pixel of the object's visible mask, for every object
    whose naming (main) part is visible; twins are named by colour. Object level only: no question
    names a part, no answer locates one."""
    rng = np.random.default_rng([facts.seed, 11])
    min_pixels = MIN_PART_FRACTION * facts.width * facts.height
    parts = {p.part_id: p for p in facts.parts}
    counts: dict[str, int] = {}
    for o in facts.objects:
        counts[o.object_type] = counts.get(o.object_type, 0) + 1
    items = []
    for o in facts.objects:
        main = next(parts[i] for i in o.part_ids if parts[i].part == OBJECT_TYPES[o.object_type].main_part)
        if main.pixel_count < min_pixels or not o.point_u >= 0:  # hidden (or NaN in an old cache)
            continue
        named = counts[o.object_type] > 1 or rng.random() < 0.3
        obj = f"the {o.colour} {o.object_type}" if named else f"the {o.object_type}"
        answer = POINT_ANSWER.format(x=percent(o.point_u, facts.width), y=percent(o.point_v, facts.height))
        prompt = POINT_PROMPTS[rng.choice(len(POINT_PROMPTS), p=POINT_PROMPT_SHARES)].format(obj=obj)
        items.append(VqaItem(prompt, answer, "point_object", o.object_type, None, o.part_ids))
    return items
