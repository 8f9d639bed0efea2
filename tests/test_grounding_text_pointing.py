"""Text-pointing prompts and answer parsers on real-looking model answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from part_point_ros.grounding.text_pointing import (
    FAMILIES,
    FORMATS,
    answer_to_pixels,
    format_of_family,
    parse_answer,
    parse_internvl,
    parse_llava,
    parse_molmo,
    parse_molmo2,
    parse_qwen2_5_vl,
    parse_qwen2_vl,
    parse_qwen3_vl,
    text_prompt,
    to_original_pixels,
)
from part_point_ros.types import ImageGrid


# ---------------------------------------------------------------------------- prompts
def test_direct_prompts_are_figure5_verbatim():
    assert text_prompt("molmo", "the handle of the mug") == "Point to the handle of the mug."
    assert text_prompt("qwen2_5_vl", "The spout of a kettle.") == (
        "Point to the spout of the kettle in the image, output its coordinates in XML format "
        "<points x y>object</points>."
    )
    llava = text_prompt("llava", "x", mode="direct", part="blade", object_name="knife")
    assert llava.startswith(
        "Please provide a single 2D point pointing at the blade of the knife in the image. "
    )
    assert llava.endswith(
        "The range of these x - y coordinates is normalized as integers between 0 and 1. "
        "Follow this output format: Point: (x, y)."
    )


def test_reasoning_prompts_use_the_instruction():
    query = "If I want to pick up the knife, which part in the picture can be used?"
    assert text_prompt("molmo", query) == query + ". Please provide a single 2D point pointing at it."
    qwen = text_prompt("qwen2_5_vl", "Where would you hold it.", mode="reasoning")
    assert qwen == (
        "Where would you hold it. Please point to it and output its coordinates in XML format "
        "<points x y>object</points>."
    )
    # explicit reasoning mode wins over the "the P of the O" form
    assert text_prompt("llava", "the handle of the mug", mode="reasoning").startswith(
        "the handle of the mug. Please provide a single 2D point pointing at it in the image."
    )


def test_prompt_errors():
    with pytest.raises(ValueError, match="family"):
        text_prompt("gpt", "the handle of the mug")
    with pytest.raises(ValueError, match="direct prompt"):
        text_prompt("molmo", "where do I hold it", mode="direct")


# ---------------------------------------------------------------------------- Molmo
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (' <point x="61.5" y="40.2" alt="handle of the mug">handle of the mug</point>', [(61.5, 40.2)]),
        (
            '<points x1="10.0" y1="20.5" x2="30" y2="40" alt="legs">legs</points>',
            [(10.0, 20.5), (30.0, 40.0)],
        ),
        ("Sure! <point x='5' y='95'>it</point>", [(5.0, 95.0)]),
    ],
)
def test_molmo_formats(answer, expected):
    parse = parse_molmo(answer)
    assert parse.parsed_ok and parse.frame == "percent"
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The handle is on the right side of the mug.",
        '<point x="nan" y="40">handle</point>',
        '<point x="150" y="40">handle</point>',
        '<point x="61.5" y="4',  # truncated generation
        "<point>handle</point>",
    ],
)
def test_molmo_malformed_fails_cleanly(answer):
    parse = parse_molmo(answer)
    assert not parse.parsed_ok and parse.points == [] and parse.reason


# ---------------------------------------------------------------------------- Qwen2.5-VL
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('<points x1="312" y1="205" alt="handle">handle</points>', [(312.0, 205.0)]),
        ("<points x=312 y=205>handle of the mug</points>", [(312.0, 205.0)]),
        ("<points 312 205>handle</points>", [(312.0, 205.0)]),
        ('<point x="10" y="20">a</point> and <point x="30" y="40">b</point>', [(10.0, 20.0), (30.0, 40.0)]),
        ('```json\n[\n  {"point_2d": [312, 205], "label": "handle"}\n]\n```', [(312.0, 205.0)]),
        (
            '[{"point_2d": [100.5, 50], "label": "spout"}, {"point_2d": [10, 20]}]',
            [(100.5, 50.0), (10.0, 20.0)],
        ),
        ('```json\n{"bbox_2d": [100, 100, 200, 300], "label": "lid"}\n```', [(150.0, 200.0)]),
    ],
)
def test_qwen_formats(answer, expected):
    parse = parse_qwen2_5_vl(answer, processed_size=(644, 476))
    assert parse.parsed_ok and parse.frame == "processed_px"
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    [
        "I cannot see a mug in this image.",
        '```json\n[{"point_2d": [312, ',  # truncated JSON, no XML either
        '<points x1="700" y1="205">handle</points>',  # outside the 644 px wide input
        '<points x1="312" y1="-4">handle</points>',
        '[{"label": "handle"}]',
        "<points x1=",
    ],
)
def test_qwen_malformed_fails_cleanly(answer):
    parse = parse_qwen2_5_vl(answer, processed_size=(644, 476))
    assert not parse.parsed_ok and parse.points == []


# ---------------------------------------------------------------------------- LLaVA-1.5
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Point: (0.45, 0.62)", (0.45, 0.62)),
        ("The handle is here. Point: (0.7,0.3).", (0.7, 0.3)),
        ("point: [0.1, 0.9]", (0.1, 0.9)),
        ("(0.25, 0.75)", (0.25, 0.75)),
        ("Point: (45, 62)", (0.45, 0.62)),  # percent-like values are read as percent
        ("Point: (1, 0)", (1.0, 0.0)),
    ],
)
def test_llava_formats(answer, expected):
    parse = parse_llava(answer)
    assert parse.parsed_ok and parse.frame == "normalized"
    assert parse.points[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer",
    [
        "The handle of the mug.",
        "Point: (x, y)",
        "Point: (450, 620)",
        "Point: (-0.2, 0.5)",
        "Point: (0.45,",
        "",
    ],
)
def test_llava_malformed_fails_cleanly(answer):
    parse = parse_llava(answer)
    assert not parse.parsed_ok and parse.points == []


def test_parsers_never_raise_on_junk():
    junk = [
        "\x00\x01",
        "<<<>>>",
        "{[}]",
        "```json",
        "x=1e999 y=2",
        "<points x1='inf' y1='1'>",
        "Point: (nan, nan)",
    ]
    for family in ("molmo", "qwen2_5_vl", "llava"):
        for answer in junk:
            assert parse_answer(family, answer).parsed_ok in (True, False)
    assert not parse_llava("Point: (nan, nan)").parsed_ok


# ---------------------------------------------------------------------------- to original pixels
def test_mapping_to_original_pixels():
    # Qwen-like: 640x480 resized to 644x476 (no pad); 23x17 tokens of 28 px
    grid = ImageGrid(17, 23, (640, 480), (644, 476), (644 / 640, 476 / 480), (0.0, 0.0))
    (x, y) = to_original_pixels(parse_qwen2_5_vl("<points 322 238>c</points>", (644, 476)), grid)[0]
    assert (x, y) == pytest.approx((320.0, 240.0))
    (x, y) = to_original_pixels(parse_llava("Point: (0.25, 0.5)"), grid)[0]
    assert (x, y) == pytest.approx((160.0, 240.0))
    (x, y) = to_original_pixels(parse_molmo('<point x="50" y="25">a</point>'), grid)[0]
    assert (x, y) == pytest.approx((320.0, 120.0))
    assert math.isfinite(x)


# ---------------------------------------------------------------------------- every family has a format
def test_every_family_resolves_to_a_format():
    for family in ("llava_next", "llava_onevision", "smolvlm", "gemma3"):  # no native pointing output
        assert format_of_family(family) == "llava"
        assert text_prompt(family, "the handle of the mug") == text_prompt("llava", "the handle of the mug")
    for fmt in FORMATS:
        assert format_of_family(fmt) == fmt and fmt in FAMILIES
        for mode in ("direct", "reasoning"):
            prompt = text_prompt(fmt, "the handle of the mug", mode=mode)
            assert "{" + "part" not in prompt and "long_instruction" not in prompt
    with pytest.raises(ValueError, match="no text-pointing format for family 'gpt'"):
        answer_to_pixels("gpt", "Point: (0.5, 0.5)", ImageGrid(1, 1, (10, 10), (10, 10), (1, 1), (0, 0)))


def test_every_registered_backbone_family_has_a_format():
    """An adapter added to the registry without a pointing format would break the text method."""
    from part_point_ros.backbones.registry import ADAPTERS

    for adapter in ADAPTERS:
        assert adapter.family in FAMILIES, f"{adapter.__name__}: add {adapter.family!r} to FORMAT_OF_FAMILY"


def test_native_prompts_of_the_new_formats():
    assert text_prompt("molmo2", "the spout of the kettle") == "Point to the spout of the kettle."
    assert text_prompt("qwen2_vl", "the lid of the pan") == (
        "Output the bounding box of the lid of the pan in the image."
    )
    qwen3 = text_prompt("qwen3_vl", "the handle of the mug")
    assert qwen3.endswith('in JSON format: [{"point_2d": [x, y], "label": "handle"}].')
    assert text_prompt("internvl", "the blade of the knife") == (
        "Please provide the bounding box coordinate of the region this sentence describes: "
        "<ref>the blade of the knife</ref>"
    )
    assert text_prompt("internvl", "Where would you hold it.", mode="reasoning").endswith(
        "<ref>Where would you hold it</ref>"
    )


# ---------------------------------------------------------------------------- Qwen2-VL
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "<|object_ref_start|>the handle<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
            [(200.0, 300.0)],
        ),
        ("the handle(100,200),(300,400)", [(200.0, 300.0)]),  # tags stripped by decoding
        ("(10, 20), (30, 40) and (500,600),(700,800)", [(20.0, 30.0), (600.0, 700.0)]),
        ("The handle is at (512, 256).", [(512.0, 256.0)]),  # a bare point
        ("(0,0),(1000,1000)", [(500.0, 500.0)]),
    ],
)
def test_qwen2_vl_formats(answer, expected):
    parse = parse_qwen2_vl(answer)
    assert parse.parsed_ok and parse.frame == "per_mille"
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The handle is on the left.",
        "(100,200),(300,",  # cut off after the first corner: not a point
        "(100,200),(1300,400)",  # a corner outside 0..1000
        "(nan,200),(300,400)",
        "(-5, 10)",
    ],
)
def test_qwen2_vl_malformed_fails_cleanly(answer):
    parse = parse_qwen2_vl(answer)
    assert not parse.parsed_ok and parse.points == [] and parse.reason


# ---------------------------------------------------------------------------- Qwen3-VL
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('```json\n[\n\t{"point_2d": [250, 750], "label": "handle"}\n]\n```', [(250.0, 750.0)]),
        ('[{"bbox_2d": [100, 200, 300, 400], "label": "lid"}]', [(200.0, 300.0)]),
        ('[{"point_2d": [10, 20]}, {"point_2d": [30.5, 40]}]', [(10.0, 20.0), (30.5, 40.0)]),
        ('{"point_2d": [0, 1000], "label": "tip"}', [(0.0, 1000.0)]),
        # cut off by the token limit: the complete entry still counts
        ('```json\n[{"point_2d": [250, 750], "label": "handle"}, {"point_2d": [1', [(250.0, 750.0)]),
    ],
)
def test_qwen3_vl_formats(answer, expected):
    parse = parse_qwen3_vl(answer)
    assert parse.parsed_ok and parse.frame == "per_mille"
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I cannot see a mug in this image.",
        '[{"point_2d": [1200, 30], "label": "handle"}]',
        '[{"bbox_2d": [100, 200, 1300, 400]}]',  # centre inside, corner outside
        '[{"label": "handle"}]',
        '[{"point_2d": [nan, 3]}]',
        '[{"point_2d": [100]}]',
        '```json\n[{"point_2d": [25',
    ],
)
def test_qwen3_vl_malformed_fails_cleanly(answer):
    parse = parse_qwen3_vl(answer)
    assert not parse.parsed_ok and parse.points == [] and parse.reason


# ---------------------------------------------------------------------------- Molmo2
@pytest.mark.parametrize(
    ("answer", "expected", "frame"),
    [
        (
            'Counting the <points coords="1 1 073 160 2 173 600" alt="boats">the boats</points> shows 2.',
            [(73.0, 160.0), (173.0, 600.0)],
            "per_mille",
        ),
        ('<point coords="1 1 500 250">handle</point>', [(500.0, 250.0)], "per_mille"),
        ("<points coords='1 1 500 250'/>", [(500.0, 250.0)], "per_mille"),
        ('<points coords="1 1 500 250 2 600 7', [(500.0, 250.0)], "per_mille"),  # cut off: last dropped
        ('<point x="61.5" y="40.2" alt="handle">handle</point>', [(61.5, 40.2)], "percent"),  # Molmo's
    ],
)
def test_molmo2_formats(answer, expected, frame):
    parse = parse_molmo2(answer)
    assert parse.parsed_ok and parse.frame == frame
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "There are none.",
        '<points coords="1">handle</points>',
        '<points coords="1 1 1500 250">handle</points>',
        '<points coords="1 1 500',
        "<points>handle</points>",
    ],
)
def test_molmo2_malformed_fails_cleanly(answer):
    parse = parse_molmo2(answer)
    assert not parse.parsed_ok and parse.points == [] and parse.reason


# ---------------------------------------------------------------------------- InternVL
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("<ref>the handle</ref><box>[[100, 200, 300, 400]]</box>", [(200.0, 300.0)]),
        ("the handle[[100, 200, 300, 400]]", [(200.0, 300.0)]),  # tags stripped by decoding
        ("<box>[[0, 0, 1000, 1000], [10, 20, 30, 40]]</box>", [(500.0, 500.0), (20.0, 30.0)]),
    ],
)
def test_internvl_formats(answer, expected):
    parse = parse_internvl(answer)
    assert parse.parsed_ok and parse.frame == "per_mille"
    assert parse.points == expected


@pytest.mark.parametrize(
    "answer",
    ["", "It is the handle.", "<box>[[100, 200, 300", "<box>[[100, 200]]</box>", "[[100, 200, 1300, 400]]"],
)
def test_internvl_malformed_fails_cleanly(answer):
    parse = parse_internvl(answer)
    assert not parse.parsed_ok and parse.points == [] and parse.reason


def test_every_format_never_raises_on_junk():
    junk = ["\x00\x01", "<<<>>>", "{[}]", "```json", "x=1e999 y=2", "(1e999, 2)", "[[inf, 1, 2, 3]]", None]
    junk += ['<points coords="">', '<points coords="a b c">', '[{"point_2d": "12"}]', '{"bbox_2d": [1, 2]}']
    grid = ImageGrid(17, 23, (640, 480), (644, 476), (644 / 640, 476 / 480), (0.0, 0.0))
    for family in FAMILIES:
        for answer in junk:
            parse, pixels = answer_to_pixels(family, answer, grid)
            assert parse.parsed_ok == bool(pixels)


# ---------------------------------------------------------------------------- answers to original pixels
# Qwen-like resize: 640x480 -> 644x476 (no pad); and a padded square (LLaVA-like): 400x200 -> 336x336
RESIZED = ImageGrid(17, 23, (640, 480), (644, 476), (644 / 640, 476 / 480), (0.0, 0.0))
PADDED = ImageGrid(24, 24, (400, 200), (336, 336), (0.84, 0.84), (0.0, 84.0))


@pytest.mark.parametrize(
    ("family", "answer", "grid", "expected"),
    [
        ("qwen2_5_vl", "<points 322 238>c</points>", RESIZED, (320.0, 240.0)),  # resized pixels
        ("qwen3_vl", '[{"point_2d": [250, 500]}]', RESIZED, (160.0, 240.0)),  # 0..1000 of the original
        ("qwen2_vl", "(200,400),(300,600)", RESIZED, (160.0, 240.0)),
        # fractions of the original 400x200, not of the padded square (which would give y = 0)
        ("internvl", "<box>[[0, 0, 500, 500]]</box>", PADDED, (100.0, 50.0)),
        ("molmo2", '<points coords="1 1 250 250">x</points>', PADDED, (100.0, 50.0)),
        ("molmo", '<point x="50" y="25">a</point>', RESIZED, (320.0, 120.0)),
        ("llava", "Point: (0.25, 0.25)", PADDED, (100.0, 50.0)),
        ("gemma3", "Point: (0.25, 0.5)", RESIZED, (160.0, 240.0)),
        ("llava_onevision", "Point: (0.5, 1)", PADDED, (200.0, 200.0)),
    ],
)
def test_answer_to_pixels_gives_original_pixels(family, answer, grid, expected):
    parse, pixels = answer_to_pixels(family, answer, grid)
    assert parse.parsed_ok, parse.reason
    assert pixels[0] == pytest.approx(expected)
    assert pixels == to_original_pixels(parse, grid)


def test_answer_to_pixels_of_an_unusable_answer_is_empty():
    parse, pixels = answer_to_pixels("qwen3_vl", '[{"point_2d": [1200, 30]}]', RESIZED)
    assert not parse.parsed_ok and pixels == [] and "outside" in parse.reason
    parse, pixels = answer_to_pixels("qwen2_5_vl", "<points 700 10>c</points>", RESIZED)  # off the input
    assert not parse.parsed_ok and pixels == []


# smart_resize(170, 300, 32): (160, 288) fits 48*32*32; under 20*32*32 it shrinks to (96, 160)
@pytest.mark.parametrize(("max_pixels", "resized"), [(48 * 32 * 32, (288, 160)), (20 * 32 * 32, (160, 96))])
def test_qwen3_vl_answer_maps_through_the_real_processor_resize(tmp_path, max_pixels, resized):
    """Qwen3-VL writes 0..1000 of the image it was given: the answer lands on the original pixel it
    names, whatever size the processor resized to, and that pixel is in the grid cell whose processed
    pixels hold what was painted there."""
    from tiny_qwen_vl import build_tiny_qwen3_vl, processed_image

    from part_point_ros.backbones.registry import load_backbone

    adapter = load_backbone(str(build_tiny_qwen3_vl(tmp_path / "q3", max_pixels=max_pixels)))
    w, h = 300, 170
    x0, y0 = 222, 51
    image = np.full((h, w, 3), (40, 160, 90), np.uint8)
    image[y0 - 1 : y0 + 2, x0 - 1 : x0 + 2] = (250, 20, 20)  # a 3x3 px marker around (x0, y0)
    inputs, grid = adapter.prepare(image, adapter.build_prompt("x"))
    assert grid.processed_size == resized
    assert grid.scale[0] != pytest.approx(grid.scale[1], abs=1e-3)  # the aspect ratio changed
    answer = f'```json\n[{{"point_2d": [{x0 / w * 1000:.0f}, {y0 / h * 1000:.0f}], "label": "marker"}}]\n```'
    parse, pixels = answer_to_pixels(adapter.pointing_format, answer, grid)
    assert parse.parsed_ok and len(pixels) == 1
    x, y = pixels[0]
    assert abs(x - x0) < 0.5 and abs(y - y0) < 0.5  # 1/1000 of 300 px is 0.3 px
    # the processor put the marker in the cell the grid says sees (x, y)
    img = processed_image(adapter, inputs)
    off = np.abs(img - np.array([40, 160, 90]) / 255.0).sum(axis=-1)  # (ph, pw)
    py, px = np.unravel_index(np.argmax(off), off.shape)
    cw, ch = grid.cell_size
    assert grid.tokens_seeing(x, y).tolist() == [int(py // ch) * grid.cols + int(px // cw)]
