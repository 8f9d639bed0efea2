"""Stage ``language``: the stand-in for instruction tuning, with the vision tower frozen (as LLaVA-1.5
keeps CLIP frozen): one-word questions whose answers need the named part (``sim.vqa.make_questions``:
part colours with twins named by colour, reverse look-ups, ...) and object-level pointing answered in
text, Molmo's way (``sim.vqa.pointing_items``: "point to the red mug." -> ``<point x="37" y="52">``).
Never a part-level point, box or mask: locating parts is the head's job.

Packing: all questions about one image share one sequence: the image prefix, then one segment per
question. A 4D block mask lets a segment see the prefix and itself only, and each segment's position
ids restart right after the image, so every segment is computed exactly as the single-question prompt
``USER: <image>\\n{question} ASSISTANT:`` (checked against the processor's own tokenisation at start).
The loss is the cross-entropy on every answer token and the end-of-sequence token.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from part_point_ros.sim.vqa import (
    ALWAYS_ASKED,
    SceneFacts,
    VqaItem,
    answer_vocabulary,
    make_questions,
    pointing_items,
)
from part_point_ros.tabletop import scenes
from part_point_ros.tabletop.schedule import StageOptions, load_state, lr_at, save_state

POINTING_FORMAT = "molmo"  # written into the shipped config.json: how the model answers "point to ..."


@dataclass
class LanguageOptions(StageOptions):
    steps: int = 1500
    batch: int = 8
    lr: float = 5e-4
    others: int = 5  # non-colour questions per image and step
    tower_from: str | None = None  # a model directory whose vision tower replaces init_from's


class Packer:
    """Token ids of the image prefix, of one question segment and of an answer, as the processor
    tokenizes the LLaVA prompt."""

    def __init__(self, processor) -> None:
        self.tok = processor.tokenizer
        self.image_token = processor.image_token
        self.eos = int(self.tok.eos_token_id)
        self._cache: dict[str, list[int]] = {}

    def prefix(self, n_image: int) -> list[int]:
        return self.tok("USER: " + self.image_token * n_image, add_special_tokens=False)["input_ids"]

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if not ids or self.tok.unk_token_id in ids:
                raise ValueError(f"{text!r} has words the tokenizer does not know")
            self._cache[text] = ids
        return self._cache[text]

    def segment(self, question: str) -> list[int]:
        return self._ids(f"\n{question} ASSISTANT:")

    def answer(self, answer: str) -> list[int]:
        return self._ids(answer)


def pack(packer: Packer, prefix: list[int], questions: list[list[VqaItem]]) -> dict[str, torch.Tensor]:
    """One row per image: prefix + segments (question, answer, eos). Returns ids, 4D mask, positions
    and the loss targets (row, position, target id, segment, first-answer-token flag)."""
    n = len(prefix)
    rows, segs, poss, targets = [], [], [], []
    for b, items in enumerate(questions):
        ids, seg, pos = list(prefix), [0] * n, list(range(n))
        for s, item in enumerate(items, start=1):
            q, a = packer.segment(item.question), packer.answer(item.answer)
            start = len(ids) + len(q) - 1  # the last prompt token predicts the first answer token
            for j, target in enumerate([*a, packer.eos]):
                targets.append((b, start + j, target, s, int(j == 0)))
            ids += q + a
            seg += [s] * (len(q) + len(a))
            pos += range(n, n + len(q) + len(a))  # every segment restarts right after the image
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
    return {
        "input_ids": input_ids,
        "attention_mask": mask[:, None],  # (B, S, S) -> (B, 1, S, S)
        "position_ids": position_ids,
        "targets": torch.tensor(targets, dtype=torch.long),  # (T, 5)
    }


def forward_logits(model, pixel_values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(T, V) logits at the target positions of a packed batch (on the model's device)."""
    device = model.device
    out = model.model(
        input_ids=batch["input_ids"].to(device),
        pixel_values=pixel_values.to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        use_cache=False,
    )
    t = batch["targets"].to(device)
    return model.lm_head(out.last_hidden_state[t[:, 0], t[:, 1]])  # (B, S, D) -> (T, D) -> (T, V)


def check_packing(processor, packer: Packer, prefix: list[int], size: tuple[int, int]) -> None:
    """The packed ids must be exactly what the processor makes of the adapter's prompt."""
    from PIL import Image

    for question in ("what colour is the handle of the mug?", "point to the red mug."):
        prompt = f"USER: <image>\n{question} ASSISTANT:"
        image = Image.fromarray(np.zeros((size[1], size[0], 3), dtype=np.uint8))
        ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        if ids != prefix + packer.segment(question):
            raise RuntimeError(f"packing does not match the processor for {question!r}")


def image_items(facts: SceneFacts, rng: np.random.Generator, others: int) -> list[VqaItem]:
    """The questions of one image in one step: every colour question, every absent query and every
    pointing item, plus ``others`` of the rest (existence, counting, side), in random order."""
    items = make_questions(facts)
    colour = [q for q in items if "colour" in q.kind or q.kind in ALWAYS_ASKED]  # + query_absent
    rest = [q for q in items if q not in colour]
    picked = [rest[i] for i in rng.choice(len(rest), size=min(others, len(rest)), replace=False)]
    chosen = colour + picked + pointing_items(facts)
    return [chosen[i] for i in rng.permutation(len(chosen))]


