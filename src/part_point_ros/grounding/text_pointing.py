"""Text-pointing baseline: each family's native pointing prompt and a parser for what it answers.

Each format has a direct prompt (PACO: ``part`` + ``object``) and a reasoning prompt (InstructPart,
Point-Bench: a free-form instruction). Molmo, Qwen2.5-VL and LLaVA-1.5 use seed 000 Fig. 5 verbatim;
the other formats use the model's own grounding convention (sources below). Every backbone family
resolves to one format (``FORMAT_OF_FAMILY``; families without a native pointing output answer in
LLaVA's 0..1 format), and ``answer_to_pixels`` is the one call that turns an answer into ORIGINAL
pixels, so no caller special-cases a family.

Parsers never raise on model output: they return a ``TextPointParse`` with ``parsed_ok`` False and
a ``reason`` when the answer holds no usable point (prose, no numbers, NaN, out of range, truncated
XML / JSON). Points are returned in the coordinate frame the format writes:

- ``molmo`` (Molmo): ``<point x="" y="">`` / ``<points x1= y1= ...>``, ``percent`` (0..100).
- ``molmo2`` (Molmo2): ``<points coords="1 1 073 160 2 173 600" alt="..">label</points>``: the first
  number of each group (groups split by ``;`` tab ``:`` ``,``) is the image index, then (point index,
  x, y) triplets, x and y ``per_mille`` (0..1000) of the image. transformers 5.23's
  ``models/molmo2/`` (configuration, processing, image processing, modeling) holds nothing about
  this output; the format is the one the ``allenai/Molmo2-8B`` model card's example code parses
  (``COORD_REGEX`` / ``FRAME_REGEX`` / ``POINTS_REGEX``, ``extract_multi_image_points``: coords
  scaled by 1000), read in public copies of that code. An answer without ``coords`` falls back to
  Molmo's percent attributes, as that code's ``extract_points`` does.
- ``qwen2_5_vl`` (Qwen2.5-VL): XML or JSON, ``processed_px``: absolute pixels of the RESIZED image.
- ``qwen2_vl`` (Qwen2-VL): ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, ``per_mille``; the point is
  the box centre. The box tags are special tokens that decoding usually strips, so bare
  ``(x1,y1),(x2,y2)`` is read the same; a bare ``(x,y)`` is a point.
- ``qwen3_vl`` (Qwen3-VL): JSON ``[{"point_2d": [x, y], "label": ".."}]`` or ``bbox_2d``, possibly in
  a ```json fence, ``per_mille`` of the image the user gave (Qwen3-VL writes relative coordinates,
  not Qwen2.5-VL's resized pixels).
- ``internvl`` (InternVL2.5 / 3): ``<ref>..</ref><box>[[x1, y1, x2, y2]]</box>``, ``per_mille``; the
  point is the box centre (tags stripped or not). The prompt is InternVL's RefCOCO grounding one.
- ``llava`` (LLaVA-1.5, and LLaVA-NeXT, LLaVA-OneVision, SmolVLM, Gemma 3): ``normalized`` 0..1.
  LLaVA often writes numbers above 1 anyway; the rule here is: if any coordinate of a point is > 1
  and all are <= 100, the point is read as percent (divided by 100); anything else outside [0, 1]
  is out of range.

The Qwen2-VL and Qwen3-VL prompts are ours, in each model's documented output convention (no
verbatim prompt for part pointing is published); change them here if a better one is found.

``to_original_pixels`` maps them to ORIGINAL-image pixels. ``processed_px`` goes through the
``ImageGrid`` (processed pixels -> original, undoing resize / pad / crop). ``percent``,
``per_mille`` and ``normalized`` are fractions of the ORIGINAL image size: the prompt speaks of "the
image" and the user sees the original image, so (0, 0) and (1, 1) are the original image's corners,
not those of a processed square (for Qwen-style resizing without pad or crop both readings agree).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from part_point_ros.types import ImageGrid

# The answer formats (each is also the family name of the models that write it).
FORMATS = ("molmo", "molmo2", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "internvl", "llava")
# Backbone family (``BackboneInfo.family`` / ``pointing_format``) -> the format its answers are read in.
FORMAT_OF_FAMILY: dict[str, str] = {
    **{fmt: fmt for fmt in FORMATS},
    # no native pointing output: asked and read in LLaVA's normalised (x, y) format
    "llava_next": "llava",
    "llava_onevision": "llava",
    "smolvlm": "llava",
    "gemma3": "llava",
}
FAMILIES = tuple(FORMAT_OF_FAMILY)
PROMPT_MODES = ("auto", "direct", "reasoning")

_LLAVA_TAIL = (
    "This 2D point is represented as a (x, y) tuple, where x is the horizontal image axis, y is the "
    "vertical image axis, and the origin is at the top-left corner. The range of these x - y "
    "coordinates is normalized as integers between 0 and 1. Follow this output format: Point: (x, y)."
)

# InternVL's referring-expression grounding prompt (its RefCOCO evaluation); answers <box>[[..]]</box>.
_INTERNVL_REF = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{ref}</ref>"
)

# Seed 000, Figure 5, verbatim (as Python format strings); then the other formats' (module docstring).
DIRECT_PROMPTS: dict[str, str] = {
    "molmo": "Point to the {part} of the {object}.",
    "qwen2_5_vl": (
        "Point to the {part} of the {object} in the image, output its coordinates in XML format "
        "<points x y>object</points>."
    ),
    "llava": "Please provide a single 2D point pointing at the {part} of the {object} in the image. "
    + _LLAVA_TAIL,
    # Molmo2 is asked as Molmo is; it answers with <points coords=...>
    "molmo2": "Point to the {part} of the {object}.",
    "qwen2_vl": "Output the bounding box of the {part} of the {object} in the image.",
    "qwen3_vl": (
        "Point to the {part} of the {object} in the image and report its point coordinates in JSON "
        'format: [{{"point_2d": [x, y], "label": "{part}"}}].'
    ),
    "internvl": _INTERNVL_REF.format(ref="the {part} of the {object}"),
}
REASONING_PROMPTS: dict[str, str] = {
    "molmo": "{long_instruction}. Please provide a single 2D point pointing at it.",
    "qwen2_5_vl": (
        "{long_instruction}. Please point to it and output its coordinates in XML format "
        "<points x y>object</points>."
    ),
    "llava": "{long_instruction}. Please provide a single 2D point pointing at it in the image. "
    + _LLAVA_TAIL,
    "molmo2": "{long_instruction}. Please provide a single 2D point pointing at it.",
    "qwen2_vl": "{long_instruction}. Output the bounding box of it in the image.",
    "qwen3_vl": (
        "{long_instruction}. Point to it in the image and report its point coordinates in JSON "
        'format: [{{"point_2d": [x, y], "label": "target"}}].'
    ),
    "internvl": _INTERNVL_REF.format(ref="{long_instruction}"),
}

# "the handle of the mug" -> part "handle", object "mug" (used by prompt mode "auto").
_PART_OF_OBJECT = re.compile(
    r"^\s*(?:the\s+|a\s+|an\s+)?(?P<part>[\w\s'-]+?)\s+of\s+(?:the\s+|a\s+|an\s+)?(?P<object>[\w\s'-]+?)"
    r"\s*\.?\s*$",
    re.IGNORECASE,
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"


def format_of_family(family: str) -> str:
    """The answer format of a backbone family (or of a format name itself); ValueError if unknown."""
    if family not in FORMAT_OF_FAMILY:
        raise ValueError(
            f"no text-pointing format for family {family!r}; use one of {', '.join(FORMAT_OF_FAMILY)}"
        )
    return FORMAT_OF_FAMILY[family]


def text_prompt(
    family: str,
    query: str,
    *,
    mode: str = "auto",
    part: str | None = None,
    object_name: str | None = None,
) -> str:
    """The pointing prompt of ``family`` (a backbone family or a format name) for ``query``.

    ``mode="direct"`` needs ``part`` and ``object_name`` (or a query of the form "the P of the O");
    ``"reasoning"`` puts the query in as the Long_instruction; ``"auto"`` is direct when the parts
    are given or the query has that form, else reasoning. One trailing period of the query is dropped
    so the template's ". Please ..." does not double it.
    """
    fmt = format_of_family(family)
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode {mode!r} is not one of {', '.join(PROMPT_MODES)}")
    if mode != "reasoning" and (part is None or object_name is None):
        match = _PART_OF_OBJECT.match(query)
        if match:
            part = part or match.group("part").strip()
            object_name = object_name or match.group("object").strip()
    if mode == "direct" and (part is None or object_name is None):
        raise ValueError(
            f"direct prompt needs a part and an object; {query!r} is not 'the PART of the OBJECT'"
        )
    if mode != "reasoning" and part is not None and object_name is not None:
        return DIRECT_PROMPTS[fmt].format(part=part, object=object_name)
    instruction = query.strip()
    if instruction.endswith("."):
        instruction = instruction[:-1]
    return REASONING_PROMPTS[fmt].format(long_instruction=instruction)


@dataclass
class TextPointParse:
    """What a parser found: points in ``frame`` units, and whether the answer was usable."""

    points: list[tuple[float, float]] = field(default_factory=list)
    parsed_ok: bool = False
    frame: str = ""  # "percent" | "per_mille" | "processed_px" | "normalized"
    reason: str = ""  # why parsing failed ("" when parsed_ok)

    @property
    def point(self) -> tuple[float, float] | None:
        """The first point, or None."""
        return self.points[0] if self.points else None


def _fail(frame: str, reason: str) -> TextPointParse:
    return TextPointParse(points=[], parsed_ok=False, frame=frame, reason=reason)


def _to_float(text: object) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _attr_points(attrs: str) -> list[tuple[float, float]] | None:
    """Points from tag attributes: ``x="1" y="2"`` or ``x1=.. y1=.. x2=.. y2=..``.

    Returns None when no x/y attributes are present, [] if some are present but unusable.
    """
    pairs = re.findall(r"\b([xy])(\d*)\s*=\s*[\"']?\s*(" + _NUMBER + r")", attrs, re.IGNORECASE)
    if not pairs:
        return None
    xs: dict[str, float | None] = {}
    ys: dict[str, float | None] = {}
    for axis, index, value in pairs:
        (xs if axis.lower() == "x" else ys)[index] = _to_float(value)
    points = []
    for index in sorted(set(xs) & set(ys), key=lambda s: int(s) if s else 0):
        x, y = xs[index], ys[index]
        if x is not None and y is not None:
            points.append((x, y))
    return points


def _xml_points(answer: str, tags: str) -> tuple[list[tuple[float, float]], str]:
    """Points from every ``<point ...>`` / ``<points ...>`` tag; (points, reason if none)."""
    opening = re.compile(r"<\s*(" + tags + r")\b([^<>]*)(>|$)", re.IGNORECASE)
    found_tag = False
    points: list[tuple[float, float]] = []
    for match in opening.finditer(answer):
        found_tag = True
        if match.group(3) != ">":
            continue  # truncated tag: generation stopped inside it
        attrs = match.group(2)
        from_attrs = _attr_points(attrs)
        if from_attrs is None:
            # positional form "<points 120 340>": pairs of bare numbers
            numbers = [_to_float(n) for n in re.findall(_NUMBER, attrs, re.IGNORECASE)]
            if len(numbers) >= 2 and len(numbers) % 2 == 0 and all(n is not None for n in numbers):
                from_attrs = [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]
            else:
                from_attrs = []
        points.extend(from_attrs)
    if points:
        return points, ""
    return [], ("a point tag without usable x/y numbers" if found_tag else "no <point> tag in the answer")


def _in_range(points, lo_x, hi_x, lo_y, hi_y) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if lo_x <= x <= hi_x and lo_y <= y <= hi_y]


def parse_molmo(answer: str) -> TextPointParse:
    """Molmo's ``<point x="12.5" y="40.1" alt="...">...</point>`` / ``<points x1=.. y1=.. ...>``, percent."""
    if not isinstance(answer, str) or not answer.strip():
        return _fail("percent", "empty answer")
    points, reason = _xml_points(answer, "points?")
    if not points:
        return _fail("percent", reason)
    kept = _in_range(points, 0.0, 100.0, 0.0, 100.0)
    if not kept:
        return _fail("percent", f"every point is outside 0..100 percent: {points}")
    return TextPointParse(points=kept, parsed_ok=True, frame="percent")


