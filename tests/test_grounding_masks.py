"""``PartMasker`` on tiny random SAM checkpoints built from the real transformers config classes, saved
with save_pretrained and loaded through from_pretrained (no mocks: hooks on the real modules count
and read what reaches them).

Random weights give meaningless masks, so these tests check the plumbing that real weights rely on:
the points reach the prompt encoder in the processor's frame, the mask comes back at the original
size (non-square images), equals the processor's own reference pipeline, and the vision encoder
runs once per frame.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sam_helpers import SIDE, build_tiny_sam, build_tiny_sam2

from part_point_ros.errors import CheckpointError, InputError, MissingDependencyError
from part_point_ros.grounding.masks import (
    LENS_MAX_KEYPOINTS,
    PartMasker,
    prompts_from_result,
)
from part_point_ros.grounding.result import PointResult


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory):
    return build_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture
def masker(tiny_sam_dir):
    return PartMasker.from_pretrained(tiny_sam_dir)


def rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def capture_prompts(model):
    """What the real prompt encoder receives: a list of (input_points, input_labels) per call."""
    seen = []

    def hook(_module, args, kwargs):
        seen.append((kwargs["input_points"].detach().clone(), kwargs["input_labels"].detach().clone()))

    model.prompt_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def reference_mask(masker, image, points, labels, multimask):
    """The processor's own pipeline: processor(points) -> model(pixel_values) -> post_process_masks,
    the highest predicted IoU. The (H, W) mask, its score and its index."""
    processor = masker.processor
    inputs = processor(
        images=image, input_points=[points.tolist()], input_labels=[labels.tolist()], return_tensors="pt"
    )
    with torch.no_grad():
        out = masker.model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
            multimask_output=multimask,
        )
    masks = processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    index = int(out.iou_scores[0, 0].argmax())
    return masks[0][0, index].numpy(), float(out.iou_scores[0, 0, index]), index, inputs["input_points"]


@pytest.mark.parametrize(
    ("height", "width", "points", "labels"),
    [
        (48, 80, [[10.4, 20.7]], [1]),  # landscape, one point: 3 masks, best predicted IoU
        (90, 40, [[3.0, 85.2], [30.5, 10.0], [20.0, 44.4]], [1, 0, 1]),  # portrait, several points
        (37, 101, [[100.4, 36.4], [0.0, 0.0]], [1, 1]),  # the far corner pixels
    ],
)
def test_mask_is_the_processors_own_mask_at_the_original_size(masker, height, width, points, labels):
    image = rgb(height, width)
    pts, labs = np.array(points), np.array(labels)
    seen = capture_prompts(masker.model)
    result = masker.mask(image, pts, labs)
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    assert result.mono8.dtype == np.uint8 and set(np.unique(result.mono8)) <= {0, 255}
    assert result.multimask == (len(pts) == 1)

    ref, ref_score, ref_index, ref_points = reference_mask(masker, image, pts, labs, result.multimask)
    assert 0 < ref.sum() < ref.size, "precondition: the random model's mask is not trivially empty or full"
    assert result.index == ref_index and result.score == pytest.approx(ref_score, abs=1e-5)
    assert (result.mask != ref).mean() < 1e-3  # float32 vs float64 points may flip a pixel on the 0 logit
    # the points that reached the prompt encoder are the processor's mapping of ours
    model_points, model_labels = seen[0]
    np.testing.assert_allclose(model_points.double().numpy(), ref_points.numpy(), atol=1e-4)
    np.testing.assert_array_equal(model_labels.numpy(), [[labs]])


def test_points_map_into_the_resized_frame_like_the_processor_does(masker):
    """x * w'/W, y * h'/H with (h', w') the processor's reshaped_input_sizes (longest side -> 64)."""
    height, width = 30, 100
    image = rgb(height, width)
    pts = np.array([[0.0, 0.0], [99.4, 29.4], [50.25, 14.75]])
    inputs = masker.processor(images=image, input_points=[pts.tolist()], return_tensors="pt")
    new_h, new_w = (int(s) for s in inputs["reshaped_input_sizes"][0])
    assert (new_h, new_w) == (19, SIDE)  # 30 * 64 / 100 = 19.2 -> 19
    mapped = masker.to_model_frame(pts, (height, width), (new_h, new_w))
    np.testing.assert_allclose(mapped, inputs["input_points"][0, 0].numpy(), atol=1e-9)
    np.testing.assert_allclose(mapped[1], [99.4 * 0.64, 29.4 * 19 / 30])


