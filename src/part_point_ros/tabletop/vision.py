"""Stage ``vision``: the CLIP tower learns what is under each image token (``targets.py``).

The stand-in for web-scale pretraining (CLIP, SigLIP), whose patch tokens hold local semantics: a
linear probe on the tower's output tokens (the features LLaVA passes on) predicts, per token, the
share of each object:part (per 2x2 sub-cell), part colour, object type and object naming colour;
the loss is the soft cross-entropy against those shares. The probe is dropped afterwards; only the
tower is kept. Tokens on objects weigh ``OBJECT_WEIGHT`` times the table's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from part_point_ros.tabletop import scenes
from part_point_ros.tabletop.schedule import StageOptions, load_state, lr_at, save_state
from part_point_ros.tabletop.targets import GROUPS, SUB, mirror, stacked_targets

OBJECT_WEIGHT = 4.0
MAX_BALANCE = 8.0


@dataclass
class VisionOptions(StageOptions):
    balance: bool = True  # weigh tokens by the rarity of their object:part (pair_balance)
    flip: bool = False  # mirror half the frames of each batch left-right (frames and targets)


class DenseProbe(torch.nn.Module):
    """One linear map from a token's features to every group's logits."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sizes = {name: (SUB * SUB * n if name == "pair" else n) for name, n in GROUPS.items()}
        self.linear = torch.nn.Linear(width, sum(self.sizes.values()))

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        chunks = torch.split(self.linear(feats), list(self.sizes.values()), dim=-1)
        for name, logits in zip(self.sizes, chunks, strict=True):
            out[name] = logits.unflatten(-1, (SUB * SUB, GROUPS[name])) if name == "pair" else logits
        return out  # pair: (B, P, 4, C), others: (B, P, C)


def tower_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, P, D): the vision tower's tokens at the layer LLaVA reads, CLS dropped."""
    layer = model.config.vision_feature_layer
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer]
    return hidden[:, 1:]


def pair_balance(pair_targets: np.ndarray) -> torch.Tensor:
    """(C,) weight per object:part class: (median count / count) ** 0.5 over the tokens each class
    dominates, clipped to [1, MAX_BALANCE] ("none" gets 1): rare, small parts count more."""
    dominant = np.asarray(pair_targets, dtype=np.float32).mean(-2).argmax(-1).ravel()
    counts = np.bincount(dominant, minlength=pair_targets.shape[-1]).astype(np.float64)
    median = np.median(counts[:-1][counts[:-1] > 0])
    weight = np.clip(np.sqrt(median / np.maximum(counts, 1.0)), 1.0, MAX_BALANCE)
    weight[-1] = 1.0
    return torch.as_tensor(weight, dtype=torch.float32)