def _json_candidates(answer: str) -> list[object]:
    """JSON values found in the answer: inside ```json fences first, then the first [..] or {..}."""
    texts = re.findall(r"```(?:json)?\s*(.*?)(?:```|$)", answer, re.DOTALL | re.IGNORECASE)
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = answer.find(opener), answer.rfind(closer)
        if 0 <= start < end:
            texts.append(answer[start : end + 1])
    values = []
    for text in texts:
        try:
            values.append(json.loads(text))
        except (json.JSONDecodeError, ValueError):
            continue
    return values


def _json_points(value: object) -> list[tuple[float, float]]:
    items = value if isinstance(value, list) else [value]
    points = []
    for item in items:
        if not isinstance(item, dict):
            continue
        coords = item.get("point_2d", item.get("point"))
        if coords is None and isinstance(item.get("bbox_2d"), list) and len(item["bbox_2d"]) == 4:
            box = [_to_float(v) for v in item["bbox_2d"]]  # a box instead of a point: use its centre
            if all(v is not None for v in box):
                coords = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
        if isinstance(coords, list) and len(coords) == 2:
            x, y = _to_float(coords[0]), _to_float(coords[1])
            if x is not None and y is not None:
                points.append((x, y))
    return points


def parse_qwen2_5_vl(answer: str, processed_size: tuple[int, int] | None = None) -> TextPointParse:
    """Qwen2.5-VL: XML ``<points x1="" y1="">`` / ``<point x y>`` or JSON ``[{"point_2d": [x, y]}]``.

    Coordinates are absolute pixels of the resized input; with ``processed_size`` (width, height)
    points outside it are rejected.
    """
    if not isinstance(answer, str) or not answer.strip():
        return _fail("processed_px", "empty answer")
    points: list[tuple[float, float]] = []
    for value in _json_candidates(answer):
        points = _json_points(value)
        if points:
            break
    reason = "no point_2d entry in the JSON answer"
    if not points:
        points, reason = _xml_points(answer, "points?")
    if not points:
        return _fail("processed_px", reason)
    if processed_size is not None:
        width, height = processed_size
        kept = _in_range(points, 0.0, float(width), 0.0, float(height))
        if not kept:
            return _fail("processed_px", f"every point is outside the {width}x{height} input: {points}")
        points = kept
    else:
        points = [(x, y) for x, y in points if x >= 0 and y >= 0]
        if not points:
            return _fail("processed_px", "negative pixel coordinates")
    return TextPointParse(points=points, parsed_ok=True, frame="processed_px")


