"""The tiny-tabletop LLaVA: its architecture, a fresh or carried-over start, and shipping it in fp16."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from part_point_ros.tabletop.scenes import log

MODEL_CONFIG = dict(
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    intermediate_size=384,
    image_size=160,
    patch_size=8,
    vision_hidden_size=128,
    vision_layers=3,
    vision_heads=4,
    vision_feature_layer=-1,
    pad_to_square=True,
    init_std=None,
)


def model_image_size(model_dir: str | Path) -> int:
    """The input size of a saved LLaVA model (its vision tower's ``image_size``)."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vision_config"]["image_size"])


def resample_positions(table: torch.Tensor, count: int) -> torch.Tensor:
    """CLIP position table (1 + g*g, D) -> (count = 1 + n*n, D): the class row kept, the g x g grid
    resampled bicubically to n x n."""
    old_side, new_side = math.isqrt(table.shape[0] - 1), math.isqrt(count - 1)
    if old_side**2 + 1 != table.shape[0] or new_side**2 + 1 != count:
        raise ValueError(f"position tables {tuple(table.shape)} -> {count} rows are not 1 + square grids")
    grid = table[1:].T.reshape(1, -1, old_side, old_side)  # (g*g, D) -> (1, D, g, g)
    grid = torch.nn.functional.interpolate(
        grid, size=(new_side, new_side), mode="bicubic", align_corners=False
    )
    return torch.cat([table[:1], grid.reshape(table.shape[1], -1).T])  # (1, D, n, n) -> (n*n, D)


def build_initial(
    out: Path,
    seed: int,
    words,
    init_from: str | None = None,
    image_size: int | None = None,
    tower_from: str | None = None,
) -> Path:
    """A fresh model knowing ``words``; with ``init_from`` (a trained model directory of the same
    architecture), every weight is copied from it, token rows matched by their word (words it did not
    know keep their fresh random rows), so training goes on with a grown vocabulary. ``image_size``
    (default: ``init_from``'s, else ``MODEL_CONFIG``'s) may differ from ``init_from``'s: the vision
    tower's position embeddings are then resampled to the new patch grid (bicubic). ``tower_from``
    (a model directory of the same architecture and image size): its vision tower replaces
    ``init_from``'s, so a language model trained on one tower goes on with a retrained one."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    if tower_from is not None and init_from is None:
        raise ValueError("--tower-from replaces the tower of --init-from's model: give --init-from too")
    if image_size is None and init_from is not None:
        image_size = model_image_size(init_from)
    config = {**MODEL_CONFIG, **({"image_size": image_size} if image_size else {})}
    path = build_tiny_llava(out, seed=seed, vocab_words=words, **config)
    if init_from is None:
        return path
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    old_weights = LlavaForConditionalGeneration.from_pretrained(init_from, dtype=torch.float32).state_dict()
    old_vocab = AutoTokenizer.from_pretrained(init_from).get_vocab()
    new_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    rows = [(new_vocab[w], i) for w, i in old_vocab.items() if w in new_vocab]
    state = model.state_dict()
    for name, new in state.items():
        if name not in old_weights:
            raise ValueError(f"--init-from {init_from}: no weight {name}; not the same architecture")
        old = old_weights[name].float()
        if old.shape == new.shape and old.shape[0] != len(old_vocab):
            new.copy_(old)
        elif name.endswith("position_embedding.weight") and old.shape[1:] == new.shape[1:]:
            new.copy_(resample_positions(old, new.shape[0]))
        elif old.shape[1:] == new.shape[1:] and old.shape[0] == len(old_vocab):  # token rows
            for n_row, o_row in rows:
                new[n_row] = old[o_row]
        else:
            raise ValueError(
                f"--init-from {init_from}: {name} has shape {tuple(old.shape)}, not {tuple(new.shape)}"
            )
    if tower_from is not None:
        replace_tower(state, tower_from)
    model.load_state_dict(state)
    model.save_pretrained(path)
    log(f"initialised from {init_from}: {len(rows)} of {len(new_vocab)} token rows carried over"
        + (f"; vision tower from {tower_from}" if tower_from else ""))  # fmt: skip
    return path


TOWER_PREFIX = "model.vision_tower."


def replace_tower(state: dict[str, torch.Tensor], tower_from: str) -> None:
    """Copy every vision-tower weight of the model directory ``tower_from`` into ``state`` (in
    place); a missing or differently shaped weight is an error (not the same tower)."""
    from transformers import LlavaForConditionalGeneration

    tower = {
        name: weight
        for name, weight in LlavaForConditionalGeneration.from_pretrained(tower_from, dtype=torch.float32)
        .state_dict()
        .items()
        if name.startswith(TOWER_PREFIX)
    }
    names = [name for name in state if name.startswith(TOWER_PREFIX)]
    if not names:
        raise ValueError(f"no weight starts with {TOWER_PREFIX!r}: not a LLaVA state dict")
    for name in names:
        if name not in tower or tower[name].shape != state[name].shape:
            found = "missing" if name not in tower else f"shape {tuple(tower[name].shape)}"
            raise ValueError(f"--tower-from {tower_from}: {name} is {found}, not {tuple(state[name].shape)}")
        state[name].copy_(tower[name])


def pixel_tensor(processor, rgb) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) float16, through the model's own image processor."""
    from PIL import Image

    out = []
    for i in range(0, len(rgb), 64):
        images = [Image.fromarray(x) for x in rgb[i : i + 64]]
        out.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"].half())
    return torch.cat(out)


def ship(model_dir: Path, weights: Path, out: Path, *, extra_config: dict | None = None) -> Path:
    """Save ``model_dir``'s architecture with the ``weights`` (safetensors) in fp16 to ``out``
    (model, processor, tokenizer, chat template): what ``from_pretrained(out)`` loads.
    ``extra_config`` goes into config.json (e.g. the model's own text-pointing format)."""
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(load_file(weights))
    for key, value in (extra_config or {}).items():
        setattr(model.config, key, value)
    model = model.half().eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    log(f"shipped {out} ({size:.2f} MB, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")
    return out