@torch.no_grad()
def answer_accuracy(model, packer, prefix, pixels, scene_set, batch_images: int = 8) -> dict:
    """Per question kind on held-out scenes: one-word answers (argmax over the answer words, teacher
    forcing) and, for "point to ...", whether the greedy x and y numbers land on the object."""
    model.eval()
    answer_ids = sorted({packer.answer(a)[0] for a in answer_vocabulary()})
    number_ids = [packer.answer(str(v))[0] for v in range(100)]
    per_kind, per_pair = defaultdict(list), defaultdict(list)
    for i in range(0, len(scene_set), batch_images):
        facts = scene_set.facts[i : i + batch_images]
        qs = [make_questions(f) + pointing_items(f) for f in facts]
        batch = pack(packer, prefix, qs)
        logits = forward_logits(model, pixels[i : i + batch_images].float(), batch)
        t = batch["targets"]
        firsts = torch.nonzero(t[:, 4]).flatten().tolist()  # the first answer token of each question
        flat = [(row, q) for row, items in enumerate(qs) for q in items]
        for (row, q), start in zip(flat, firsts, strict=True):
            if q.kind == "point_object":  # <, point, x, =", X, ", y, =", Y, ">
                x = int(logits[start + 4, number_ids].argmax())
                y = int(logits[start + 8, number_ids].argmax())
                f = facts[row]
                u = min(f.width - 1, int((x + 0.5) / 100 * f.width))
                v = min(f.height - 1, int((y + 0.5) / 100 * f.height))
                ok = bool(np.isin(scene_set.part_ids[i + row][v, u], q.part_ids))
            else:
                ok = answer_ids[int(logits[start, answer_ids].argmax())] == packer.answer(q.answer)[0]
            per_kind[q.kind].append(ok)
            if q.kind == "part_colour":
                per_pair[f"{q.object_type}:{q.part}"].append(ok)
    model.train()
    return {
        "per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()},
        "n_per_kind": {k: len(v) for k, v in per_kind.items()},
        "per_pair": {k: float(np.mean(v)) for k, v in sorted(per_pair.items())},
    }


def train_language(opts: LanguageOptions, words) -> None:
    """Run (or resume) the language stage from ``opts.init_from`` (the vision stage's model), its
    vocabulary grown to ``words`` (every weight and known word's row carried over, ``build_initial``);
    with ``opts.tower_from``, the tower of that model directory instead of ``init_from``'s (a trained
    language model goes on over a retrained tower)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from part_point_ros.tabletop.model import build_initial, pixel_tensor

    if not opts.init_from:
        raise ValueError("the language stage needs --init-from (the vision stage's <run>/vision)")
    run = Path(opts.run)
    run.mkdir(parents=True, exist_ok=True)
    init = run / "init"
    if not (init / "config.json").exists():
        build_initial(init, opts.seed, words, opts.init_from, tower_from=opts.tower_from)  # fixed from here
    model = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(init)
    packer = Packer(processor)
    prefix = packer.prefix(model.config.image_seq_length)
    train_set = scenes.load(opts.cache, "train", opts.train)
    val_set = scenes.load(opts.cache, "val", opts.val)
    check_packing(processor, packer, prefix, (train_set.facts[0].width, train_set.facts[0].height))
    pixels, val_pixels = pixel_tensor(processor, train_set.rgb), pixel_tensor(processor, val_set.rgb)
    model.to(torch.device(opts.device))
    model.model.vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=0.01, betas=(0.9, 0.98))
    modules = {"model": model}
    step = load_state(run, modules, opt)
    scenes.log(f"language stage: {len(train_set)} scenes, {sum(p.numel() for p in trainable) / 1e6:.2f} M "
               f"trainable parameters" + (f", resumed at step {step}" if step else ""))  # fmt: skip
    model.train()
    history = run / "history.jsonl"
    t0, losses, started = time.time(), [], time.monotonic()
    stop = min(opts.steps, opts.stop_after or opts.steps)
    while step < stop:
        rng = np.random.default_rng([opts.seed, step])  # the batch of a step depends on the step only
        idx = rng.choice(len(train_set), size=opts.batch, replace=False)
        batch = pack(packer, prefix, [image_items(train_set.facts[i], rng, opts.others) for i in idx])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, opts.steps, opts.lr, opts.warmup)
        logits = forward_logits(model, pixels[idx].float(), batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["targets"][:, 2].to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if opts.time_limit and time.monotonic() - started >= opts.time_limit:
            stop = step  # evaluated and checkpointed below, like --stop-after
        if step % 50 == 0:
            scenes.log(
                f"language step {step} loss {np.mean(losses):.4f} {50 / (time.time() - t0):.2f} step/s"
            )
            t0, losses = time.time(), []
        if step % opts.eval_every == 0 or step == stop:
            acc = answer_accuracy(model, packer, prefix, val_pixels, val_set)
            scenes.log(
                f"language step {step} val "
                + " ".join(f"{k} {v:.3f}" for k, v in sorted(acc["per_kind"].items()))
            )
            with open(history, "a") as fh:
                fh.write(json.dumps({"step": step, "val": acc}) + "\n")
        if step % opts.save_every == 0 or step == stop:
            save_state(run, modules, opt, step)


def ship_run(run: Path, out: Path) -> Path:
    """The language-stage run's model in fp16 at ``out``, with its pointing format in config.json."""
    from part_point_ros.tabletop.model import ship

    return ship(Path(run) / "init", Path(run) / "model.safetensors", out,
                extra_config={"pointing_format": POINTING_FORMAT})  # fmt: skip