def parse_llava(answer: str) -> TextPointParse:
    """LLaVA-1.5's ``Point: (x, y)`` normalised 0..1 (percent-like values read as percent, see module)."""
    if not isinstance(answer, str) or not answer.strip():
        return _fail("normalized", "empty answer")
    pair = r"[\(\[]\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*[\)\]]"
    matches = re.findall(r"point\s*:?\s*" + pair, answer, re.IGNORECASE) or re.findall(pair, answer, re.I)
    if not matches:
        return _fail("normalized", "no 'Point: (x, y)' in the answer")
    points = []
    for xs, ys in matches:
        x, y = _to_float(xs), _to_float(ys)
        if x is None or y is None:
            continue
        if (x > 1 or y > 1) and 0 <= x <= 100 and 0 <= y <= 100:
            x, y = x / 100.0, y / 100.0  # percent-like answer
        points.append((x, y))
    if not points:
        return _fail("normalized", "the point's numbers are not finite")
    kept = _in_range(points, 0.0, 1.0, 0.0, 1.0)
    if not kept:
        return _fail("normalized", f"every point is outside 0..1: {points}")
    return TextPointParse(points=kept, parsed_ok=True, frame="normalized")


_PAIR = r"\(\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*\)"  # "(x, y)"; groups: x, y
_QUAD = r"\[\s*" + r"\s*,\s*".join(["(" + _NUMBER + ")"] * 4) + r"\s*\]"  # "[a, b, c, d]"