def dense_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], balance: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft cross-entropy summed over the groups; a token's weight is ``OBJECT_WEIGHT`` on an object
    (1 on the table), times ``balance`` of the object:part that covers most of it."""
    on_object = 1.0 - targets["object_type"][..., -1]  # (B, P) share of the token on an object
    weight = 1.0 + (OBJECT_WEIGHT - 1.0) * (on_object > 0).float()
    if balance is not None:
        weight = weight * balance[targets["pair"].mean(-2).argmax(-1)]  # (B, P)
    total = 0.0
    for name, lg in logits.items():
        ce = -(targets[name] * torch.log_softmax(lg, dim=-1)).sum(-1)  # (B, P[, 4])
        if ce.ndim == 3:
            ce = ce.mean(-1)
        total = total + (ce * weight).sum() / weight.sum()
    return total


@torch.no_grad()
def dense_accuracy(model, probe, pixels, targets, batch: int = 64) -> dict[str, float]:
    """Token-level read-out on held-out frames: mean recall over the object:part pairs (tokens that
    one pair covers >= 40 %), accuracy of part colour, object colour and type on such tokens."""
    preds = {name: [] for name in GROUPS}
    device = next(probe.parameters()).device
    for i in range(0, len(pixels), batch):
        logits = probe(tower_tokens(model, pixels[i : i + batch].float().to(device)))
        preds["pair"].append(logits["pair"].softmax(-1).mean(2).argmax(-1).cpu())
        for name in ("colour", "object_colour", "object_type"):
            preds[name].append(logits[name].argmax(-1).cpu())
    pred = {k: torch.cat(v).flatten() for k, v in preds.items()}
    pair_share = torch.as_tensor(targets["pair"]).float().mean(2).flatten(0, 1)  # (N*P, C)
    share, label = pair_share.max(-1)
    keep = (share >= 0.4) & (label < GROUPS["pair"] - 1)
    recalls = [
        float((pred["pair"][keep & (label == c)] == c).float().mean())
        for c in range(GROUPS["pair"] - 1)
        if (keep & (label == c)).sum() >= 3
    ]
    out = {"pair_mean_recall": float(np.mean(recalls)), "part_tokens": int(keep.sum())}
    for name in ("colour", "object_colour", "object_type"):
        truth = torch.as_tensor(targets[name]).float().flatten(0, 1).argmax(-1)
        out[f"{name}_accuracy"] = float((pred[name][keep] == truth[keep]).float().mean())
    return out


def train_vision(opts: VisionOptions, words) -> Path:
    """Run (or resume) the vision stage; returns ``<run>/vision``, the whole LLaVA model with the
    trained tower (the language stage's ``--init-from``)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from part_point_ros.tabletop.model import build_initial, pixel_tensor

    run = Path(opts.run)
    run.mkdir(parents=True, exist_ok=True)
    init = run / "init"
    if not (init / "config.json").exists():
        build_initial(init, opts.seed, words, opts.init_from)
    model = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(init)
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    train_set = scenes.load(opts.cache, "train", opts.train)
    val_set = scenes.load(opts.cache, "val", opts.val)
    scenes.log(
        f"vision stage: {len(train_set)} train frames, {len(val_set)} val frames, {side}x{side} tokens"
    )
    pixels, val_pixels = pixel_tensor(processor, train_set.rgb), pixel_tensor(processor, val_set.rgb)
    targets = stacked_targets(train_set.part_ids, train_set.facts, side)
    n_train = len(train_set)
    del train_set  # the frames and part maps (~0.5 MB a scene) are not needed past this point
    val_targets = stacked_targets(val_set.part_ids, val_set.facts, side)
    balance = pair_balance(targets["pair"]) if opts.balance else None
    device = torch.device(opts.device)
    model.to(device)
    if balance is not None:
        balance = balance.to(device)
    tower = model.model.vision_tower
    probe = DenseProbe(tower.config.hidden_size).to(device)
    params = [*tower.parameters(), *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.01, betas=(0.9, 0.98))
    modules = {"tower": tower, "probe": probe}
    step = load_state(run, modules, opt)
    if step:
        scenes.log(f"resumed at step {step}")
    stop = min(opts.steps, opts.stop_after or opts.steps)
    history = run / "history.jsonl"
    t0, losses, started = time.time(), [], time.monotonic()
    tower.train()
    while step < stop:
        rng = np.random.default_rng([opts.seed, step])  # the batch of a step depends on the step only
        idx = np.sort(rng.choice(n_train, size=opts.batch, replace=False))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, opts.steps, opts.lr, opts.warmup)
        batch_targets = {k: torch.as_tensor(v[idx]).float() for k, v in targets.items()}
        batch_pixels = pixels[idx].float()
        if opts.flip:  # drawn after the batch, so runs without --flip see the same batches as before
            which = rng.random(len(idx)) < 0.5
            mirrored = torch.as_tensor(which)[:, None, None, None]
            batch_pixels = torch.where(mirrored, batch_pixels.flip(-1), batch_pixels)
            batch_targets = mirror(batch_targets, side, which)
        batch_targets = {k: v.to(device) for k, v in batch_targets.items()}
        loss = dense_loss(probe(tower_tokens(model, batch_pixels.to(device))), batch_targets, balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if opts.time_limit and time.monotonic() - started >= opts.time_limit:
            stop = step  # evaluated and checkpointed below, like --stop-after
        if step % 50 == 0:
            scenes.log(f"vision step {step} loss {np.mean(losses):.4f} {50 / (time.time() - t0):.2f} step/s")
            t0, losses = time.time(), []
        if step % opts.eval_every == 0 or step == stop:
            tower.eval()
            acc = dense_accuracy(model, probe, val_pixels, val_targets)
            tower.train()
            scenes.log(f"vision step {step} val " + json.dumps({k: round(v, 3) for k, v in acc.items()}))
            with open(history, "a") as fh:
                fh.write(json.dumps({"step": step, "val": acc}) + "\n")
        if step % opts.save_every == 0 or step == stop:
            save_state(run, modules, opt, step)
    out = run / "vision"
    tower.eval()
    model.cpu().save_pretrained(out)
    processor.save_pretrained(out)
    scenes.log(f"vision stage at step {step} -> {out}")
    return out
