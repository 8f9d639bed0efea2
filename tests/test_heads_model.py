"""The head as a module: shapes, masking, ablations, gradients and parameter counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from heads_helpers import tiny_backbone, tiny_head_config

from part_point_ros.heads import AttentionToPoint, HeadConfig, PartPointHead, QuerySynthesis
from part_point_ros.heads.losses import build_heatmap_targets, head_loss
from part_point_ros.heads.query_synthesis import pool_queries

D = 16


def config(**kw) -> HeadConfig:
    return tiny_head_config(D, **({"d_fused": 32, "norm_groups": 8} | kw))


def inputs(k=2, batch=2, length=6, grid=(3, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = grid[0] * grid[1]
    queries = torch.randn(batch, k, length, D, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 4:] = False  # the second prompt is two tokens shorter (right padding)
    keys = torch.randn(batch, k, p, D, generator=gen)
    values = torch.randn(batch, k, p, D, generator=gen)
    return queries, mask, keys, values, grid


@pytest.mark.parametrize("grid", [(3, 5), (4, 4), (7, 2)])
def test_output_shapes_for_any_grid(grid):
    torch.manual_seed(0)
    head = PartPointHead(config())
    q, m, k, v, _ = inputs(grid=grid)
    out = head(q, m, k, v, grid)
    p = grid[0] * grid[1]
    assert out.attn_logits.shape == (2, 2, p) and out.attn.shape == (2, 2, p)
    assert out.heatmap.shape == (2, 4 * grid[0], 4 * grid[1])
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(out.attn, out.attn_logits.softmax(-1))


def test_shape_errors_name_the_actual_shapes():
    head = PartPointHead(config())
    q, m, k, v, grid = inputs()
    with pytest.raises(ValueError, match=r"grid 4x4 = 16 patches but keys/values have P=15"):
        head(q, m, k, v, (4, 4))
    with pytest.raises(ValueError, match=r"queries must be \(B, k=2, L, d=16\), got \(2, 1, 6, 16\)"):
        head(q[:, :1], m, k, v, grid)
    with pytest.raises(ValueError, match=r"query_mask must be .* got \(2, 5\)"):
        head(q, m[:, :5], k, v, grid)
    with pytest.raises(ValueError, match=r"values \(2, 2, 14, 16\) must have the shape of keys"):
        head(q, m, k, v[:, :, :14], grid)
    empty = m.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="no real token"):
        head(q, empty, k, v, grid)


def test_attn_logits_are_the_scaled_dot_product_of_the_query_with_keys():
    head = PartPointHead(config(query_pooling="eos"))
    q, m, k, v, grid = inputs()
    out = head(q, m, k, v, grid)
    last = torch.stack([q[0, :, 5], q[1, :, 3]])  # last real token of each prompt: (B, k, d)
    want = torch.einsum("bkd,bkpd->bkp", last, k) / math.sqrt(D)
    torch.testing.assert_close(out.attn_logits, want)


@pytest.mark.parametrize("mode", ["qsynth", "eos", "mean", "max"])
def test_padding_never_changes_the_query(mode):
    torch.manual_seed(0)
    head = PartPointHead(config(query_pooling=mode)).eval()
    q, m, k, v, grid = inputs()
    noisy = q.clone()
    noisy[1, :, 4:] = 1e3  # garbage in the padded positions of prompt 1
    a = head(q, m, k, v, grid)
    b = head(noisy, m, k, v, grid)
    torch.testing.assert_close(a.attn_logits, b.attn_logits)
    torch.testing.assert_close(a.heatmap, b.heatmap)
    if mode != "eos":  # a real token does change it (except the non-last ones under eos)
        changed = q.clone()
        changed[1, :, 1] += torch.randn(D)  # not a constant shift: LayerNorm would remove that
        assert not torch.allclose(head(changed, m, k, v, grid).attn_logits[1], a.attn_logits[1])


def test_pool_queries_by_hand():
    x = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [9.0, 9.0]]])  # (B=1, L=3, d=2); token 2 is padding
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(pool_queries(x, mask, "eos"), torch.tensor([[3.0, -1.0]]))
    torch.testing.assert_close(pool_queries(x, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(pool_queries(x, mask, "max"), torch.tensor([[3.0, 5.0]]))
    with pytest.raises(ValueError, match="sum"):
        pool_queries(x, mask, "sum")


def test_query_synthesis_output_is_a_convex_combination_of_its_latents():
    torch.manual_seed(0)
    module = QuerySynthesis(d_head=D, n_latents=4, n_rounds=3)
    captured = {}

    def keep_input(_module, args, _output) -> None:
        captured.setdefault("z", args[0])

    module.score.register_forward_hook(keep_input)
    text = torch.randn(3, 5, D)
    q_s = module(text, torch.ones(3, 5, dtype=torch.bool))
    z = captured["z"]  # Z^T (B, N, d): the latents after T rounds
    alpha = module.score(z).squeeze(-1).softmax(-1)
    torch.testing.assert_close(q_s, torch.einsum("bn,bnd->bd", alpha, z))
    assert not torch.allclose(z[0], module.latents)  # the rounds did read the text


def test_no_image_values_ablation_ignores_values():
    torch.manual_seed(0)
    head = PartPointHead(config(use_values=False)).eval()
    q, m, k, v, grid = inputs()
    a = head(q, m, k, v, grid).heatmap
    b = head(q, m, k, torch.randn_like(v), grid).heatmap
    torch.testing.assert_close(a, b)
    assert head.a2p.fuse.in_channels == 2  # one channel per head
    full = PartPointHead(config()).eval()
    assert not torch.allclose(
        full(q, m, k, v, grid).heatmap, full(q, m, k, torch.randn_like(v), grid).heatmap
    )


def test_no_decoder_ablation_is_the_log_of_the_upsampled_mean_attention():
    head = PartPointHead(config(use_decoder=False))
    assert head.num_parameters()["attention_to_point"] == 0
    q, m, k, v, grid = inputs()
    out = head(q, m, k, v, grid)
    mean = out.attn.mean(1).reshape(2, 1, *grid)  # (B, k, P) -> (B, 1, rows, cols)
    up = F.interpolate(mean, scale_factor=4.0, mode="bilinear", align_corners=False).squeeze(1)
    torch.testing.assert_close(
        out.heatmap.flatten(1).softmax(-1), (up / up.sum((-2, -1), keepdim=True)).flatten(1)
    )
    peak = np.unravel_index(int(out.heatmap[0].argmax()), out.heatmap.shape[1:])
    assert out.heatmap[0][peak] == out.heatmap[0].max()


@pytest.mark.parametrize(
    "overrides", [{}, {"qsynth_prenorm": False, "qsynth_ffn": False}, {"use_values": False}]
)
def test_gradients_reach_every_parameter(overrides):
    torch.manual_seed(0)
    cfg = config(**overrides)
    head = PartPointHead(cfg)
    q, m, k, v, grid = inputs()
    out = head(q, m, k, v, grid)
    mask = np.zeros((12, 20), bool)
    mask[4:9, 6:15] = True
    sdf = torch.from_numpy(np.stack([build_heatmap_targets(mask, cfg)["sdf"]] * 2))
    patch = torch.rand(2, 15)
    losses = head_loss(out, patch_targets=patch, heatmap_targets={"sdf": sdf}, config=cfg)
    losses["total"].backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_dtype_of_inputs_is_cast_to_the_head():
    head = PartPointHead(config())
    q, m, k, v, grid = inputs()
    out = head(q.double(), m, k.bfloat16(), v.half(), grid)
    assert out.heatmap.dtype == torch.float32


# ---------------------------------------------------------------- parameter counts


def analytic_qsynth(d, n, rounds, ffn_ratio, prenorm=True, ffn=True) -> int:
    layer_norm = 2 * d
    attn = 3 * d * d + 3 * d + d * d + d  # packed in-projection (q, k, v) + out-projection
    per_round = attn + (2 * layer_norm if prenorm else 0)
    if ffn:
        h = ffn_ratio * d
        per_round += (layer_norm if prenorm else 0) + d * h + h + h * d + d
    scorer = d * d + d + d + 1
    return n * d + rounds * per_round + scorer


def analytic_a2p(k, d, fused, blocks, ups, use_values=True) -> int:
    c = d if use_values else 1
    importance = k * c * d + d + d * k + k
    fuse = k * c * fused + fused
    conv_block = lambda cin, cout: 9 * cin * cout + cout + 2 * cout  # noqa: E731  conv + GroupNorm
    mix = blocks * conv_block(fused, fused)
    up = sum(conv_block(fused // 2**s, fused // 2 ** (s + 1)) for s in range(ups))
    out = fused // 2**ups + 1
    return importance + fuse + mix + up + out


def test_parameter_counts_match_the_layer_sizes():
    tiny = PartPointHead(config()).num_parameters()
    assert tiny["query_synthesis"] == 2 * analytic_qsynth(D, 4, 3, 2)
    assert tiny["attention_to_point"] == analytic_a2p(2, D, 32, 4, 2)
    assert tiny["total"] == tiny["query_synthesis"] + tiny["attention_to_point"]
    bare = PartPointHead(config(qsynth_prenorm=False, qsynth_ffn=False, use_values=False)).num_parameters()
    assert bare["query_synthesis"] == 2 * analytic_qsynth(D, 4, 3, 2, prenorm=False, ffn=False)
    assert bare["attention_to_point"] == analytic_a2p(2, D, 32, 4, 2, use_values=False)
    assert PartPointHead(config(query_pooling="mean")).num_parameters()["query_synthesis"] == 0


def test_parameter_counts_of_the_paper_configuration():
    backbone = tiny_backbone(128, num_layers=32, num_heads=32, num_kv_heads=32)
    cfg = HeadConfig(backbone=backbone, heads=[[14, 24], [14, 13], [16, 1], [18, 15], [19, 23]])
    counts = PartPointHead(cfg).num_parameters()
    print(f"\nk=5, d_h=128: {counts} (paper: Q-Synth 2.3 M, A2P 1.7 M)")
    assert counts["query_synthesis"] == 5 * analytic_qsynth(128, 4, 3, 2)
    assert counts["attention_to_point"] == analytic_a2p(5, 128, 256, 4, 2)


def test_attention_to_point_standalone_is_fully_convolutional():
    torch.manual_seed(0)
    a2p = AttentionToPoint(k=3, d_head=D, d_fused=32, n_blocks=2, n_upsample=1, norm_groups=8)
    for rows, cols in [(2, 3), (5, 5)]:
        attn = torch.rand(1, 3, rows * cols).softmax(-1)
        assert a2p(attn, torch.randn(1, 3, rows * cols, D), (rows, cols)).shape == (1, 2 * rows, 2 * cols)


def test_a_few_adamw_steps_fit_one_sample():
    torch.manual_seed(0)
    cfg = config(d_fused=16, n_blocks=1, norm_groups=4, sdf_lambda=1.0)
    head = PartPointHead(cfg)
    q, m, k, v, grid = inputs()
    q, m, k, v = q[:1], m[:1], k[:1], v[:1]  # one sample
    mask = np.zeros((12, 20), bool)
    mask[2:10, 12:19] = True  # right part of the image
    sdf = torch.from_numpy(build_heatmap_targets(mask, cfg)["sdf"])[None]
    patch = torch.zeros(1, 15)
    patch[0, [3, 4, 8, 9]] = 1.0  # grid cells (rows 0-1, cols 3-4) under the mask
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.01)
    history = []
    for _ in range(30):
        losses = head_loss(
            head(q, m, k, v, grid), patch_targets=patch, heatmap_targets={"sdf": sdf}, config=cfg
        )
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    assert history[-1]["bce"] < 0.5 * history[0]["bce"]
    assert history[-1]["point"] < 0.75 * history[0]["point"]
    peak = np.unravel_index(int(head(q, m, k, v, grid).heatmap[0].argmax()), mask.shape)
    assert mask[peak], f"heatmap peak {peak} is outside the mask after fitting"


def test_heads_never_import_backbones():
    import subprocess
    import sys

    code = (
        "import sys, part_point_ros.heads, part_point_ros.heads.losses; "
        "prefixes = ('part_point_ros.backbones', 'rclpy', 'transformers'); "
        "bad = [m for m in sys.modules if m.startswith(prefixes)]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