def _finite(values: tuple[object, ...]) -> list[float] | None:
    """The numbers of one regex match (or JSON list), or None if any is not a finite number."""
    numbers = [_to_float(v) for v in values]
    finite = [v for v in numbers if v is not None]
    return finite if len(finite) == len(numbers) else None


def _per_mille_result(items: list[list[float]], reason: str) -> TextPointParse:
    """Points ``[x, y]`` and boxes ``[x1, y1, x2, y2]`` in 0..1000, in answer order -> a parse of the
    points and the box centres. A box counts only if every corner is in range (its centre can be
    inside when a corner is not); none found, or none in range -> a failed parse saying why."""
    if not items:
        return _fail("per_mille", reason)
    kept = [
        (item[0], item[1]) if len(item) == 2 else ((item[0] + item[2]) / 2.0, (item[1] + item[3]) / 2.0)
        for item in items
        if all(0.0 <= v <= 1000.0 for v in item)
    ]
    if not kept:
        return _fail("per_mille", f"every point or box is outside 0..1000: {items}")
    return TextPointParse(points=kept, parsed_ok=True, frame="per_mille")


def parse_qwen2_vl(answer: str) -> TextPointParse:
    """Qwen2-VL's ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (tags optional), 0..1000: the box centre;
    a bare ``(x,y)`` (not the first corner of a cut-off box) is a point."""
    if not isinstance(answer, str) or not answer.strip():
        return _fail("per_mille", "empty answer")
    found = re.findall(_PAIR + r"\s*,\s*" + _PAIR, answer, re.IGNORECASE)
    if not found:  # lone pairs; one followed by ",(" is a box cut off after its first corner
        found = re.findall(_PAIR + r"(?!\s*,\s*\()", answer, re.IGNORECASE)
    items = [numbers for numbers in map(_finite, found) if numbers is not None]
    return _per_mille_result(items, "no (x1,y1),(x2,y2) box or (x,y) point in the answer")


