"""The head's presence output ("not here"): absent training queries on disk, the detached MLP, the
masked losses, the a2p score, and training on a real tiny cache that holds absent queries."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from heads_helpers import tiny_head_config
from training_helpers import synthetic_root, tiny_config  # noqa: F401

from part_point_ros.data.synthetic import load_synthetic
from part_point_ros.grounding.methods.a2p import decode_a2p, score_rule
from part_point_ros.heads import PartPointHead
from part_point_ros.heads.losses import build_heatmap_targets, head_loss
from part_point_ros.heads.presence import LOGIT_STATS, presence_features
from part_point_ros.sim.generate import generate_dataset
from part_point_ros.sim.queries import absent_queries
from part_point_ros.sim.render import render_scene
from part_point_ros.training.batching import collate, is_present
from part_point_ros.training.errors import ConfigError
from part_point_ros.training.evaluate import predict_from_cache
from part_point_ros.training.feature_cache import FeatureCache
from part_point_ros.types import ImageGrid

W, H = 96, 72
SEEDS = (3, 5)
D, ROWS, COLS = 8, 4, 4


# ------------------------------------------------------------------ absent queries on disk
def test_load_synthetic_adds_each_scenes_absent_queries_after_its_own(tmp_path):
    generate_dataset(tmp_path, SEEDS, "val", width=W, height=H)
    plain = load_synthetic(tmp_path, "val")
    both = load_synthetic(tmp_path, "val", absent=True)
    present = [s for s in both if is_present(s.meta)]
    assert [s.sample_id for s in present] == [s.sample_id for s in plain]  # unchanged, same order
    for seed in SEEDS:
        scene = render_scene(seed, width=W, height=H)
        want = absent_queries(scene)
        got = [s for s in both if s.meta["scene_seed"] == seed and not is_present(s.meta)]
        assert want and [s.query for s in got] == [q.text for q in want]
        assert [s.meta["query_kind"] for s in got] == [q.kind for q in want]
        for s in got:
            mask = s.load_mask()
            assert mask.shape == (H, W) and not mask.any() and s.meta["part_ids"] == []
        last_own = max(i for i, s in enumerate(both) if s.meta["scene_seed"] == seed and is_present(s.meta))
        assert both.samples.index(got[0]) == last_own + 1  # right after the scene's own queries


# ------------------------------------------------------------------ the module
def inputs(batch: int = 3, length: int = 5):
    torch.manual_seed(0)
    queries = torch.randn(batch, 2, length, D)
    mask = torch.ones(batch, length, dtype=torch.bool)
    keys = torch.randn(batch, 2, ROWS * COLS, D)
    values = torch.randn(batch, 2, ROWS * COLS, D)
    return queries, mask, keys, values


def test_presence_features_are_the_logit_statistics_attention_output_and_query():
    q_s, logits, values = torch.randn(2, 3, D), torch.randn(2, 3, 16), torch.randn(2, 3, 16, D)
    feats = presence_features(q_s, logits, values).reshape(2, 3, LOGIT_STATS + 2 * D)
    b, h = 1, 2
    row = logits[b, h]
    assert feats[b, h, 0] == pytest.approx(float(row.max()))
    assert feats[b, h, 1] == pytest.approx(float(torch.log(row.exp().mean())), abs=1e-6)
    assert feats[b, h, 2] == pytest.approx(float(row.mean()), abs=1e-6)
    assert feats[b, h, 3] == pytest.approx(float(row.std(unbiased=False)), abs=1e-6)
    torch.testing.assert_close(feats[b, h, 4 : 4 + D], row.softmax(0) @ values[b, h])
    torch.testing.assert_close(feats[b, h, 4 + D :], q_s[b, h])


def test_presence_loss_trains_the_presence_mlp_only():
    head = PartPointHead(tiny_head_config(D, presence=True))
    out = head(*inputs(), (ROWS, COLS))
    assert out.presence.shape == (3,)
    F_loss = torch.nn.functional.binary_cross_entropy_with_logits
    F_loss(out.presence, torch.tensor([1.0, 0.0, 1.0])).backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("presence."))
    assert all(g is None for n, g in grads.items() if not n.startswith("presence."))  # detached inputs
    assert PartPointHead(tiny_head_config(D)).num_parameters()["presence"] == 0
    assert head.num_parameters()["presence"] > 0


def test_a_head_with_presence_round_trips_and_a_plain_one_refuses_its_weights(tmp_path):
    head = PartPointHead(tiny_head_config(D, presence=True))
    head.save_pretrained(tmp_path / "p")
    again = PartPointHead.from_pretrained(tmp_path / "p")
    args = inputs()
    torch.testing.assert_close(again(*args, (ROWS, COLS)).presence, head.eval()(*args, (ROWS, COLS)).presence)
    assert PartPointHead(tiny_head_config(D))(*args, (ROWS, COLS)).presence is None
    with pytest.raises(ValueError, match="presence_weight"):
        tiny_head_config(D, presence=True, presence_weight=-1.0)


def test_absent_samples_leave_the_location_losses_and_teach_presence():
    config = tiny_head_config(D, presence=True, supervision="sdf", patch_loss="bce")
    head = PartPointHead(config)
    out = head(*inputs(), (ROWS, COLS))
    masks = np.zeros((3, ROWS * 4, COLS * 4), dtype=bool)
    masks[0, 2:6, 3:7] = True
    masks[2, 8:12, 1:4] = True  # sample 1 is absent: empty mask
    patch = torch.rand(3, ROWS * COLS)
    patch[1] = 0
    targets = {"sdf": torch.from_numpy(np.stack([build_heatmap_targets(m, config)["sdf"] for m in masks]))}
    present = torch.tensor([True, False, True])
    got = head_loss(out, patch_targets=patch, heatmap_targets=targets, config=config, present=present)
    keep = [0, 2]
    sub = type(out)(
        attn_logits=out.attn_logits[keep], attn=out.attn[keep], heatmap=out.heatmap[keep], presence=None
    )
    want = head_loss(
        sub, patch_targets=patch[keep], heatmap_targets={"sdf": targets["sdf"][keep]}, config=config
    )
    torch.testing.assert_close(got["bce"], want["bce"])
    torch.testing.assert_close(got["point"], want["point"])
    assert want["presence"] == 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.presence, present.float())
    torch.testing.assert_close(got["presence"], bce)
    torch.testing.assert_close(got["total"], got["bce"] + config.sdf_lambda * got["point"] + bce)


# ------------------------------------------------------------------ the a2p score
def test_presence_score_is_the_probability_for_the_best_point_and_scaled_for_the_others():
    grid = ImageGrid(
        rows=ROWS, cols=COLS, orig_size=(64, 64), processed_size=(64, 64), scale=(1.0, 1.0), offset=(0.0, 0.0)
    )
    logits = torch.full((ROWS * 4, COLS * 4), -10.0)
    logits[2, 2], logits[13, 13] = 5.0, 4.8  # two peaks far apart
    attn = torch.zeros(2, ROWS * COLS)
    attn[:, 0], attn[:, 15] = 3.0, 2.0
    _, near = decode_a2p(logits, attn, grid, 4, subpixel=False, max_points=2, score="softmax_near")
    _, points = decode_a2p(
        logits, attn, grid, 4, subpixel=False, max_points=2, score="presence", presence=0.8
    )
    assert [p[:2] for p in points] == [p[:2] for p in near]
    assert points[0][2] == pytest.approx(0.8)
    assert points[1][2] == pytest.approx(0.8 * near[1][2] / near[0][2])
    with pytest.raises(ValueError, match="presence probability"):
        decode_a2p(logits, attn, grid, 4, score="presence")
    assert score_rule(tiny_head_config(D, presence=True, patch_loss="bce")) == "presence"
    assert score_rule(tiny_head_config(D, patch_loss="bce")) == "sigmoid"


def test_a2p_decoding_gives_one_point_per_heatmap_region_when_asked():
    """Two maxima on one ridge (a long handle) are one instance with ``one_per_region`` (PartPointer's
    default ``points_one_per_region``), two without; a peak beyond a valley stays a second point."""
    grid = ImageGrid(
        rows=ROWS, cols=COLS, orig_size=(64, 64), processed_size=(64, 64), scale=(1.0, 1.0), offset=(0.0, 0.0)
    )
    logits = torch.full((ROWS * 4, COLS * 4), -10.0)
    for col in range(2, 13):  # the ridge: a saddle at col 7, 0.61 of the best's probability (> 0.5)
        logits[2, col] = 4.5 + 0.05 * abs(col - 7)
    logits[2, 2], logits[2, 12] = 5.0, 4.8  # its two maxima, 10 cells apart (NMS radius 4)
    attn = torch.zeros(2, ROWS * COLS)
    decode = partial(decode_a2p, logits, attn, grid, 4, subpixel=False, max_points=3, score="softmax_near")
    every, regions = decode()[1], decode(one_per_region=True)[1]
    assert len(every) == 2 and len(regions) == 1 and regions[0][:2] == every[0][:2]
    logits[13, 13] = 4.9  # a second object, beyond a valley
    regions = decode(one_per_region=True)[1]
    assert len(regions) == 2 and regions[1][:2] == decode()[1][1][:2]  # the object, not the ridge's end


# ------------------------------------------------------------------ training on a real tiny cache
@pytest.fixture(scope="module")
def absent_config(tmp_path_factory, tiny_llava_dir, synthetic_root):  # noqa: F811
    from part_point_ros.training.caching import cache_splits

    root = tmp_path_factory.mktemp("absent_cache")
    args = {"root": str(synthetic_root), "split": "train", "absent": True}
    config = tiny_config(
        root, tiny_llava_dir, synthetic_root, train_data={"kind": "synthetic", "args": args}, epochs=1,
        head={"d_fused": 32, "n_blocks": 1, "norm_groups": 8, "presence": True},
    )  # fmt: skip
    cache_splits(config, progress=False)
    return config


def test_training_with_absent_queries_learns_presence_and_scores_by_it(absent_config, tmp_path):
    from part_point_ros.training.config import replace
    from part_point_ros.training.trainer import train, training_indices

    cache = FeatureCache(absent_config.cache_path("train"))
    absent = [i for i, r in enumerate(cache.records) if not is_present(r["meta"])]
    assert absent and len(absent) < len(cache)
    assert not cache.mask(absent[0]).any() and float(cache[absent[0]].patch_target.sum()) == 0
    result = train(replace(absent_config, out_dir=str(tmp_path / "p")))
    assert math.isfinite(result.history[0]["presence"])
    head = PartPointHead.from_pretrained(result.head_dir)
    assert head.config.presence
    records = predict_from_cache(head, cache, subpixel=False)
    batch = collate([cache[i] for i in range(4)], head.config)
    with torch.no_grad():
        out = head(batch.queries, batch.query_mask, batch.keys, batch.values, batch.grid_shape)
    for b in range(4):
        assert records[b].score == pytest.approx(float(out.presence[b].sigmoid()), abs=1e-5)

    # without a presence output a head trains on the present samples only
    plain_head = {"d_fused": 32, "n_blocks": 1, "norm_groups": 8}
    plain = train(replace(absent_config, out_dir=str(tmp_path / "plain"), head=plain_head))
    assert "presence" not in plain.history[0]
    assert training_indices(cache, plain.head.config) == [i for i in range(len(cache)) if i not in absent]
    assert training_indices(cache, head.config) == list(range(len(cache)))


def test_presence_without_absent_queries_is_refused_with_the_fix(absent_config, tmp_path):
    from part_point_ros.training.caching import cache_splits
    from part_point_ros.training.config import replace
    from part_point_ros.training.trainer import train

    args = {**absent_config.train_data.args, "absent": False}
    config = replace(
        absent_config, train_data={"kind": "synthetic", "args": args}, cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    cache_splits(config, progress=False, splits=("train",))
    with pytest.raises(ConfigError, match="absent: true"):
        train(config)


def test_presence_added_to_a_trained_head_leaves_its_points_unchanged(absent_config, tmp_path):
    from part_point_ros.training.config import replace
    from part_point_ros.training.trainer import train

    plain_head = {"d_fused": 32, "n_blocks": 1, "norm_groups": 8}
    plain = train(replace(absent_config, out_dir=str(tmp_path / "plain"), head=plain_head))
    added = train(
        replace(
            absent_config,
            out_dir=str(tmp_path / "added"),
            head={**plain_head, "presence": True},
            init_head=str(plain.head_dir),
            train_only=["presence"],
        )  # fmt: skip
    )
    before, after = (
        PartPointHead.from_pretrained(plain.head_dir),
        PartPointHead.from_pretrained(added.head_dir),
    )
    for name, value in before.state_dict().items():
        assert torch.equal(after.state_dict()[name], value), name  # frozen: bit for bit
    fresh = PartPointHead(after.config).state_dict()
    assert any(
        not torch.equal(fresh[n], v) for n, v in after.state_dict().items() if n.startswith("presence.")
    )
    cache = FeatureCache(absent_config.cache_path("train"))
    old, new = predict_from_cache(before, cache), predict_from_cache(after, cache)
    assert [(r.x, r.y) for r in old] == [(r.x, r.y) for r in new]  # the same points, a new score
    assert [r.score for r in old] != [r.score for r in new]


def test_init_head_and_train_only_mistakes_are_one_line(absent_config, tmp_path):
    from part_point_ros.training.config import replace
    from part_point_ros.training.trainer import train

    other = PartPointHead(tiny_head_config(absent_config_head_dim(absent_config), heads=[[0, 0], [3, 3]]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="made for other features"):
        train(replace(absent_config, out_dir=str(tmp_path / "a"), init_head=str(tmp_path / "other")))
    with pytest.raises(ConfigError, match="matches no parameter"):
        train(replace(absent_config, out_dir=str(tmp_path / "b"), train_only=["decoder"]))
    # a head without a presence output, its presence output frozen at random values: refused
    from part_point_ros.training.trainer import head_config_for

    plain_cfg = {"d_fused": 32, "n_blocks": 1, "norm_groups": 8, "presence": False}
    cache = FeatureCache(absent_config.cache_path("train"))
    plain = PartPointHead(head_config_for(cache, replace(absent_config, head=plain_cfg)))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="presence.*freezes them at random"):
        train(
            replace(
                absent_config,
                out_dir=str(tmp_path / "c"),
                head={**plain_cfg, "presence": True},
                init_head=str(tmp_path / "plain"),
                train_only=["a2p"],
            )  # fmt: skip
        )


def absent_config_head_dim(config) -> int:
    return int(FeatureCache(config.cache_path("train")).backbone["head_dim"])
