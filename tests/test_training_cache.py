"""Feature cache: round trip equals a live capture, resume after an interruption, manifest checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_helpers import TINY_HEADS, synthetic_root, tiny_cache_config  # noqa: F401

from part_point_ros.backbones import load_backbone
from part_point_ros.data import load_dataset
from part_point_ros.training.errors import CacheError, CacheMismatchError
from part_point_ros.training.feature_cache import FeatureCache, write_cache
from part_point_ros.types import HeadRef

HEADS = [HeadRef.parse(h) for h in TINY_HEADS]


@pytest.fixture(scope="module")
def backbone(tiny_llava_dir):
    return load_backbone(str(tiny_llava_dir), max_layer=2)


@pytest.fixture(scope="module")
def train_set(synthetic_root):  # noqa: F811
    return load_dataset("synthetic", root=str(synthetic_root), split="train")


def test_cache_round_trip_equals_a_live_capture(backbone, train_set, tmp_path):
    root = write_cache(
        backbone, train_set, tmp_path / "c", heads=HEADS, upscale=4, chunk_size=3, max_samples=5
    )
    cache = FeatureCache(root)
    assert len(cache) == 5 and cache.heads == HEADS and cache.upscale == 4
    assert sorted(p.name for p in root.glob("chunk_*.safetensors")) == [
        "chunk_00000.safetensors",
        "chunk_00001.safetensors",
    ]
    for i in (0, 4):
        sample = train_set[i]
        live = backbone.capture(sample.load_image(), sample.query, HEADS, truncate=True)
        item = cache[i]
        assert item.sample_id == sample.sample_id and item.grid == live.grid
        assert item.queries.dtype == torch.float16
        assert torch.equal(item.queries, live.queries.half())
        assert torch.equal(item.keys, live.image_keys.half())
        assert torch.equal(item.values, live.image_values.half())
        mask = sample.load_mask()
        np.testing.assert_array_equal(cache.mask(i), mask)
        np.testing.assert_array_equal(item.patch_target.numpy(), live.grid.resample_mask(mask).reshape(-1))
        np.testing.assert_array_equal(item.heatmap_mask, live.grid.resample_mask(mask, 4) >= 0.5)
        assert item.meta["category"] == sample.meta["category"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["backbone"]["name"] == str(backbone.info.name)
    assert manifest["heads"] == [[1, 0], [2, 1]]
    assert manifest["processor"]["image_processor"] == type(backbone.processor.image_processor).__name__
    assert len(manifest["processor"]["image_processor_sha256"]) == 64
    assert manifest["dataset"]["n_samples"] == 5 and manifest["dtype"] == "float16"


def test_interrupted_cache_resumes_at_the_first_missing_chunk(backbone, train_set, tmp_path):
    second_scene = [s for s in train_set if s.image_path != train_set[0].image_path]
    subset = [*train_set.samples[:4], *second_scene[:2]]  # chunks of 2: the third is in scene 1
    kwargs = dict(heads=HEADS, upscale=4, chunk_size=2)
    reference = FeatureCache(write_cache(backbone, subset, tmp_path / "ref", **kwargs))
    # simulated crash: the image of samples 4-5 (chunk 2) cannot be read
    image = subset[4].image_path
    hidden = image.with_name("hidden.png")
    image.rename(hidden)
    try:
        with pytest.raises(FileNotFoundError):
            write_cache(backbone, subset, tmp_path / "c", **kwargs)
    finally:
        hidden.rename(image)
    root = tmp_path / "c"
    assert sorted(p.name for p in root.glob("chunk_*.json")) == ["chunk_00000.json", "chunk_00001.json"]
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(root)
    before = {p.name: p.stat().st_mtime_ns for p in root.glob("chunk_*")}
    seen = []
    write_cache(backbone, subset, root, progress=lambda done, total: seen.append(done), **kwargs)
    after = {p.name: p.stat().st_mtime_ns for p in root.glob("chunk_*")}
    assert all(after[name] == t for name, t in before.items())  # finished chunks were not redone
    assert seen == [2, 4, 5, 6]  # two chunks skipped at once, then sample by sample
    cache = FeatureCache(root)
    assert [r["sample_id"] for r in cache.records] == [r["sample_id"] for r in reference.records]
    for i in range(6):
        assert torch.equal(cache[i].keys, reference[i].keys)
        assert torch.equal(cache[i].queries, reference[i].queries)


def test_manifest_mismatch_is_one_clear_line(backbone, train_set, tmp_path):
    root = write_cache(backbone, train_set, tmp_path / "c", heads=HEADS, upscale=4, max_samples=2)
    cache = FeatureCache(root)
    with pytest.raises(CacheMismatchError) as err:
        cache.check_matches(heads=[HeadRef(1, 0), HeadRef(3, 3)])
    message = str(err.value)
    assert (
        "\n" not in message and "L1H0,L2H1 in the cache" in message and "re-run part-point cache" in message
    )
    with pytest.raises(CacheMismatchError, match="backbone is .* in the cache but 'other/model'"):
        cache.check_matches(backbone="other/model")
    with pytest.raises(CacheMismatchError, match="upscale is 4 in the cache but the head needs 2"):
        cache.check_matches(upscale=2)
    cache.check_matches(backbone=str(backbone.info.name), heads=HEADS, upscale=4)  # the matching request
    with pytest.raises(CacheMismatchError, match="heads is"):  # writing another cache into it
        write_cache(backbone, train_set, root, heads=[HeadRef(1, 1)], upscale=4, max_samples=2)


def test_a_prefix_of_the_cached_heads_is_served_without_recaching(backbone, train_set, tmp_path):
    root = write_cache(backbone, train_set, tmp_path / "c", heads=HEADS, upscale=4, max_samples=2)
    full, first = FeatureCache(root), FeatureCache(root)
    first.check_matches(heads=HEADS[:1])  # the k = 1 ablation on a k = 2 cache: accepted ...
    assert first.heads == HEADS  # ... and a check changes nothing
    first.use_heads(HEADS[:1])
    assert first.heads == HEADS[:1] and first.cached_heads == HEADS
    item, whole = first[1], full[1]
    assert item.keys.shape[0] == item.values.shape[0] == item.queries.shape[0] == 1
    assert torch.equal(item.keys, whole.keys[:1]) and torch.equal(item.values, whole.values[:1])
    with pytest.raises(CacheMismatchError, match="first k of the cached heads"):
        FeatureCache(root).use_heads(HEADS[1:])  # not a prefix: another head order
    with pytest.raises(CacheMismatchError):
        FeatureCache(root).check_matches(heads=[*HEADS, HeadRef(0, 0)])  # more heads than cached


def test_trainer_refuses_a_cache_for_other_heads(tiny_cache_config):  # noqa: F811
    from part_point_ros.training.config import replace
    from part_point_ros.training.trainer import open_train_cache

    config = replace(tiny_cache_config, heads=["L1H0", "L3H2"])
    with pytest.raises(CacheMismatchError, match="re-run part-point cache"):
        open_train_cache(config)
    with pytest.raises(CacheMismatchError, match="upscale"):
        open_train_cache(replace(tiny_cache_config, head={"n_upsample": 1, "d_fused": 32}))


def test_missing_cache_says_how_to_make_it(tmp_path):
    with pytest.raises(CacheError, match="run part-point cache"):
        FeatureCache(tmp_path)