def test_image_embeddings_are_computed_once_per_frame_and_only_the_latest_is_kept(masker):
    calls = count_calls(masker.model.vision_encoder)
    first, second = rgb(40, 60, seed=1), rgb(40, 60, seed=2)
    assert not masker.mask(first, [[5.0, 5.0]]).cached and len(calls) == 1
    again = masker.mask(first.copy(), [[30.0, 20.0], [10.0, 12.0]])  # same pixels, another array
    assert again.cached and len(calls) == 1
    assert not masker.mask(second, [[5.0, 5.0]]).cached and len(calls) == 2
    assert not masker.mask(first, [[5.0, 5.0]]).cached and len(calls) == 3  # first was dropped
    first[0, 0, 0] ^= 1  # refilled in place: a new frame, whatever the array's identity
    assert not masker.mask(first, [[5.0, 5.0]]).cached and len(calls) == 4
    assert masker.holds(first) and not masker.holds(second)
    masker.clear()
    assert not masker.holds(first)
    assert not masker.mask(first, [[5.0, 5.0]]).cached and len(calls) == 5


def test_a_cached_frame_gives_the_same_mask_as_a_fresh_one(masker):
    image, pts = rgb(50, 70, seed=3), np.array([[20.0, 30.0], [40.0, 10.0]])
    fresh = masker.mask(image, pts)
    cached = masker.mask(image, pts)
    assert cached.cached and not fresh.cached
    np.testing.assert_array_equal(cached.mask, fresh.mask)
    assert cached.score == fresh.score


def test_multimask_can_be_forced_and_the_best_predicted_iou_is_kept(tiny_sam_dir):
    forced = PartMasker.from_pretrained(tiny_sam_dir, multimask=True)
    image, pts, labs = rgb(48, 64, seed=4), np.array([[10.0, 10.0], [50.0, 30.0]]), np.array([1, 1])
    result = forced.mask(image, pts, labs)
    ref, ref_score, ref_index, _ = reference_mask(forced, image, pts, labs, multimask=True)
    assert (
        result.multimask and result.index == ref_index and result.score == pytest.approx(ref_score, abs=1e-5)
    )
    single = PartMasker.from_pretrained(tiny_sam_dir, multimask=False).mask(image, pts[:1])
    assert not single.multimask and single.index == 0


@pytest.mark.parametrize(
    ("image", "points", "labels", "message"),
    [
        (rgb(20, 30), [[29.5, 3.0]], None, r"point 0 \(29.5, 3.0\) is outside the 30x20 image"),
        (rgb(20, 30), [[3.0, 4.0], [-0.6, 4.0]], None, r"point 1 \(-0.6, 4.0\) is outside the 30x20 image"),
        (rgb(20, 30), [[3.0, 4.0], [5.0, 20.0]], None, r"point 1 \(5.0, 20.0\) is outside"),
        (rgb(20, 30), np.empty((0, 2)), None, "no points: give at least one"),
        (rgb(20, 30), [[np.nan, 4.0]], None, r"point 0 is not finite: \(nan, 4.0\)"),
        (rgb(20, 30), [[1.0, 2.0, 3.0]], None, r"points must be \(N, 2\) pairs"),
        (rgb(20, 30), [[3.0, 4.0]], [0], "every point is negative"),
        (rgb(20, 30), [[3.0, 4.0]], [1, 1], r"labels must be one per point \(1\), got 2"),
        (rgb(20, 30), [[3.0, 4.0]], [2], r"labels must be 1 \(positive\) or 0 \(negative\), got \[2\]"),
        (rgb(20, 30).astype(np.float32), [[3.0, 4.0]], None, "image must be uint8"),
        (rgb(20, 30)[..., 0], [[3.0, 4.0]], None, "image is greyscale"),
        (np.zeros((20, 30, 4), np.uint8), [[3.0, 4.0]], None, "RGBA is not accepted"),
        ([[0, 1]], [[3.0, 4.0]], None, "image must be a numpy array"),
    ],
)
def test_bad_inputs_are_one_line_input_errors_before_any_model_work(masker, image, points, labels, message):
    calls = count_calls(masker.model.vision_encoder)
    with pytest.raises(InputError, match=message) as err:
        masker.mask(image, points, labels)
    assert "\n" not in str(err.value)
    assert calls == []


