"""The ceiling of any head that reads a backbone's cached keys with one query: a text-perfect oracle.

One learnt query per (object, part) and localization head; logits over the image tokens = the sum over
heads of q . k / sqrt(d); fitted by soft cross-entropy against each training query's patch target
(the share of each token the part covers). Scored on the evaluation cache: does the centre of the
argmax token lie in the part's mask? A Q-Synth that understood every query perfectly could at best
produce these queries, so an A2P head near this number has used what the keys hold.

    python scripts/key_oracle.py runs/synth3/cache/train runs/synth3/cache/eval --train 3000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def load(cache: Path, limit: int):
    """keys (N, k, P, d), patch targets (N, P), labels, masks, grids of the first ``limit`` samples."""
    keys, targets, labels, masks, grids = [], [], [], [], []
    for chunk in json.loads((cache / "index.json").read_text())["chunks"]:
        records = json.loads((cache / chunk["records"]).read_text())["samples"]
        tensors = load_file(str(cache / chunk["tensors"]))
        for j, rec in enumerate(records):
            meta = rec["meta"]
            if not meta.get("present", True):  # an absent query ("not here"): no part to point at
                continue
            h, w = rec["mask_shape"]
            keys.append(tensors[f"{j}.keys"].float())
            targets.append(tensors[f"{j}.patch_target"].float())
            labels.append(f"{meta['category']}:{meta.get('part')}")
            masks.append(np.unpackbits(tensors[f"{j}.mask_bits"].numpy())[: h * w].reshape(h, w))
            grids.append(rec["grid"])
        if len(keys) >= limit:
            break
    n = min(limit, len(keys))
    return torch.stack(keys[:n]), torch.stack(targets[:n]), labels[:n], masks[:n], grids[:n]


def token_centre(token: int, grid: dict) -> tuple[int, int]:
    """Pixel (u, v) of the original image under the centre of ``token`` (row-major grid)."""
    row, col = divmod(token, grid["cols"])
    cell_w, cell_h = grid["processed_size"][0] / grid["cols"], grid["processed_size"][1] / grid["rows"]
    u = ((col + 0.5) * cell_w - grid["offset"][0]) / grid["scale"][0]
    v = ((row + 0.5) * cell_h - grid["offset"][1]) / grid["scale"][1]
    return int(u), int(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_cache", type=Path)
    parser.add_argument("eval_cache", type=Path)
    parser.add_argument("--train", type=int, default=3000, help="training queries used (default 3000)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    keys, targets, labels, _, _ = load(args.train_cache, args.train)
    test_keys, _, test_labels, test_masks, test_grids = load(args.eval_cache, 10**9)
    pairs = {p: i for i, p in enumerate(sorted(set(labels)))}
    n_heads, _, dim = keys.shape[1:]
    queries = torch.nn.Parameter(torch.zeros(len(pairs), n_heads, dim))
    opt = torch.optim.Adam([queries], lr=0.05)
    label_ids = torch.tensor([pairs[p] for p in labels])
    soft = targets / targets.sum(1, keepdim=True).clamp_min(1e-6)
    for _ in range(args.steps):  # full batch
        logits = torch.einsum("nhpd,nhd->np", keys, queries[label_ids]) / dim**0.5
        loss = -(soft * logits.log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hits = []
    with torch.no_grad():
        for k, label, mask, grid in zip(test_keys, test_labels, test_masks, test_grids, strict=True):
            if label not in pairs:  # an object:part the training queries never asked
                hits.append(0.0)
                continue
            u, v = token_centre(int(torch.einsum("hpd,hd->p", k, queries[pairs[label]]).argmax()), grid)
            hits.append(float(mask[min(max(v, 0), mask.shape[0] - 1), min(max(u, 0), mask.shape[1] - 1)]))
    print(
        f"{len(pairs)} object:part pairs, {len(labels)} train / {len(hits)} eval queries, "
        f"{n_heads} heads; fit loss {loss.item():.3f}; eval hit rate {np.mean(hits):.3f}"
    )


if __name__ == "__main__":
    main()
