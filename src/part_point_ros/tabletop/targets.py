"""What is under each image token: the dense targets of the vision stage (and the token probe).

The stand-in for what a web-scale pretrained vision tower (CLIP, SigLIP) holds in each patch token:
which object:part it shows, in which colour, and which object (type, naming colour) that part
belongs to, each as the *share of the token's pixels* ("soft by coverage"). The part classes are also
given per quarter of a token (2x2 sub-cells), so a token says where inside it a small part lies.

The grid is the one the LLaVA processor makes of the frame: pad to a square (centred), resize, cut
into ``side x side`` tokens; padding pixels count as "none". Every pixel of the padded square falls in
exactly one token and sub-cell, so the padded side must be a multiple of ``side * SUB``.
"""

from __future__ import annotations

import numpy as np

from part_point_ros.sim.catalog import OBJECT_TYPES, PALETTE, object_part_pairs
from part_point_ros.sim.vqa import SceneFacts

SUB = 2  # sub-cells per token side
PAIRS = object_part_pairs()
PAIR_INDEX = {pair: i for i, pair in enumerate(PAIRS)}
COLOURS = list(PALETTE)
TYPES = list(OBJECT_TYPES)
# output groups: name -> number of classes (the last class of each is "none")
GROUPS = {
    "pair": len(PAIRS) + 1,
    "colour": len(COLOURS) + 1,
    "object_colour": len(COLOURS) + 1,
    "object_type": len(TYPES) + 1,
}


def class_maps(part_ids: np.ndarray, facts: SceneFacts) -> dict[str, np.ndarray]:
    """(H, W) class index per pixel for each group (the group's "none" class off the objects)."""
    lut = {name: np.full(int(part_ids.max()) + 1, n - 1, dtype=np.int64) for name, n in GROUPS.items()}
    objects = {o.object_id: o for o in facts.objects}
    for p in facts.parts:
        if p.part_id >= len(lut["pair"]):
            continue  # not visible in this frame
        o = objects[p.object_id]
        lut["pair"][p.part_id] = PAIR_INDEX[(p.object_type, p.part)]
        lut["colour"][p.part_id] = COLOURS.index(p.colour)
        lut["object_colour"][p.part_id] = COLOURS.index(o.colour)
        lut["object_type"][p.part_id] = TYPES.index(o.object_type)
    return {name: table[part_ids] for name, table in lut.items()}


def _block_shares(classes: np.ndarray, n_classes: int, cells: int, none: int) -> np.ndarray:
    """(H, W) class map -> (cells, cells, n_classes) share of each class per block of the padded square."""
    h, w = classes.shape
    side = max(h, w)
    if side % cells:
        raise ValueError(f"a {w}x{h} frame padded to {side} px does not split into {cells} cells")
    padded = np.full((side, side), none, dtype=np.int64)
    top, left = (side - h) // 2, (side - w) // 2  # as the processor centres the image
    padded[top : top + h, left : left + w] = classes
    b = side // cells
    rows = np.arange(side) // b
    block = rows[:, None] * cells + rows[None, :]  # (side, side) block index
    counts = np.bincount((block * n_classes + padded).ravel(), minlength=cells * cells * n_classes)
    return (counts.reshape(cells, cells, n_classes) / (b * b)).astype(np.float32)


def dense_targets(part_ids: np.ndarray, facts: SceneFacts, side: int) -> dict[str, np.ndarray]:
    """Targets of one frame on a ``side x side`` token grid: ``pair`` (P, SUB*SUB, C) per sub-cell,
    the other groups (P, C) per token; P = side * side in row-major order, each row sums to 1."""
    maps = class_maps(part_ids, facts)
    out = {}
    for name, n in GROUPS.items():
        if name == "pair":
            cells = _block_shares(maps[name], n, side * SUB, n - 1)  # (2S, 2S, C)
            cells = cells.reshape(side, SUB, side, SUB, n).transpose(0, 2, 1, 3, 4)
            out[name] = cells.reshape(side * side, SUB * SUB, n)
        else:
            out[name] = _block_shares(maps[name], n, side, n - 1).reshape(side * side, n)
    return out


def stacked_targets(part_ids: np.ndarray, facts: list[SceneFacts], side: int) -> dict[str, np.ndarray]:
    """``dense_targets`` of every frame, stacked (float16 to keep thousands of frames in memory)."""
    out: dict[str, np.ndarray] = {}
    for i, (ids, f) in enumerate(zip(part_ids, facts, strict=True)):
        for name, t in dense_targets(ids, f, side).items():  # filled in place: no float32 copy of all
            if name not in out:
                out[name] = np.empty((len(facts), *t.shape), dtype=np.float16)
            out[name][i] = t
    return out


def mirror(targets: dict, side: int, which) -> dict:
    """The targets of the left-right mirrored frames: for the batch items where ``which`` (B,) is
    true, token columns and sub-cell columns are reversed (the processor centres the frame in its
    padded square, so the mirrored frame's grid is the mirrored grid). Works on numpy arrays and torch
    tensors of ``stacked_targets``' shapes (B, P[, SUB*SUB], C)."""
    out = {}
    for name, t in targets.items():
        shape = t.shape
        if name == "pair":
            grid = t.reshape(shape[0], side, side, SUB, SUB, shape[-1])
            flipped = grid[:, :, ::-1, :, ::-1] if isinstance(t, np.ndarray) else grid.flip(2, 4)
        else:
            grid = t.reshape(shape[0], side, side, shape[-1])
            flipped = grid[:, :, ::-1] if isinstance(t, np.ndarray) else grid.flip(2)
        sel = np.asarray(which, dtype=bool).reshape((-1,) + (1,) * (flipped.ndim - 1))
        if isinstance(t, np.ndarray):
            out[name] = np.where(sel, flipped, grid).reshape(shape)
        else:
            import torch

            out[name] = torch.where(torch.as_tensor(sel), flipped, grid).reshape(shape)
    return out