def _json_items(value: object) -> list[list[float]]:
    """``point_2d`` points and ``bbox_2d`` boxes of a JSON answer (a list of objects, or one object)."""
    items = []
    for entry in value if isinstance(value, list) else [value]:
        if not isinstance(entry, dict):
            continue
        for key, size in (("point_2d", 2), ("bbox_2d", 4)):
            coords = entry.get(key)
            if isinstance(coords, list) and len(coords) == size:
                numbers = _finite(tuple(coords))
                if numbers is not None:
                    items.append(numbers)
                    break
    return items


def parse_qwen3_vl(answer: str) -> TextPointParse:
    """Qwen3-VL's JSON ``[{"point_2d": [x, y]}]`` / ``bbox_2d`` (centre), 0..1000 of the given image.

    JSON cut off by the token limit still yields its complete ``point_2d`` / ``bbox_2d`` entries.
    """
    if not isinstance(answer, str) or not answer.strip():
        return _fail("per_mille", "empty answer")
    items: list[list[float]] = []
    for value in _json_candidates(answer):
        items = _json_items(value)
        if items:
            break
    if not items:  # not valid JSON (truncated, trailing prose inside the brackets): the entries alone
        for key, body in re.findall(r"[\"'](point_2d|bbox_2d)[\"']\s*:\s*\[([^\[\]]*)\]", answer):
            numbers = _finite(tuple(re.findall(_NUMBER, body, re.IGNORECASE)))
            if numbers is not None and len(numbers) == (2 if key == "point_2d" else 4):
                items.append(numbers)
    return _per_mille_result(items, "no point_2d or bbox_2d entry in the answer")


