"""``PartPointer.point_many`` and the same-frame prefix: the points of one uncached ``point`` per query."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from part_point_ros.backbones.registry import load_backbone
from part_point_ros.errors import InputError
from part_point_ros.grounding import PartPointer
from part_point_ros.heads import HeadConfig, PartPointHead
from part_point_ros.types import HeadRef

HEADS = [HeadRef(1, 0), HeadRef(2, 3), HeadRef(2, 1)]
QUERIES = ("the handle of the mug", "the lid", "where is the blade of the knife on the left", "the rim")


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl"])
def backbone(request, tiny_llava_dir, tiny_qwen_dir):
    path = tiny_llava_dir if request.param == "llava" else tiny_qwen_dir
    return load_backbone(str(path), max_layer=2)


@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8) for _ in range(2))  # wide


def make_pointer(backbone, method: str, **options) -> PartPointer:
    """An a2p pointer with a fresh (untrained, seeded) head, or an attention pointer, on ``HEADS``."""
    if method == "attention":
        return PartPointer(backbone=backbone, method="attention", heads=HEADS, **options)
    torch.manual_seed(0)
    config = HeadConfig(
        backbone=asdict(backbone.info),
        heads=[(h.layer, h.head) for h in HEADS],
        d_head=backbone.info.head_dim,
        d_fused=32,
        norm_groups=8,
    )
    return PartPointer(backbone=backbone, method="a2p", head=PartPointHead(config).eval(), **options)


def assert_same_points(got, want) -> None:
    """Identical points: the same peak cells, hence the same points (a2p's sub-pixel refinement to 1e-3
    px, attention's cell centres exactly); maps and scores equal to float32 rounding."""
    assert (got.query, got.method, got.found) == (want.query, want.method, want.found)
    assert (got.grid, got.upscale) == (want.grid, want.upscale)
    assert np.argmax(got.heatmap) == np.argmax(want.heatmap)
    np.testing.assert_allclose(got.heatmap, want.heatmap, rtol=1e-3, atol=1e-7)
    assert len(got.points) == len(want.points)
    exact = 0.0 if want.method == "attention" else 1e-3
    for (x, y, score), (wx, wy, wscore) in zip(got.points, want.points, strict=True):
        assert (x, y) == pytest.approx((wx, wy), abs=exact)
        assert score == pytest.approx(wscore, abs=1e-5)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one_by_one"])
@pytest.mark.parametrize("method", ["a2p", "attention"])
def test_point_many_gives_the_points_of_point_per_query(backbone, frames, method, batch):
    image = frames[0]
    uncached = make_pointer(backbone, method, reuse_prefix=False)
    expected = [uncached.point(image, query) for query in QUERIES]
    pointer = make_pointer(backbone, method, batch_queries=batch)
    results = pointer.point_many(image, list(QUERIES))
    assert len(results) == len(QUERIES)
    for got, want in zip(results, expected, strict=True):
        assert_same_points(got, want)
    assert len({r.latency_ms for r in results}) == 1 and results[0].latency_ms > 0  # the whole call's
    # a later point() on the same frame runs only its suffix, with the same point
    assert_same_points(pointer.point(image.copy(), QUERIES[2]), expected[2])


def test_same_frame_reuses_the_prefix_and_a_new_frame_replaces_it(backbone, frames, monkeypatch):
    first, second = frames
    calls = {"capture_many": 0, "capture_after_prefix": 0}
    for name in calls:
        original = getattr(backbone, name)

        def spy(*args, name=name, original=original, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(backbone, name, spy)
    uncached = make_pointer(backbone, "a2p", reuse_prefix=False)
    pointer = make_pointer(backbone, "a2p")

    def check(image, query, *, prefilled: int, suffixes: int) -> None:
        assert_same_points(pointer.point(image, query), uncached.point(image, query))
        assert (calls["capture_many"], calls["capture_after_prefix"]) == (prefilled, suffixes)
        assert pointer.frame.holds(image.copy())

    frame = first.copy()
    check(frame, QUERIES[0], prefilled=1, suffixes=0)  # a new frame: its first query leaves the prefix
    check(first.copy(), QUERIES[1], prefilled=1, suffixes=1)  # the same pixels in another array: reused
    frame[:] = second  # the camera buffer refilled in place: a new frame
    check(frame, QUERIES[1], prefilled=2, suffixes=1)
    check(second, QUERIES[3], prefilled=2, suffixes=2)
    check(first, QUERIES[0], prefilled=3, suffixes=2)  # one frame is kept: the second one replaced it
    pointer.frame.clear()
    assert pointer.frame.empty and not pointer.frame.holds(first)
    check(first, QUERIES[2], prefilled=4, suffixes=2)


def test_point_many_with_text_pointing_is_a_loop_of_point(tiny_llava_dir, frames):
    pointer = PartPointer.from_pretrained(backbone=str(tiny_llava_dir), method="text", max_new_tokens=4)
    results = pointer.point_many(frames[0], list(QUERIES[:2]))
    expected = [pointer.point(frames[0], query) for query in QUERIES[:2]]
    assert [(r.query, r.text, r.found) for r in results] == [(r.query, r.text, r.found) for r in expected]


@pytest.mark.parametrize(
    ("queries", "message"),
    [("the lid", "takes a list of queries"), ([], "at least one query"), (["the lid", "  "], "empty")],
)
def test_point_many_refuses_bad_queries(backbone, frames, queries, message):
    with pytest.raises(InputError, match=message):
        make_pointer(backbone, "attention").point_many(frames[0], queries)


def test_many_queries_run_max_batch_at_a_time_with_the_same_points(backbone, frames, monkeypatch):
    """Each batched row holds its own copy of the prefix's KV cache: a long list of queries runs in
    chunks of ``max_batch``, the first chunk prefilling the frame, the others reusing it."""
    image = frames[0]
    queries = list(QUERIES) + [f"the part number {i}" for i in range(3)]  # 7 queries
    uncached = make_pointer(backbone, "attention", reuse_prefix=False)
    expected = [uncached.point(image, query) for query in queries]
    pointer = make_pointer(backbone, "attention", max_batch=3)
    sizes = {"capture_many": [], "capture_after_prefix": []}
    for name in sizes:
        original = getattr(backbone, name)

        def spy(image_or_prefix, batch_queries, *args, name=name, original=original, **kwargs):
            sizes[name].append(len(batch_queries))
            return original(image_or_prefix, batch_queries, *args, **kwargs)

        monkeypatch.setattr(backbone, name, spy)
    results = pointer.point_many(image, queries)
    # capture_many prefills with the chunk's first query and runs the other 2 as suffixes itself
    assert sizes == {"capture_many": [3], "capture_after_prefix": [2, 3, 1]}
    for got, want in zip(results, expected, strict=True):
        assert_same_points(got, want)
    with pytest.raises(InputError, match="max_batch must be an integer >= 1"):
        make_pointer(backbone, "attention", max_batch=0)
