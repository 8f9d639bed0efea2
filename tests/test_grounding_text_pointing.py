"""Text-pointing prompts and answer parsers on real-looking model answers."""

from __future__ import annotations

import math

import pytest

from part_point_ros.grounding.text_pointing import (
    parse_answer,
    parse_llava,
    parse_molmo,
    parse_qwen2_5_vl,
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
