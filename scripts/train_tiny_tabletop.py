#!/usr/bin/env python
"""Train the tiny-tabletop backbone: a real LlavaForConditionalGeneration trained from scratch on
one-word VQA about the synthetic tabletop world (``sim/vqa.py``), then shipped in fp16.

The model never sees a point or a mask: the VQA loss is on the answer word (and the end-of-sequence
token) only, the vision stage's on image-level labels, so any location it carries is implicit.

Stages (each resumable; everything is deterministic in ``--seed``):
1. ``cache``: render the scenes of each split once (160x120 by default) into ``--cache`` shards.
2. ``train``: several questions about one image share ONE sequence: the image prefix is followed by
   one segment per question; a block mask lets each segment see the prefix and itself only, and
   each segment's positions restart right after the image, so every segment is computed exactly as
   the single-question prompt ``USER: <image>\\n{question} ASSISTANT:`` the adapters use.
   ``--init-from`` goes on from a trained model (the vocabulary may grow); ``--freeze-vision`` keeps
   the vision tower fixed, as LLaVA-1.5 does.
2b. ``vision``: pretrain the vision tower on image-level presence labels (which coloured parts are in
   the image, never where) through a smooth-maximum-pooled linear probe; saves ``<run>/vision``.
3. ``ship``: save fp16 with ``save_pretrained`` (model, processor, tokenizer, chat template).
4. ``evaluate``: held-out accuracy per question kind against blind baselines, the localisation
   of the last token's attention on the asked part (read through ``registry.load_backbone``), and a
   linear probe of the part under each image token (vision features, keys of the last two layers).

``--image-size`` (default 112) sets the model's input size; going on from a model of another size
resamples its position grid (the shipped model: 112 px for stages 1-4, then 160 px).

    python scripts/train_tiny_tabletop.py   # stage 1 of the shipped model (docs/tiny_tabletop.md: all 6)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from part_point_ros.sim.vqa import (  # noqa: E402
    SPLIT_SEEDS,
    SceneFacts,
    VqaItem,
    answer_vocabulary,
    make_questions,
    vocabulary,
)

MODEL_CONFIG = dict(
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    intermediate_size=384,
    image_size=112,
    patch_size=8,
    vision_hidden_size=128,
    vision_layers=3,
    vision_heads=4,
    vision_feature_layer=-1,
    pad_to_square=True,
    init_std=None,
)
SHARD = 250
# loss weight per question kind: the whole-image question opens the image pathway early
KIND_WEIGHTS = {"biggest_colour": 4}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----- 1. scene cache ---------------------------------------------------------------------------


def shard_path(cache: Path, split: str, start: int) -> Path:
    return cache / split / f"shard_{start:06d}.npz"


def build_cache(cache: Path, split: str, n: int, width: int, height: int) -> None:
    """Render seeds ``lo .. lo+n`` of ``split`` in shards of SHARD scenes; existing shards are kept."""
    from part_point_ros.sim import render_scene

    lo, hi = SPLIT_SEEDS[split]
    if lo + n > hi:
        raise SystemExit(f"--{split} {n} scenes exceed the {split} seed range {lo}:{hi}")
    (cache / split).mkdir(parents=True, exist_ok=True)
    for start in range(lo, lo + n, SHARD):
        path = shard_path(cache, split, start)
        if path.exists():
            continue
        seeds = range(start, min(start + SHARD, lo + n))
        rgb, part_ids, facts = [], [], []
        for seed in seeds:
            scene = render_scene(seed, width=width, height=height)
            rgb.append(scene.rgb)
            part_ids.append(scene.part_ids)
            facts.append(SceneFacts.from_scene(scene).to_dict())
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            rgb=np.stack(rgb),  # (N, H, W, 3) uint8
            part_ids=np.stack(part_ids),  # (N, H, W) uint16
            facts=np.array(json.dumps(facts)),
        )
        tmp.rename(path)
        log(f"cache {split}: scenes {seeds.start}..{seeds.stop - 1} -> {path.name}")


def load_cache(cache: Path, split: str, n: int) -> tuple[np.ndarray, np.ndarray, list[SceneFacts]]:
    lo = SPLIT_SEEDS[split][0]
    rgb, part_ids, facts = [], [], []
    for start in range(lo, lo + n, SHARD):
        with np.load(shard_path(cache, split, start), allow_pickle=False) as z:
            rgb.append(z["rgb"])
            part_ids.append(z["part_ids"])
            facts += [SceneFacts.from_dict(d) for d in json.loads(str(z["facts"]))]
    rgb_all, ids_all = np.concatenate(rgb)[:n], np.concatenate(part_ids)[:n]
    return rgb_all, ids_all, facts[:n]


# ----- 2. model and packed sequences ------------------------------------------------------------


def build_initial(out: Path, seed: int, init_from: str | None = None, image_size: int | None = None) -> Path:
    """A fresh model with today's vocabulary; with ``init_from`` (a trained model directory of the
    same architecture), every weight is copied from it, token rows matched by their word (words it
    did not know keep their fresh random rows): training goes on with a grown vocabulary.
    ``image_size`` (default: ``init_from``'s, else ``MODEL_CONFIG``'s) may differ from ``init_from``'s:
    the vision tower's position embeddings are then resampled to the new patch grid (bicubic, as ViTs
    are fine-tuned at a higher resolution) and the model sees more image tokens of the same patch size."""
    from part_point_ros.backbones.tiny import build_tiny_llava

    if image_size is None and init_from is not None:
        image_size = model_image_size(init_from)
    config = {**MODEL_CONFIG, **({"image_size": image_size} if image_size else {})}
    path = build_tiny_llava(out, seed=seed, vocab_words=vocabulary(), **config)
    if init_from is None:
        return path
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    old_weights = LlavaForConditionalGeneration.from_pretrained(init_from, dtype=torch.float32).state_dict()
    old_vocab = AutoTokenizer.from_pretrained(init_from).get_vocab()
    new_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    rows = [(new_vocab[w], i) for w, i in old_vocab.items() if w in new_vocab]
    state = model.state_dict()
    for name, new in state.items():
        old = old_weights[name].float()  # KeyError: not the same architecture
        if old.shape == new.shape and old.shape[0] != len(old_vocab):
            new.copy_(old)
        elif name.endswith("position_embedding.weight") and old.shape[1:] == new.shape[1:]:
            new.copy_(resample_positions(old, new.shape[0]))
        elif old.shape[1:] == new.shape[1:] and old.shape[0] == len(old_vocab):  # token rows
            for n_row, o_row in rows:
                new[n_row] = old[o_row]
        else:
            raise SystemExit(
                f"--init-from {init_from}: {name} has shape {tuple(old.shape)}, not {tuple(new.shape)}"
            )
    model.load_state_dict(state)
    model.save_pretrained(path)
    log(f"initialised from {init_from}: {len(rows)} of {len(new_vocab)} token rows carried over")
    return path


def model_image_size(model_dir: str | Path) -> int:
    """The input size of a saved LLaVA model (its vision tower's ``image_size``)."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vision_config"]["image_size"])


def resample_positions(table: torch.Tensor, count: int) -> torch.Tensor:
    """CLIP position table (1 + g*g, D) -> (count = 1 + n*n, D): the class row kept, the g x g grid
    resampled bicubically to n x n."""
    old_side, new_side = math.isqrt(table.shape[0] - 1), math.isqrt(count - 1)
    if old_side**2 + 1 != table.shape[0] or new_side**2 + 1 != count:
        raise SystemExit(f"position tables {tuple(table.shape)} -> {count} rows are not 1 + square grids")
    grid = table[1:].T.reshape(1, -1, old_side, old_side)  # (g*g, D) -> (1, D, g, g)
    grid = torch.nn.functional.interpolate(
        grid, size=(new_side, new_side), mode="bicubic", align_corners=False
    )
    return torch.cat([table[:1], grid.reshape(table.shape[1], -1).T])  # (1, D, n, n) -> (n*n, D)


class Packer:
    """Token ids of the image prefix and of one question segment, as the LLaVA prompt tokenizes."""

    def __init__(self, processor) -> None:
        self.tok = processor.tokenizer
        self.n_image = int(processor.num_image_tokens) if hasattr(processor, "num_image_tokens") else None
        self.image_token = processor.image_token
        self.eos = int(self.tok.eos_token_id)
        self._segments: dict[str, list[int]] = {}
        self._words: dict[str, int] = {}

    def prefix(self, n_image: int) -> list[int]:
        return self.tok("USER: " + self.image_token * n_image, add_special_tokens=False)["input_ids"]

    def segment(self, question: str) -> list[int]:
        if question not in self._segments:
            ids = self.tok(f"\n{question} ASSISTANT:", add_special_tokens=False)["input_ids"]
            if self.tok.unk_token_id in ids:
                raise ValueError(f"question {question!r} has words the tokenizer does not know")
            self._segments[question] = ids
        return self._segments[question]

    def word(self, answer: str) -> int:
        if answer not in self._words:
            ids = self.tok(answer, add_special_tokens=False)["input_ids"]
            if len(ids) != 1 or ids[0] == self.tok.unk_token_id:
                raise ValueError(f"answer {answer!r} is not one known word: {ids}")
            self._words[answer] = ids[0]
        return self._words[answer]


def pack(packer: Packer, prefix: list[int], questions: list[list[VqaItem]]) -> dict[str, torch.Tensor]:
    """One row per image: prefix + segments (question, answer, eos). Returns ids, 4D mask, positions,
    and (row, position, target) triples for the loss: the last prompt token predicts the answer
    word, the answer word predicts eos."""
    n = len(prefix)
    rows, segs, poss, targets = [], [], [], []
    for b, items in enumerate(questions):
        ids, seg, pos = list(prefix), [0] * n, list(range(n))
        for s, item in enumerate(items, start=1):
            q = packer.segment(item.question)
            a = packer.word(item.answer)
            boost = int(KIND_WEIGHTS.get(item.kind, 1))
            targets.append((b, len(ids) + len(q) - 1, a, s, boost))
            targets.append((b, len(ids) + len(q), packer.eos, s, 1))
            ids += q + [a]
            seg += [s] * (len(q) + 1)
            pos += range(n, n + len(q) + 1)  # every segment restarts right after the image prefix
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), int(packer.tok.pad_token_id), dtype=torch.long)
    segment = torch.full((len(rows), length), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (r, s, p) in enumerate(zip(rows, segs, poss, strict=True)):
        input_ids[b, : len(r)] = torch.tensor(r)
        segment[b, : len(s)] = torch.tensor(s)
        position_ids[b, : len(p)] = torch.tensor(p)
    idx = torch.arange(length)
    causal = idx[None, :] <= idx[:, None]  # (S, S)
    same = segment[:, :, None] == segment[:, None, :]  # (B, S, S)
    to_prefix = (segment == 0)[:, None, :]  # (B, 1, S)
    allowed = causal[None] & (same | to_prefix) & (segment >= 0)[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # padding rows see themselves (no NaN)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )
    t = torch.tensor(targets, dtype=torch.long)  # (T, 5): row, position, target id, segment, weight
    return {
        "input_ids": input_ids,
        "attention_mask": mask[:, None],  # (B, S, S) -> (B, 1, S, S)
        "position_ids": position_ids,
        "targets": t,
    }


def forward_logits(model, pixel_values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(T, V) logits at the target positions of a packed batch."""
    out = model.model(
        input_ids=batch["input_ids"],
        pixel_values=pixel_values,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    t = batch["targets"]
    hidden = out.last_hidden_state[t[:, 0], t[:, 1]]  # (B, S, D) -> (T, D)
    return model.lm_head(hidden)


def pixel_tensor(processor, rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) float16, through the shipped image processor."""
    from PIL import Image

    out = []
    for i in range(0, len(rgb), 64):
        images = [Image.fromarray(x) for x in rgb[i : i + 64]]
        out.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"].half())
    return torch.cat(out)


def pick_questions(items: list[VqaItem], rng: np.random.Generator, others: int) -> list[VqaItem]:
    """All colour questions of the image (part, object, "anything red") plus ``others`` of the
    rest (existence, counting, side), in random order."""
    colour = [q for q in items if "colour" in q.kind]
    rest = [q for q in items if q not in colour]
    chosen = colour + [rest[i] for i in rng.choice(len(rest), size=min(others, len(rest)), replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


# ----- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def vqa_accuracy(model, packer, prefix, pixels, facts, answer_ids, batch_images=8) -> dict:
    """Greedy one-word answers (argmax over the answer words) for every question of every scene."""
    model.eval()
    per_kind, per_pair = defaultdict(list), defaultdict(list)
    records = []
    for i in range(0, len(facts), batch_images):
        qs = [make_questions(f) for f in facts[i : i + batch_images]]
        batch = pack(packer, prefix, qs)
        logits = forward_logits(model, pixels[i : i + batch_images].float(), batch)
        answer_rows = logits[0::2][:, answer_ids]  # even targets are the answer words
        pred = [answer_ids[j] for j in answer_rows.argmax(-1).tolist()]
        flat = [q for row in qs for q in row]
        for q, p in zip(flat, pred, strict=True):
            ok = p == packer.word(q.answer)
            per_kind[q.kind].append(ok)
            if q.kind == "part_colour":
                per_pair[f"{q.object_type}:{q.part}"].append(ok)
            records.append((q, ok))
    model.train()
    return {
        "per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()},
        "n_per_kind": {k: len(v) for k, v in per_kind.items()},
        "per_pair": {k: float(np.mean(v)) for k, v in sorted(per_pair.items())},
        "overall": float(np.mean([ok for _, ok in records])),
    }


def blind_baselines(train_facts: list[SceneFacts], eval_facts: list[SceneFacts]) -> dict:
    """Accuracy of answering without the image: majority answer per kind, and per question text."""
    by_kind, by_text = defaultdict(Counter), defaultdict(Counter)
    for f in train_facts:
        for q in make_questions(f):
            by_kind[q.kind][q.answer] += 1
            by_text[q.question][q.answer] += 1
    kind_hits, text_hits = defaultdict(list), defaultdict(list)
    for f in eval_facts:
        for q in make_questions(f):
            kind_hits[q.kind].append(by_kind[q.kind].most_common(1)[0][0] == q.answer)
            guess = by_text[q.question].most_common(1)[0][0] if by_text[q.question] else None
            text_hits[q.kind].append(guess == q.answer)
    return {
        "majority_per_kind": {k: float(np.mean(v)) for k, v in kind_hits.items()},
        "majority_per_question": {k: float(np.mean(v)) for k, v in text_hits.items()},
    }


# ----- 3. training loop ---------------------------------------------------------------------------


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def train(args) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    init_dir = run / "init"
    if not (init_dir / "config.json").exists():
        build_initial(init_dir, args.seed, args.init_from, args.image_size)
    model = LlavaForConditionalGeneration.from_pretrained(init_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(init_dir)
    n_image = model.config.image_seq_length
    packer = Packer(processor)
    prefix = packer.prefix(n_image)
    check_packing(processor, packer, prefix)
    answer_ids = sorted({packer.word(a) for a in answer_vocabulary()})

    log("loading the scene cache")
    rgb, _, train_facts = load_cache(Path(args.cache), "train", args.train)
    val_rgb, _, val_facts = load_cache(Path(args.cache), "val", args.val)
    pixels = pixel_tensor(processor, rgb)
    val_pixels = pixel_tensor(processor, val_rgb)
    questions = [make_questions(f) for f in train_facts]
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{len(train_facts)} scenes, {sum(map(len, questions))} questions, {n_params / 1e6:.2f} M params")

    if args.freeze_vision:  # as LLaVA-1.5 does: the (pretrained) vision tower stays as it is
        model.model.vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step = 0
    state_path = run / "state.pt"
    if state_path.exists():
        model.load_state_dict(load_file(run / "model.safetensors"))
        state = torch.load(state_path, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resumed at step {step}")
    model.train()
    history_path = run / "history.jsonl"
    t0, losses = time.time(), []
    stop = min(args.steps, args.stop_after or args.steps)
    while step < stop:
        rng = np.random.default_rng([args.seed, step])  # the batch of a step depends on the step only
        idx = rng.choice(len(train_facts), size=args.batch, replace=False)
        qs = [pick_questions(questions[i], rng, args.others) for i in idx]
        batch = pack(packer, prefix, qs)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        logits = forward_logits(model, pixels[idx].float(), batch)
        weight = batch["targets"][:, 4].float()
        loss = (
            torch.nn.functional.cross_entropy(logits, batch["targets"][:, 2], reduction="none") * weight
        ).sum()
        loss = loss / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            rate = args.log_every / (time.time() - t0)
            log(
                f"step {step} loss {np.mean(losses):.4f} lr {opt.param_groups[0]['lr']:.2e} {rate:.2f} step/s"
            )
            t0, losses = time.time(), []
        if step % args.eval_every == 0 or step == args.steps:
            acc = vqa_accuracy(model, packer, prefix, val_pixels, val_facts, answer_ids)
            log(f"step {step} val " + " ".join(f"{k} {v:.3f}" for k, v in sorted(acc["per_kind"].items())))
            with open(history_path, "a") as fh:
                fh.write(json.dumps({"step": step, "val": acc["per_kind"], "overall": acc["overall"]}) + "\n")
        if step % args.save_every == 0 or step in (args.steps, stop):
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
            torch.save({"optimizer": opt.state_dict(), "step": step}, run / "state.tmp.pt")
            (run / "state.tmp.pt").rename(state_path)
            log(f"checkpoint at step {step}")


# ----- 2b. vision pretraining (optional first stage) ---------------------------------------------


def presence_labels(facts: list[SceneFacts]) -> torch.Tensor:
    """(N, L) multi-hot image-level labels: which object:part pairs, and which pair in which colour,
    are visible (>= MIN_PART_FRACTION of the image). Image level only: no location anywhere."""
    from part_point_ros.sim.catalog import PALETTE, object_part_pairs
    from part_point_ros.sim.vqa import MIN_PART_FRACTION

    pairs = {pair: i for i, pair in enumerate(object_part_pairs())}
    colours = {c: i for i, c in enumerate(PALETTE)}
    labels = torch.zeros(len(facts), len(pairs) * (1 + len(colours)))
    for n, f in enumerate(facts):
        for p in f.parts:
            if p.pixel_count >= MIN_PART_FRACTION * f.width * f.height:
                i = pairs[(p.object_type, p.part)]
                labels[n, i] = 1.0
                labels[n, len(pairs) + i * len(colours) + colours[p.colour]] = 1.0
    return labels


def pretrain_vision(args) -> None:
    """``--stage vision``: the CLIP vision tower alone learns image-level presence labels ("is there a red mug
    handle?", all at once) through a linear probe on its patch tokens, pooled by a smooth maximum
    (logsumexp) over the patches; then the whole LLaVA model is saved for the VQA stage
    (``--init-from <run>/vision``). Like CLIP's pretraining, the supervision names what is in the
    image, never where: the smooth maximum is what makes the patch features part detectors."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    if not args.init_from:
        raise SystemExit("--stage vision needs --init-from (the model whose vision tower is pretrained)")
    run = Path(args.run)
    out = run / "vision"
    start = build_initial(run / "init", args.seed, args.init_from, args.image_size)
    model = LlavaForConditionalGeneration.from_pretrained(start, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(start)
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    rgb, _, facts = load_cache(Path(args.cache), "train", args.train)
    val_rgb, _, val_facts = load_cache(Path(args.cache), "val", args.val)
    pixels, val_pixels = pixel_tensor(processor, rgb), pixel_tensor(processor, val_rgb)
    labels, val_labels = presence_labels(facts), presence_labels(val_facts)
    width = tower.config.hidden_size
    probe = torch.nn.Linear(width, labels.shape[1])
    params = [*tower.parameters(), *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.01, betas=(0.9, 0.98))
    pos = labels.mean(0).clamp(1e-3, 0.5)
    pos_weight = ((1 - pos) / pos).sqrt()  # rare labels count more

    def logits_of(px: torch.Tensor) -> torch.Tensor:
        feats = tower(px.float(), output_hidden_states=True).hidden_states[layer][:, 1:]  # (B, P, D)
        return torch.logsumexp(probe(feats), dim=1) - math.log(feats.shape[1])  # (B, P, L) -> (B, L)

    def evaluate_probe() -> float:
        tower.eval()
        with torch.no_grad():
            pred = torch.cat([logits_of(val_pixels[i : i + 64]) for i in range(0, len(val_pixels), 64)]) > 0
        tower.train()
        tp = (pred & (val_labels > 0)).sum().item()
        return 2 * tp / max(1, pred.sum().item() + (val_labels > 0).sum().item())  # micro F1

    log(f"vision pretraining: {len(facts)} images, {labels.shape[1]} labels, val F1 {evaluate_probe():.3f}")
    rng = np.random.default_rng([args.seed, 99])
    t0 = time.time()
    last = min(args.vision_steps, args.stop_after or args.vision_steps)  # the schedule is --vision-steps long
    for step in range(1, last + 1):
        idx = rng.choice(len(facts), size=args.vision_batch, replace=False)
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1, args.vision_steps, args.vision_lr, 50)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits_of(pixels[idx]), labels[idx], pos_weight=pos_weight
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.log_every == 0:
            log(f"vision step {step} loss {loss.item():.4f} {args.log_every / (time.time() - t0):.2f} step/s")
            t0 = time.time()
        if step % args.eval_every == 0 or step == last:
            log(f"vision step {step} val F1 {evaluate_probe():.3f}")
            model.save_pretrained(out)  # the latest tower is usable while training goes on
            processor.save_pretrained(out)
    log(f"vision tower pretrained -> {out}")


def check_packing(processor, packer: Packer, prefix: list[int]) -> None:
    """The packed ids must be exactly what the processor makes of the adapter's prompt."""
    question = "what colour is the handle of the mug?"
    prompt = f"USER: <image>\n{question} ASSISTANT:"
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    from PIL import Image

    ids = processor(images=[Image.fromarray(image)], text=[prompt], return_tensors="pt")["input_ids"][
        0
    ].tolist()
    mine = prefix + packer.segment(question)
    if ids != mine:
        raise SystemExit(f"packing does not match the processor:\n{ids}\n{mine}")


# ----- 4. ship and evaluate ---------------------------------------------------------------------


def ship(args) -> None:
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    run = Path(args.run)
    model = LlavaForConditionalGeneration.from_pretrained(run / "init", dtype=torch.float32)
    model.load_state_dict(load_file(run / "model.safetensors"))
    model = model.half().eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(run / "init").save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    log(f"shipped {out} ({size:.2f} MB, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")


def attention_localisation(model_dir: str, rgb, part_ids, facts, max_questions: int) -> dict:
    """Where the last input token looks when a part-colour question is asked, per (layer, head).

    Per question and head: the attention over the image tokens (renormalised to sum to 1), the
    share of it inside the asked part (each patch weighted by the fraction the part covers) and
    inside the whole object, against the part's and the object's share of the image tokens (what
    uniform attention would give); whether the argmax patch touches the part. Plus the
    attention-pointing baseline of the method: the 3 best heads (ranked on the even questions by
    argmax hits), each Gaussian-smoothed (7x7, sigma 1), summed, argmax, scored on the odd ones.
    """
    from scipy.ndimage import gaussian_filter

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.types import HeadRef

    adapter = load_backbone(model_dir, dtype="float32")
    info = adapter.info
    heads = [HeadRef(layer, h) for layer in range(info.num_layers) for h in range(info.num_heads)]
    maps, part_cover, object_cover, image_share = [], [], [], []
    for i, f in enumerate(facts):
        objects = {o.object_id: o for o in f.objects}
        parts = {p.part_id: p for p in f.parts}
        for q in make_questions(f):
            if q.kind != "part_colour" or len(maps) >= max_questions:
                continue
            cap = adapter.capture(rgb[i], q.question, heads, truncate=False)
            att = cap.last_token_attention()  # (k, P)
            image_share.append(att.sum(-1).numpy())
            maps.append((att / att.sum(-1, keepdim=True)).numpy())
            own = objects[parts[q.part_ids[0]].object_id].part_ids
            part_cover.append(cap.grid.resample_mask(np.isin(part_ids[i], q.part_ids)).reshape(-1))  # (P,)
            object_cover.append(cap.grid.resample_mask(np.isin(part_ids[i], own)).reshape(-1))  # (P,)
    grid = cap.grid
    att_a = np.stack(maps)  # (Q, k, P)
    part_a, obj_a = np.stack(part_cover), np.stack(object_cover)  # (Q, P)
    mass = np.einsum("qkp,qp->qk", att_a, part_a)
    mass_obj = np.einsum("qkp,qp->qk", att_a, obj_a)
    touched = part_a > 0  # (Q, P)
    hit = np.take_along_axis(touched, att_a.argmax(-1), axis=1)  # (Q, k)
    share, share_obj = part_a.mean(-1), obj_a.mean(-1)  # (Q,)
    heads_out = [
        {
            "head": str(ref),
            "image_attention": float(np.mean(image_share, axis=0)[j]),
            "mass_in_part": float(mass[:, j].mean()),
            "lift_part": float(mass[:, j].mean() / share.mean()),
            "mass_in_object": float(mass_obj[:, j].mean()),
            "lift_object": float(mass_obj[:, j].mean() / share_obj.mean()),
            "argmax_hit": float(hit[:, j].mean()),
        }
        for j, ref in enumerate(heads)
    ]
    even, odd = np.arange(0, len(att_a), 2), np.arange(1, len(att_a), 2)
    top = np.argsort(-hit[even].mean(0))[:3]
    smooth = gaussian_filter(
        att_a[odd][:, top].reshape(len(odd), len(top), grid.rows, grid.cols),  # (Q, k, P) -> (Q, 3, R, C)
        sigma=(0, 0, 1, 1),
        truncate=3.0,
    ).sum(1)
    peak = smooth.reshape(len(odd), -1).argmax(-1)  # (Q, R, C) -> (Q, P) -> (Q,)
    return {
        "questions": len(att_a),
        "part_share_of_tokens": float(share.mean()),
        "object_share_of_tokens": float(share_obj.mean()),
        "argmax_hit_chance": float(touched.mean()),
        "attention_pointing": {
            "heads": [str(heads[j]) for j in top],
            "hit": float(touched[odd, peak].mean()),
            "chance": float(touched[odd].mean()),
        },
        "heads": sorted(heads_out, key=lambda h: -h["lift_part"]),
    }


def token_probe(model_dir: str, train_data, test_data, *, steps: int = 400, min_cover: float = 0.4) -> dict:
    """How well the object:part under an image token can be read, linearly, from what the model holds
    there: the vision tower's output features, and the keys (RoPE applied, as the heads see them) of
    every head of the last two decoder layers. An evaluation probe (it reads masks; the model never
    does): a softmax-linear classifier over the 27 pairs + "no part", fitted on the tokens of the train
    scenes that one class covers >= ``min_cover`` of, scored on the test scenes' tokens as the mean
    recall over the pairs seen >= 3 times (background excluded) and the accuracy on part tokens.
    Image tokens precede the question, so the question does not change them."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.sim.catalog import object_part_pairs
    from part_point_ros.types import HeadRef

    adapter = load_backbone(model_dir, dtype="float32")
    info = adapter.info
    heads = [
        HeadRef(layer, h)
        for layer in range(info.num_layers - 2, info.num_layers)
        for h in range(info.num_heads)
    ]
    pairs = {pair: i for i, pair in enumerate(object_part_pairs())}
    n_classes = len(pairs) + 1  # + "no part" (table, background)

    def features(data) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rgb, part_ids, facts = data
        feats: dict[str, list[torch.Tensor]] = {"vision tower": [], "keys, last two layers": []}
        labels = []
        seen: dict[str, torch.Tensor] = {}
        layer = adapter.model.config.vision_feature_layer  # the layer LLaVA passes on (CLS dropped below)
        hook = adapter.model.model.vision_tower.register_forward_hook(
            lambda _m, _i, out: seen.update(tokens=out.hidden_states[layer][0, 1:])
        )
        try:
            for i, f in enumerate(facts):
                cap = adapter.capture(rgb[i], "what colour is the mug?", heads)
                feats["vision tower"].append(seen["tokens"].detach())
                keys = cap.image_keys  # (k, P, d)
                feats["keys, last two layers"].append(
                    keys.permute(1, 0, 2).reshape(keys.shape[1], -1)
                )  # (P, k*d)
                cover = np.zeros((n_classes, cap.grid.rows * cap.grid.cols))
                for part in f.parts:
                    cover[pairs[(part.object_type, part.part)]] += cap.grid.resample_mask(
                        part_ids[i] == part.part_id
                    ).reshape(-1)
                cover[-1] = 1.0 - cover[:-1].sum(0)
                labels.append(torch.as_tensor(np.where(cover.max(0) >= min_cover, cover.argmax(0), -1)))
        finally:
            hook.remove()
        return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)

    x_train, y_train = features(train_data)
    x_test, y_test = features(test_data)
    keep, keep_test = y_train >= 0, y_test >= 0
    y, yt = y_train[keep], y_test[keep_test]
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = (counts.sum() / (counts + 1.0)).sqrt()  # rare parts count more than the table
    report: dict = {"train_tokens": int(keep.sum()), "test_tokens": int(keep_test.sum())}
    gen = torch.Generator().manual_seed(0)
    for name in x_train:
        x = x_train[name][keep].float()
        mean, std = x.mean(0), x.std(0) + 1e-5
        x, xt = (x - mean) / std, (x_test[name][keep_test].float() - mean) / std
        probe = torch.nn.Linear(x.shape[1], n_classes)
        torch.nn.init.normal_(probe.weight, std=0.01, generator=gen)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):  # full batch
            loss = torch.nn.functional.cross_entropy(probe(x), y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = probe(xt).argmax(1)
        on_part = yt < n_classes - 1
        recalls = [
            float((pred[yt == c] == c).float().mean()) for c in range(n_classes - 1) if (yt == c).sum() >= 3
        ]
        report[name] = {
            "mean_recall_over_pairs": float(np.mean(recalls)),
            "pairs_scored": len(recalls),
            "accuracy_on_part_tokens": float((pred[on_part] == yt[on_part]).float().mean()),
            "chance_mean_recall": 1.0 / n_classes,
        }
    return report


def evaluate(args) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    cache = Path(args.cache)
    rgb, part_ids, facts = load_cache(cache, "test", args.test)
    train_rgb, train_ids, train_facts = load_cache(cache, "train", args.train)
    report: dict = {"test_seeds": f"{SPLIT_SEEDS['test'][0]}:{SPLIT_SEEDS['test'][0] + args.test}"}
    report["blind"] = blind_baselines(train_facts, facts)
    untrained = Path(args.run) / "random"  # the architecture with fresh random weights
    if not (untrained / "config.json").exists():
        build_initial(untrained, args.seed, image_size=args.image_size or model_image_size(args.out))
    for name, model_dir in (("trained", args.out), ("untrained", str(untrained))):
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(model_dir)
        packer = Packer(processor)
        prefix = packer.prefix(model.config.image_seq_length)
        answer_ids = sorted({packer.word(a) for a in answer_vocabulary()})
        pixels = pixel_tensor(processor, rgb)
        report[f"vqa_{name}"] = vqa_accuracy(model, packer, prefix, pixels, facts, answer_ids)
        log(f"{name}: " + json.dumps(report[f"vqa_{name}"]["per_kind"]))
        report[f"attention_{name}"] = attention_localisation(
            model_dir, rgb, part_ids, facts, args.attn_questions
        )
        log(f"{name} attention: " + json.dumps(report[f"attention_{name}"]["heads"][:4]))
    if args.probe_scenes:
        n = min(args.probe_scenes, len(train_facts))  # the first --train scenes are loaded
        train_scenes = (train_rgb[:n], train_ids[:n], train_facts[:n])
        test_scenes = (rgb[:100], part_ids[:100], facts[:100])
        for name, model_dir in (("trained", args.out), ("untrained", str(untrained))):
            report[f"token_probe_{name}"] = token_probe(model_dir, train_scenes, test_scenes)
            log(f"{name} token probe: " + json.dumps(report[f"token_probe_{name}"]))
    Path(args.report).write_text(json.dumps(report, indent=2))
    log(f"report -> {args.report}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["all", "cache", "vision", "train", "ship", "evaluate"], default="all")
    p.add_argument("--cache", default="/tmp/tiny_tabletop/cache", help="rendered scene shards")
    p.add_argument("--run", default="/tmp/tiny_tabletop/run", help="initial model, checkpoints, history")
    p.add_argument("--out", default="models/tiny-tabletop-llava", help="shipped fp16 HF directory")
    p.add_argument("--report", default="/tmp/tiny_tabletop/report.json")
    p.add_argument("--train", type=int, default=8000, help="train scenes (seeds 0..)")
    p.add_argument("--val", type=int, default=150, help="val scenes (seeds 100000..)")
    p.add_argument("--test", type=int, default=250, help="test scenes (seeds 200000..)")
    p.add_argument("--init-from", default=None, help="go on from this trained model (vocabulary may grow)")
    p.add_argument("--stop-after", type=int, help="--stage train / vision: stop at this step of the schedule")
    p.add_argument("--freeze-vision", action="store_true", help="--stage train: keep the vision tower fixed")
    p.add_argument("--vision-steps", type=int, default=600, help="--stage vision: steps")
    p.add_argument("--vision-batch", type=int, default=32, help="--stage vision: images per step")
    p.add_argument("--vision-lr", type=float, default=1e-3, help="--stage vision: peak learning rate")
    p.add_argument(
        "--image-size",
        type=int,
        help=f"model input size (default: --init-from's, else {MODEL_CONFIG['image_size']})",
    )
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--others", type=int, default=5, help="non-colour questions per image and step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--attn-questions", type=int, default=400)
    p.add_argument(
        "--probe-scenes",
        type=int,
        default=300,
        help="--stage evaluate: train scenes of the token probe (0: skip)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.stage in ("all", "cache"):
        for split in ("val", "test", "train"):
            build_cache(Path(args.cache), split, getattr(args, split), args.width, args.height)
    if args.stage == "vision":
        pretrain_vision(args)
    if args.stage in ("all", "train"):
        train(args)
    if args.stage in ("all", "ship"):
        ship(args)
    if args.stage in ("all", "evaluate"):
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