def point_result(points, *, method="a2p"):
    x, y, score = points[0] if points else (float("nan"), float("nan"), 0.0)
    return PointResult(
        x=x, y=y, score=score, found=True, method=method, latency_ms=1.0, query="the handle", points=points
    )


def test_prompts_from_a_point_result_follow_lens_keypoints():
    result = point_result([(5.0, 6.0, 0.9), (7.0, 8.0, 0.3), (9.0, 1.0, 0.7), (2.0, 2.0, 0.49)])
    points, labels = prompts_from_result(result)
    np.testing.assert_array_equal(points, [[5, 6], [7, 8], [9, 1], [2, 2]])
    np.testing.assert_array_equal(labels, [1, 1, 1, 1])
    _, labels = prompts_from_result(result, negative_below=0.5)
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])
    low_best = point_result([(5.0, 6.0, 0.1), (7.0, 8.0, 0.9)])
    np.testing.assert_array_equal(prompts_from_result(low_best, negative_below=0.5)[1], [1, 1])  # best: +
    many = point_result([(float(i), 0.0, 1.0) for i in range(40)])
    assert len(prompts_from_result(many)[0]) == LENS_MAX_KEYPOINTS == 16
    assert len(prompts_from_result(many, max_points=3)[0]) == 3
    bare = PointResult(x=3.0, y=4.0, score=0.8, found=True, method="attention", latency_ms=1.0)
    np.testing.assert_array_equal(prompts_from_result(bare)[0], [[3.0, 4.0]])
    with pytest.raises(InputError, match="'text' pointer found no point for 'the handle'"):
        prompts_from_result(point_result([], method="text"))


def test_mask_result_prompts_sam_with_the_keypoints_and_their_labels(masker):
    seen = capture_prompts(masker.model)
    image = rgb(48, 80, seed=5)
    result = point_result([(10.0, 20.0, 0.9), (70.0, 40.0, 0.2), (30.0, 24.0, 0.8)])
    out = masker.mask_result(image, result, negative_below=0.5)
    np.testing.assert_array_equal(out.labels, [1, 0, 1])
    points, labels = seen[-1]
    np.testing.assert_array_equal(labels.numpy(), [[[1, 0, 1]]])
    np.testing.assert_allclose(
        points[0, 0].numpy(), out.points * [SIDE / 80, 38 / 48], atol=1e-4
    )  # 48*0.8=38.4
    summary = json.loads(json.dumps(out.to_dict()))
    assert summary["image_size"] == [80, 48] and summary["points"][1] == {"x": 70.0, "y": 40.0, "label": 0}
    assert summary["family"] == "sam" and summary["area"] == out.area


def test_from_pretrained_names_what_is_wrong(tmp_path):
    from transformers import BertConfig

    with pytest.raises(CheckpointError, match="mask model '.*nowhere'"):
        PartMasker.from_pretrained(tmp_path / "nowhere")
    BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="is a 'bert' model; use a SAM or SAM 2 checkpoint"):
        PartMasker.from_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match="unknown mask model family 'sam3'"):
        PartMasker.from_pretrained(tmp_path / "bert", family="sam3")


def test_sam2_without_torchvision_says_what_to_install(tmp_path):
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: SAM 2 loads (test_sam2_masks_match_its_processor covers it)")
    path = build_tiny_sam2(tmp_path / "sam2", with_processor=False)
    with pytest.raises(MissingDependencyError, match="SAM 2's image processor .* needs torchvision"):
        PartMasker.from_pretrained(path)


def test_sam2_masks_match_its_processor_and_cache_per_frame(tmp_path):
    pytest.importorskip("torchvision", reason="Sam2ImageProcessor needs torchvision (not installed)")
    masker = PartMasker.from_pretrained(build_tiny_sam2(tmp_path / "sam2"))
    assert masker.family == "sam2"
    calls = count_calls(masker.model.vision_encoder)
    seen = capture_prompts(masker.model)
    image, pts = rgb(40, 90, seed=6), np.array([[10.5, 30.0], [80.0, 5.0]])
    result = masker.mask(image, pts)
    assert result.mask.shape == (40, 90) and result.object_score is not None
    inputs = masker.processor(images=image, input_points=[[pts.tolist()]], return_tensors="pt")
    np.testing.assert_allclose(seen[0][0].numpy(), inputs["input_points"].numpy(), atol=1e-4)
    assert masker.mask(image.copy(), pts[:1]).cached and len(calls) == 1
    assert not masker.mask(rgb(40, 90, seed=7), pts).cached and len(calls) == 2
