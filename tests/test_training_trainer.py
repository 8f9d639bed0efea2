"""Trainer on the feature cache: loss goes down, checkpoints, exact resume, DDP with 2 gloo processes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import (  # noqa: F401
    TINY_HEAD,
    ddp_worker,
    free_port,
    synthetic_root,
    tiny_cache_config,
)

from part_point_ros.heads import HeadConfig, PartPointHead
from part_point_ros.heads.attention_to_point import AttentionToPoint, ConvBlock
from part_point_ros.heads.losses import head_loss
from part_point_ros.heads.query_synthesis import QuerySynthesis
from part_point_ros.training.checkpoint import latest_checkpoint
from part_point_ros.training.config import replace
from part_point_ros.training.errors import ResumeError
from part_point_ros.training.trainer import train


def weights(head) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def test_two_epochs_lower_the_loss_and_leave_checkpoints(tiny_cache_config, tmp_path):  # noqa: F811
    config = replace(tiny_cache_config, out_dir=str(tmp_path / "run"), tensorboard=True, log_every=2)
    result = train(config)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert latest_checkpoint(config.out_dir).name == "epoch_0002"
    head = PartPointHead.from_pretrained(result.head_dir)
    for name, value in weights(result.head).items():
        assert torch.equal(head.state_dict()[name], value)
    assert head.config.heads == [(1, 0), (2, 1)] and head.config.backbone["name"] == config.backbone
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_at_the_next_epoch_with_identical_results(tiny_cache_config, tmp_path):  # noqa: F811
    full = train(replace(tiny_cache_config, out_dir=str(tmp_path / "a"), epochs=3))
    run_b = replace(tiny_cache_config, out_dir=str(tmp_path / "b"), epochs=3)
    train(run_b)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "epoch_0003")  # as if killed during epoch 3
    shutil.rmtree(tmp_path / "b" / "head")
    resumed = train(run_b, resume=True)
    assert resumed.start_epoch == 3 and [h["epoch"] for h in resumed.history] == [3]
    assert resumed.history[0] == full.history[2]
    a, b = weights(full.head), weights(resumed.head)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_file(str(tmp_path / "a" / "checkpoints" / "epoch_0003" / "optimizer.safetensors"))
    opt_b = load_file(str(tmp_path / "b" / "checkpoints" / "epoch_0003" / "optimizer.safetensors"))
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_resume_errors(tiny_cache_config, tmp_path):  # noqa: F811
    config = replace(tiny_cache_config, out_dir=str(tmp_path / "run"), epochs=1)
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(config, resume=True)
    train(config)
    with pytest.raises(ResumeError, match="pass --resume"):
        train(config)
    with pytest.raises(ResumeError, match="lr was 0.001 and is now 0.5"):
        train(replace(config, lr=0.5, epochs=2), resume=True)


# Heatmap losses that see the heatmap only through softmax(H) over all its pixels (not "l2": sigmoid).
SOFTMAX_SUPERVISIONS = ("sdf", "symmetric_sdf", "gaussian")


def zero_gradient_entries(head: PartPointHead) -> dict[str, torch.Tensor]:
    """Parameter name -> bool mask of the entries whose TRUE gradient is identically 0.

    The loss does not depend on them at all (proofs below), so their computed gradient is pure
    float summation noise (~1e-19), and Adam, which divides by sqrt(v), turns that noise into steps
    of up to ~lr that differ with the summation order (1 vs 2 processes, AVX2 vs AVX-512). They are
    left out of the one-vs-two-process comparison; ``test_zero_gradient_entries_...`` checks in
    float64 that exactly these entries have a zero gradient.

    1. ``QuerySynthesis.score[-1].bias`` (one output): adds the same c to all N latent scores, and
       alpha = softmax over the N latents is shift-invariant: softmax(s + c) = softmax(s).
    2. The key part of ``MultiheadAttention.in_proj_bias`` ([q; k; v] biases, d each): a query's
       logits are q.(k_j + b_k) = q.k_j + q.b_k, the same q.b_k for every key j (per head); the
       softmax over keys is shift-invariant (padded keys are -inf either way).
    3. The conv bias of a ``ConvBlock`` whose GroupNorm has one channel per group: GroupNorm
       subtracts the mean of each group over (channels x H x W), so a constant added to a channel
       that is a group on its own shifts that mean by the same constant and leaves the variance
       unchanged: the block's output does not depend on it (the last upsampling block of the tiny
       head: 8 channels, 8 groups).
    4. ``AttentionToPoint.out.bias`` (one channel): adds one constant to every heatmap logit; the
       heatmap reaches the loss only through the point term, which for the softmax supervisions
       is a function of softmax(H) over all pixels (sdf_penalty, symmetric_sdf_penalty,
       gaussian_heatmap_loss), and the patch BCE reads the attention logits, computed before the
       decoder. (Not true for "l2", a per-pixel sigmoid: asserted below.)
    """
    params = dict(head.named_parameters())
    masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items()}
    for name, module in head.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, QuerySynthesis):
            assert module.score[-1].out_features == 1
            masks[f"{prefix}score.{len(module.score) - 1}.bias"][:] = True
        elif isinstance(module, torch.nn.MultiheadAttention):
            d = module.embed_dim
            masks[f"{prefix}in_proj_bias"][d : 2 * d] = True
        elif isinstance(module, ConvBlock) and module.norm.num_groups == module.norm.num_channels:
            masks[f"{prefix}conv.bias"][:] = True
        elif isinstance(module, AttentionToPoint):
            assert head.config.supervision in SOFTMAX_SUPERVISIONS, head.config.supervision
            assert module.out.out_channels == 1
            masks[f"{prefix}out.bias"][:] = True
    return masks


def test_zero_gradient_entries_are_exactly_those_without_a_gradient():
    """float64: the entries ``zero_gradient_entries`` names have gradient 0 (to rounding), all
    other parameters a clearly nonzero one, on random inputs with the training tests' head."""
    backbone = {
        "name": "tiny", "family": "llava", "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "head_dim": 16,
    }  # fmt: skip
    config = HeadConfig(backbone=backbone, heads=[(1, 0), (2, 1)], d_head=16, **TINY_HEAD)
    torch.manual_seed(0)
    head = PartPointHead(config).double()
    batch, k, length, d, rows, cols = 3, 2, 5, 16, 4, 4
    queries = torch.randn(batch, k, length, d, dtype=torch.float64)
    query_mask = torch.ones(batch, length, dtype=torch.bool)
    query_mask[0, 3:] = False  # one padded query
    keys = torch.randn(batch, k, rows * cols, d, dtype=torch.float64)
    values = torch.randn(batch, k, rows * cols, d, dtype=torch.float64)
    out = head(queries, query_mask, keys, values, (rows, cols))
    sdf = 5.0 * torch.randn(out.heatmap.shape, dtype=torch.float64)
    patch_targets = (torch.rand(batch, rows * cols) > 0.5).double()
    loss = head_loss(out, patch_targets=patch_targets, heatmap_targets={"sdf": sdf}, config=config)
    loss["total"].backward()

    masks = zero_gradient_entries(head)
    grads = {name: p.grad.abs() for name, p in head.named_parameters()}
    largest = max(float(g.max()) for g in grads.values())
    skipped = [name for name, m in masks.items() if m.any()]
    assert len(skipped) == 2 * (1 + config.n_rounds) + 2  # per Q-Synth: score + 3 key biases; 2 in A2P
    for name, grad in grads.items():
        mask = masks[name]
        if mask.any():
            assert float(grad[mask].max()) < 1e-12 * largest, name
        if not mask.all():
            assert float(grad[~mask].max()) > 1e-9 * largest, name


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tiny_cache_config, tmp_path):  # noqa: F811
    """2 ranks x batch 2 (gloo, env set as torchrun sets it) == 1 process x batch 4.

    Checked: both ranks end with bit-identical head weights (DDP keeps them in sync), and these
    equal the single-process run's up to float summation order (1e-4), since the sampler gives
    rank r the r-th half of each global batch and DDP averages the two halves' gradients; and a
    single process with batch 2 does NOT match (so the comparison can fail). Entries whose true
    gradient is 0 are not compared (``zero_gradient_entries``: Adam amplifies their noise).
    The cache's grids are all equal (tiny LLaVA: always 4x4); a last global batch smaller than 4
    would be padded for DDP, so the cache is cut to whole global batches (1 epoch).
    """
    cache_dir = tmp_path / "cache"
    shutil.copytree(tiny_cache_config.cache_dir, cache_dir)
    # keep whole global batches of 4 only: drop the last records of the last chunk
    index = json.loads((cache_dir / "train" / "index.json").read_text())
    last = index["chunks"][-1]
    chunk = json.loads((cache_dir / "train" / last["records"]).read_text())
    extra = index["n_samples"] % 4
    assert index["n_samples"] >= 16 and len(chunk["samples"]) == last["count"] > extra
    chunk["samples"] = chunk["samples"][: last["count"] - extra]
    last["count"] -= extra
    index["n_samples"] -= extra
    (cache_dir / "train" / last["records"]).write_text(json.dumps(chunk))
    (cache_dir / "train" / "index.json").write_text(json.dumps(index))
    base = replace(tiny_cache_config, cache_dir=str(cache_dir), epochs=1)
    single = train(replace(base, out_dir=str(tmp_path / "single"), batch_size=4))
    ddp = replace(base, out_dir=str(tmp_path / "ddp"), batch_size=2)
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), ddp.to_dict(), str(tmp_path)), nprocs=2)
    rank0, rank1 = (
        load_file(str(tmp_path / "rank0.safetensors")),
        load_file(str(tmp_path / "rank1.safetensors")),
    )
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    reference = weights(single.head)
    # entries with a true gradient of 0 only carry Adam-amplified summation noise: not compared
    noise = zero_gradient_entries(single.head)
    compared = 0
    for k, value in reference.items():
        keep = ~noise[k]
        torch.testing.assert_close(rank0[k][keep], value[keep], atol=1e-4, rtol=1e-3, msg=k)
        compared += int(keep.sum())
    assert compared > 0.99 * sum(v.numel() for v in reference.values())
    # the check can fail: one process with batch 2 (a different global batch) ends elsewhere
    other = weights(train(replace(base, out_dir=str(tmp_path / "b2"), batch_size=2)).head)
    assert max(float((other[k] - reference[k]).abs().max()) for k in reference) > 1e-3
    saved = PartPointHead.from_pretrained(tmp_path / "ddp" / "head")  # rank 0 wrote the head
    assert all(torch.equal(saved.state_dict()[k], rank0[k]) for k in rank0)
