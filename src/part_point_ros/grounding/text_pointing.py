"""Text-pointing baseline: the Figure-5 prompts of seed 000 and parsers for what models answer.

Each family has a direct prompt (PACO: ``part`` + ``object``) and a reasoning prompt (InstructPart,
Point-Bench: a free-form instruction). The prompt strings below are verbatim from seed 000 Fig. 5.

Parsers never raise on model output: they return a ``TextPointParse`` with ``parsed_ok`` False and
a ``reason`` when the answer holds no usable point (prose, no numbers, NaN, out of range, truncated
XML). Points are returned in the coordinate frame the family writes:

- Molmo: ``percent`` of the image width / height (0..100).
- Qwen2.5-VL: ``processed_px``, absolute pixels of the RESIZED image the vision encoder saw.
- LLaVA-1.5: ``normalized`` 0..1. LLaVA often writes numbers above 1 anyway; the rule here is: if
  any coordinate of a point is > 1 and all are <= 100, the point is read as percent (divided by 100);
  anything else outside [0, 1] is out of range.

``to_original_pixels`` maps them to ORIGINAL-image pixels. Qwen goes through the ``ImageGrid``
(processed pixels -> original, undoing resize / pad / crop). Molmo and LLaVA are normalised to the
ORIGINAL image size: the prompt speaks of "the image axes" and the user sees the original image, so
(0, 0) and (1, 1) are the original image's corners, not those of LLaVA's processed square.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from part_point_ros.types import ImageGrid

FAMILIES = ("molmo", "qwen2_5_vl", "llava")
PROMPT_MODES = ("auto", "direct", "reasoning")

_LLAVA_TAIL = (
    "This 2D point is represented as a (x, y) tuple, where x is the horizontal image axis, y is the "
    "vertical image axis, and the origin is at the top-left corner. The range of these x - y "
    "coordinates is normalized as integers between 0 and 1. Follow this output format: Point: (x, y)."
)

# Seed 000, Figure 5, verbatim (as Python format strings).
DIRECT_PROMPTS: dict[str, str] = {
    "molmo": "Point to the {part} of the {object}.",
    "qwen2_5_vl": (
        "Point to the {part} of the {object} in the image, output its coordinates in XML format "
        "<points x y>object</points>."
    ),
    "llava": "Please provide a single 2D point pointing at the {part} of the {object} in the image. "
    + _LLAVA_TAIL,
}
REASONING_PROMPTS: dict[str, str] = {
    "molmo": "{long_instruction}. Please provide a single 2D point pointing at it.",
    "qwen2_5_vl": (
        "{long_instruction}. Please point to it and output its coordinates in XML format "
        "<points x y>object</points>."
    ),
    "llava": "{long_instruction}. Please provide a single 2D point pointing at it in the image. "
    + _LLAVA_TAIL,
}

# "the handle of the mug" -> part "handle", object "mug" (used by prompt mode "auto").
_PART_OF_OBJECT = re.compile(
    r"^\s*(?:the\s+|a\s+|an\s+)?(?P<part>[\w\s'-]+?)\s+of\s+(?:the\s+|a\s+|an\s+)?(?P<object>[\w\s'-]+?)"
    r"\s*\.?\s*$",
    re.IGNORECASE,
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"no text-pointing prompt for family {family!r}; use one of {', '.join(FAMILIES)}")


def text_prompt(
    family: str,
    query: str,
    *,
    mode: str = "auto",
    part: str | None = None,
    object_name: str | None = None,
) -> str:
    """The Figure-5 prompt of ``family`` for ``query``.

    ``mode="direct"`` needs ``part`` and ``object_name`` (or a query of the form "the P of the O");
    ``"reasoning"`` puts the query in as the Long_instruction; ``"auto"`` is direct when the parts
    are given or the query has that form, else reasoning. One trailing period of the query is dropped
    so the template's ". Please ..." does not double it.
    """
    _check_family(family)
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
        return DIRECT_PROMPTS[family].format(part=part, object=object_name)
    instruction = query.strip()
    if instruction.endswith("."):
        instruction = instruction[:-1]
    return REASONING_PROMPTS[family].format(long_instruction=instruction)


@dataclass
class TextPointParse:
    """What a parser found: points in ``frame`` units, and whether the answer was usable."""

    points: list[tuple[float, float]] = field(default_factory=list)
    parsed_ok: bool = False
    frame: str = ""  # "percent" | "processed_px" | "normalized"
    reason: str = ""  # why parsing failed ("" when parsed_ok)

    @property
    def point(self) -> tuple[float, float] | None:
        """The first point, or None."""
        return self.points[0] if self.points else None


def _fail(frame: str, reason: str) -> TextPointParse:
    return TextPointParse(points=[], parsed_ok=False, frame=frame, reason=reason)


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
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


def parse_answer(
    family: str, answer: str, *, processed_size: tuple[int, int] | None = None
) -> TextPointParse:
    """Dispatch to the family's parser."""
    _check_family(family)
    if family == "molmo":
        return parse_molmo(answer)
    if family == "qwen2_5_vl":
        return parse_qwen2_5_vl(answer, processed_size)
    return parse_llava(answer)


def to_original_pixels(parse: TextPointParse, grid: ImageGrid) -> list[tuple[float, float]]:
    """Map parsed points to ORIGINAL-image pixels (see the module docstring for each frame)."""
    width, height = grid.orig_size
    out = []
    for x, y in parse.points:
        if parse.frame == "percent":
            out.append((x / 100.0 * width, y / 100.0 * height))
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
    """Parse an answer in format ``fmt`` and map its points to ORIGINAL-image pixels: the one call
    the text method makes (``grid``: the grid of the processor call that made the answer)."""
    parse = parse_answer(fmt, answer, processed_size=grid.processed_size)
    if parse.frame == "processed_px":
        return parse, to_original_pixels(parse, grid)
    width, height = grid.orig_size  # normalised / percent formats speak of the original image
    return parse, to_original_pixels(
        parse, ImageGrid(1, 1, (width, height), (width, height), (1.0, 1.0), (0.0, 0.0))
    )
