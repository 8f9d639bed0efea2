"""What the synthetic world is made of: object types, their named parts, the colour palette, phrasing.

Pure data (no open3d): the meshes that realise each part live in ``meshes.py``. Reasoning templates
carry an ``{obj}`` placeholder that becomes "the mug" or, to single out one of two mugs, "the red mug".
"""

from __future__ import annotations

from dataclasses import dataclass

# Named part colours (sRGB 0..255). Queries say these names ("the red mug's handle").
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (235, 205, 40),
    "orange": (240, 130, 20),
    "purple": (130, 50, 170),
    "pink": (240, 120, 170),
    "cyan": (40, 190, 200),
    "white": (235, 235, 235),
    "black": (35, 35, 35),
    "grey": (130, 130, 130),
    "brown": (120, 70, 30),
}

# Surroundings: never part of a query, never in the part-id image.
TABLE_RGB = (196, 164, 120)
FLOOR_RGB = (90, 92, 98)
BACKGROUND_RGB = (150, 160, 175)  # rays that hit nothing


@dataclass(frozen=True)
class ObjectType:
    """One object type: its parts (in mesh order), the part whose colour names the object, and
    reasoning (affordance) questions per part, each a template with an ``{obj}`` placeholder."""

    name: str
    parts: tuple[str, ...]
    main_part: str
    reasoning: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if self.main_part not in self.parts:
            raise ValueError(f"{self.name}: main_part {self.main_part!r} is not one of {self.parts}")
        unknown = set(self.reasoning) - set(self.parts)
        if unknown:
            raise ValueError(f"{self.name}: reasoning templates for unknown parts {sorted(unknown)}")


OBJECT_TYPES: dict[str, ObjectType] = {
    t.name: t
    for t in (
        ObjectType(
            name="mug",
            parts=("body", "handle", "rim"),
            main_part="body",
            reasoning={
                "handle": ("where would you grab {obj}?", "which part of {obj} do you hold when it is hot?"),
                "rim": ("where do you put your lips to drink from {obj}?",),
                "body": ("which part of {obj} holds the coffee?",),
            },
        ),
        ObjectType(
            name="knife",
            parts=("blade", "handle"),
            main_part="handle",
            reasoning={
                "blade": ("which part of {obj} is sharp?", "which part of {obj} cuts the bread?"),
                "handle": ("where should you hold {obj} safely?",),
            },
        ),
        ObjectType(
            name="bottle",
            parts=("body", "neck", "cap"),
            main_part="body",
            reasoning={
                "cap": ("what do you twist to open {obj}?",),
                "neck": ("where would you grip {obj} to pour from it?",),
                "body": ("which part of {obj} holds most of the drink?",),
            },
        ),
        ObjectType(
            name="hammer",
            parts=("head", "handle"),
            main_part="handle",
            reasoning={
                "head": ("which part of {obj} hits the nail?",),
                "handle": ("where would you hold {obj} to swing it?",),
            },
        ),
        ObjectType(
            name="spatula",
            parts=("blade", "handle"),
            main_part="handle",
            reasoning={
                "blade": ("which part of {obj} slides under a pancake?",),
                "handle": ("where would you hold {obj} to flip food?",),
            },
        ),
        ObjectType(
            name="scissors",
            parts=("blades", "handles"),
            main_part="handles",
            reasoning={
                "blades": ("which part of {obj} cuts the paper?", "which part of {obj} is sharp?"),
                "handles": ("where do you put your fingers to use {obj}?",),
            },
        ),
        ObjectType(
            name="pan",
            parts=("body", "handle"),
            main_part="body",
            reasoning={
                "body": ("where do you put the food in {obj}?",),
                "handle": ("where would you grab {obj} to lift it?",),
            },
        ),
        ObjectType(
            name="drawer",
            parts=("body", "front", "knob"),
            main_part="body",
            reasoning={
                "knob": ("what do you pull to open {obj}?",),
                "front": ("which part of {obj} slides out when it opens?",),
            },
        ),
        ObjectType(
            name="screwdriver",
            parts=("handle", "shaft", "tip"),
            main_part="handle",
            reasoning={
                "tip": ("which part of {obj} goes into the screw?",),
                "handle": ("where would you hold {obj} to turn it?",),
            },
        ),
        ObjectType(
            name="teapot",
            parts=("body", "spout", "handle", "lid", "knob"),
            main_part="body",
            reasoning={
                "spout": ("where does the tea pour out of {obj}?",),
                "handle": ("where would you grab {obj} to pour?",),
                "lid": ("what do you lift to fill {obj}?",),
                "knob": ("what do you pinch to lift the lid of {obj}?",),
            },
        ),
    )
}


def object_part_pairs() -> list[tuple[str, str]]:
    """Every registered (object type, part) pair, in catalog order."""
    return [(t.name, p) for t in OBJECT_TYPES.values() for p in t.parts]


def object_phrase(object_type: str, colour: str | None) -> str:
    """'the mug' or 'the red mug'."""
    return f"the {colour} {object_type}" if colour else f"the {object_type}"


def possessive(phrase: str) -> str:
    """'the mug' -> "the mug's"; 'the scissors' -> "the scissors'"."""
    return phrase + ("'" if phrase.endswith("s") else "'s")


# Parts a robot user may ask about that an object of the type does NOT have ("the spout of the mug"):
# the "absent_part" queries (``queries.make_absent_queries``). Chosen by hand from the other types'
# part names, leaving out names that could fairly mean a part the type has (a screwdriver's "blade" is
# its shaft, a drawer's "handle" its knob, a knife's "tip" the end of its blade, a bottle's "lid" its
# cap; "body" is the whole of most objects), so the right answer is always "not here".
ABSENT_PARTS: dict[str, tuple[str, ...]] = {
    "mug": ("spout", "lid", "cap", "blade", "knob"),
    "knife": ("spout", "lid", "cap", "knob", "rim"),
    "bottle": ("handle", "spout", "blade", "knob"),
    "hammer": ("spout", "lid", "cap", "blade", "knob"),
    "spatula": ("spout", "lid", "cap", "knob", "rim"),
    "scissors": ("spout", "lid", "cap", "knob", "rim"),
    "pan": ("spout", "lid", "cap", "knob", "blade"),
    "drawer": ("spout", "lid", "cap", "blade", "rim"),
    "screwdriver": ("spout", "lid", "knob", "rim"),
    "teapot": ("blade", "cap", "shaft"),
}


def _check_absent_parts() -> None:
    """Every absent part is a part name of the catalog and not one of its own type's parts."""
    vocabulary = {p for t in OBJECT_TYPES.values() for p in t.parts}
    if set(ABSENT_PARTS) != set(OBJECT_TYPES):
        raise ValueError(f"ABSENT_PARTS must list every object type, got {sorted(ABSENT_PARTS)}")
    for name, parts in ABSENT_PARTS.items():
        bad = [p for p in parts if p not in vocabulary or p in OBJECT_TYPES[name].parts]
        if bad:
            raise ValueError(f"ABSENT_PARTS[{name!r}]: {bad} are not catalog parts or are parts of a {name}")


_check_absent_parts()

_IRREGULAR_PLURALS = {"knife": "knives"}


def plural_noun(word: str) -> str:
    """'mug' -> 'mugs', 'body' -> 'bodies', 'knife' -> 'knives'; 'scissors' and 'blades' stay."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith("s"):
        return word
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"