def parse_molmo2(answer: str) -> TextPointParse:
    """Molmo2's ``<points coords="IMG IDX X Y IDX X Y ..">`` (x, y 0..1000; module docstring), else
    Molmo's ``<point x= y=>`` percent attributes. A value cut off by the token limit keeps its
    complete triplets, not the last one (its number may be cut)."""
    if not isinstance(answer, str) or not answer.strip():
        return _fail("per_mille", "empty answer")
    values = re.findall(
        r"<\s*(?:points?|tracks)\b[^<>]*?\bcoords\s*=\s*[\"']([^\"'<>]*)([\"']?)", answer, re.IGNORECASE
    )
    if not values:
        return parse_molmo(answer)  # Molmo's attribute format
    items: list[list[float]] = []
    for value, closed in values:
        numbers = re.findall(r"\d+(?:\.\d+)?", value)
        if not closed and numbers:
            value = value[: value.rindex(numbers[-1])]  # the last number may be cut: drop it
        for group in re.split(r"[;\t:,]", value):  # one group per image: its index, then triplets
            triplets = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", group)][1:]
            items.extend([triplets[i + 1], triplets[i + 2]] for i in range(0, len(triplets) - 2, 3))
    return _per_mille_result(items, "a coords attribute without a complete (index, x, y) triplet")


def parse_internvl(answer: str) -> TextPointParse:
    """InternVL's ``<ref>..</ref><box>[[x1, y1, x2, y2]]</box>`` (tags optional), 0..1000: box centres."""
    if not isinstance(answer, str) or not answer.strip():
        return _fail("per_mille", "empty answer")
    items = [numbers for numbers in map(_finite, re.findall(_QUAD, answer, re.IGNORECASE)) if numbers]
    return _per_mille_result(items, "no [[x1, y1, x2, y2]] box in the answer")


def parse_answer(
    family: str, answer: str, *, processed_size: tuple[int, int] | None = None
) -> TextPointParse:
    """Parse ``answer`` in the format of ``family`` (a backbone family or a format name).

    ``processed_size``: the size of the image the model saw (only the ``processed_px`` format uses it).
    """
    fmt = format_of_family(family)
    if fmt == "qwen2_5_vl":
        return parse_qwen2_5_vl(answer, processed_size)
    return _PARSERS[fmt](answer)


_PARSERS = {
    "molmo": parse_molmo,
    "molmo2": parse_molmo2,
    "qwen2_vl": parse_qwen2_vl,
    "qwen3_vl": parse_qwen3_vl,
    "internvl": parse_internvl,
    "llava": parse_llava,
}


def to_original_pixels(parse: TextPointParse, grid: ImageGrid) -> list[tuple[float, float]]:
    """Map parsed points to ORIGINAL-image pixels (see the module docstring for each frame)."""
    width, height = grid.orig_size
    out = []
    for x, y in parse.points:
        if parse.frame == "percent":
            out.append((x / 100.0 * width, y / 100.0 * height))
        elif parse.frame == "per_mille":
            out.append((x / 1000.0 * width, y / 1000.0 * height))
        elif parse.frame == "normalized":
            out.append((x * width, y * height))
        elif parse.frame == "processed_px":
            cw, ch = grid.cell_size  # processed pixels -> continuous grid -> original pixels
            out.append(grid.grid_to_pixel(x / cw, y / ch))
        else:
            raise ValueError(f"unknown coordinate frame {parse.frame!r}")
    return out


def answer_to_pixels(
    fmt: str, answer: str, grid: ImageGrid
) -> tuple[TextPointParse, list[tuple[float, float]]]:
    """Parse an answer in format ``fmt`` (a backbone family or a format name) and map its points to
    ORIGINAL-image pixels: the one call the text method makes, whatever the family.

    ``grid``: the grid of the processor call that made the answer (pixels of the resized input go
    through it; fractions of the image are fractions of ``grid.orig_size``). Never raises on the
    answer (an unknown ``fmt`` is a ValueError); an unusable answer gives no points.
    """
    parse = parse_answer(fmt, answer, processed_size=grid.processed_size)
    return parse, to_original_pixels(parse, grid)
