"""``a2p``: the trained Q-Synth + A2P head (seed 000) over the localization heads' Q/K/V.

ONE truncated prefill captures Q/K/V of the head's localization heads (decoder layers past the
deepest one are never loaded); the head gives a heatmap at ``upscale`` x the token grid; its peak
(LENS sub-pixel refined) is mapped to original pixels by ``decode_a2p``, shared with the evaluation
from cached features. Heatmap cells wholly in the processor's padding (pad-to-square) are masked
out before the softmax and never win; a point from a cell only partly on the image is clamped onto
it, so every point has 0 <= x <= W - 1 and 0 <= y <= H - 1. ``score`` for a head trained with the
paper's BCE = mean over the k heads of sigmoid(q_s·K_v/√d_h) at the grid cell under the peak: the
patch-level probability that L_bce trains, so 0.5 is a natural ``found`` threshold; for a head with a
softmax patch term (``HeadConfig.patch_loss``) = the share of its attention within one cell of that
cell (``score_rule``); for a head with a presence output (``HeadConfig.presence``, heads/presence.py)
= its probability that the target is in the image, times (for the further points) the near-share of
the point's cell relative to the best one's. The default ``found`` threshold is the head's own
calibrated one when its config carries it (``calibrated_threshold``: written by
``python -m part_point_ros.training.calibration --write-threshold`` from validation scenes), else 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.base import Capture
from part_point_ros.grounding.attention_pointing import cells_on_image
from part_point_ros.grounding.methods.base import (
    CaptureFn,
    PeakOptions,
    PointingMethod,
    clamp_into_image,
    find_peaks,
)
from part_point_ros.grounding.peaks import Peak
from part_point_ros.grounding.result import PointResult
from part_point_ros.types import ImageGrid


def decode_a2p(
    heatmap_logits: torch.Tensor,
    attn_logits: torch.Tensor,
    grid: ImageGrid,
    upscale: int,
    *,
    subpixel: bool = True,
    max_points: int = 1,
    nms_radius: float = 4.0,
    rel_threshold: float = 0.5,
    score: str = "sigmoid",
    presence: float | None = None,
    one_per_region: bool = False,
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """One sample's head output -> (heatmap, points): THE a2p decoding, for ``PartPointer`` and for
    the evaluation from cached features alike.

    ``heatmap_logits``: (s·rows, s·cols), s = ``upscale``; ``attn_logits``: (k, P) patch logits.
    The heatmap is the softmax over the cells that cover some of the original image (cells wholly
    in pad-to-square padding get probability 0 and are never peaks); points are (x, y, score) in
    original pixels, best first, clamped into [0, W - 1] x [0, H - 1]. ``score`` (``score_rule`` of
    the head): "sigmoid" = mean over the k heads of sigmoid(attn logit) at the (on-image) token-grid
    cell under the peak (what L_bce trains); "softmax_near" = mean over the k heads of the share of
    the head's softmax over the on-image cells that lies within one cell of that cell (3x3), for
    heads trained with a softmax patch term, whose logits have no absolute level; "presence" =
    ``presence`` (the head's probability that the target is in the image) for the best point, times
    min(1, its "softmax_near" value / the best point's) for the others.
    """
    logits = heatmap_logits.float()
    expected = (grid.rows * upscale, grid.cols * upscale)
    if tuple(logits.shape) != expected:
        raise ValueError(f"heatmap is {tuple(logits.shape)} but the grid x upscale is {expected}")
    valid = cells_on_image(grid, upscale)  # (s·rows, s·cols) bool
    masked = logits.masked_fill(~torch.from_numpy(valid).to(logits.device), float("-inf"))
    prob = masked.flatten().softmax(0).reshape(logits.shape).cpu().numpy()  # (s·rows·s·cols,) -> map
    on_cells = cells_on_image(grid)  # (rows, cols): the score's cell is one of these
    if score == "presence" and presence is None:
        raise ValueError("a2p score rule 'presence' needs the head's presence probability")
    if score == "sigmoid":
        patch_prob = attn_logits.float().sigmoid().mean(0).cpu().numpy()  # (k, P) -> (P,)
    elif score in ("softmax_near", "presence"):
        on = torch.from_numpy(on_cells.reshape(-1)).to(attn_logits.device)  # (P,)
        share = attn_logits.float().masked_fill(~on, float("-inf")).softmax(-1)  # (k, P), on-image
        grid_share = share.mean(0).reshape(1, 1, grid.rows, grid.cols)  # (k, P) -> (1, 1, rows, cols)
        near = torch.nn.functional.avg_pool2d(grid_share, 3, stride=1, padding=1, count_include_pad=True) * 9
        patch_prob = near.reshape(-1).cpu().numpy()  # (P,): the 3x3 sum around each cell
    else:
        raise ValueError(f"a2p score rule {score!r} is not one of sigmoid, softmax_near, presence")
    on_rows, on_cols = np.flatnonzero(on_cells.any(1)), np.flatnonzero(on_cells.any(0))
    options = PeakOptions(subpixel, max_points, nms_radius, rel_threshold, one_per_region)
    peaks = find_peaks(prob, valid, options)

    def cell_score(peak: Peak) -> float:
        row = min(max(int((peak.row + 0.5) // upscale), int(on_rows[0])), int(on_rows[-1]))
        col = min(max(int((peak.col + 0.5) // upscale), int(on_cols[0])), int(on_cols[-1]))
        return float(patch_prob[row * grid.cols + col])  # row-major (rows, cols) -> (P,)

    scores = [cell_score(p) for p in peaks]
    if score == "presence":
        best = scores[0] if scores and scores[0] > 0 else 1.0
        scores = [float(presence) * min(1.0, s / best) for s in scores]
    points = [
        (*clamp_into_image(grid, *grid.heatmap_to_pixel(p.row, p.col, upscale)), s)
        for p, s in zip(peaks, scores, strict=True)
    ]
    return prob.astype(np.float32), points


DEFAULT_FOUND_THRESHOLD = 0.5  # a head without a calibration: sigmoid's natural midpoint


def calibrated_threshold(extra: dict[str, Any] | None) -> float | None:
    """The ``found`` threshold the calibration tool wrote into a head config's ``extra``
    (``extra["calibration"]["found_threshold"]``, chosen on validation scenes: see
    ``training.calibration.choose_threshold``), or None when the head has none."""
    value = ((extra or {}).get("calibration") or {}).get("found_threshold")
    return None if value is None else float(value)


def score_rule(config) -> str:
    """The ``decode_a2p`` score of a head: "presence" when it has a presence output, else "sigmoid"
    when its patch term is the paper's BCE alone, else "softmax_near" (a softmax term leaves
    sigmoid(logit) uncalibrated: ~0.9 on every query)."""
    if config.presence:
        return "presence"
    return "sigmoid" if config.patch_loss == "bce" else "softmax_near"


def presence_probability(output: Any, b: int) -> float | None:
    """Sample ``b``'s probability that its target is in the image, from a head output; None
    without a presence output."""
    return None if output.presence is None else float(output.presence[b].float().sigmoid())


class A2PMethod(PointingMethod):
    """The trained ``PartPointHead``; ``batch``: one head forward over all queries of a frame."""

    name = "a2p"
    default_threshold = DEFAULT_FOUND_THRESHOLD  # per instance: the head's calibrated one if it has it

    def __init__(self, head: Any, peaks: PeakOptions, *, batch: bool = True) -> None:
        self.head = head
        calibrated = calibrated_threshold(head.config.extra)
        if calibrated is not None:
            self.default_threshold = calibrated
        self.heads = tuple(head.config.head_refs)
        self.peaks = peaks
        self.batch = batch

    def point_many(self, image: np.ndarray, queries: Sequence[str], captures: CaptureFn) -> list[PointResult]:
        caps = captures(queries)
        groups = [list(range(len(caps)))] if self.batch else [[i] for i in range(len(caps))]
        results: list[PointResult] = []
        for group in groups:
            out = self.run_head([caps[i] for i in group])
            results += [
                self._result(
                    out.heatmap[b], out.attn_logits[b], caps[i].grid, queries[i], presence_probability(out, b)
                )
                for b, i in enumerate(group)
            ]
        return results

    def run_head(self, captures: Sequence[Capture]) -> Any:
        """One head forward over captures of one frame; their query rows right-padded and masked."""
        device = next(self.head.parameters()).device
        captures = [c.to(device) for c in captures]
        rows = [c.queries.transpose(0, 1) for c in captures]  # (k, L_b, d) -> (L_b, k, d)
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # B x (L_b, k, d) -> (B, L, k, d)
        queries = padded.permute(0, 2, 1, 3)  # (B, L, k, d) -> (B, k, L, d)
        lengths = torch.tensor([r.shape[0] for r in rows], device=device)
        mask = torch.arange(queries.shape[2], device=device)[None] < lengths[:, None]  # (B, L)
        keys = torch.stack([c.image_keys for c in captures])  # B x (k, P, d) -> (B, k, P, d)
        values = torch.stack([c.image_values for c in captures])  # B x (k, P, d) -> (B, k, P, d)
        grid = captures[0].grid
        return self.head(queries, mask, keys, values, (grid.rows, grid.cols))

    def _result(
        self,
        heatmap: torch.Tensor,
        attn_logits: torch.Tensor,
        grid: ImageGrid,
        query: str,
        presence: float | None = None,
    ) -> PointResult:
        upscale = self.head.config.upscale
        prob, points = decode_a2p(
            heatmap,  # (s·rows, s·cols)
            attn_logits,  # (k, P)
            grid,
            upscale,
            subpixel=self.peaks.subpixel,
            max_points=self.peaks.max_points,
            nms_radius=self.peaks.nms_radius,
            rel_threshold=self.peaks.rel_threshold,
            score=score_rule(self.head.config),
            presence=presence,
            one_per_region=self.peaks.one_per_region,
        )
        x, y, score = points[0]
        return PointResult(
            x=x, y=y, score=score, found=False, method=self.name, latency_ms=0.0, query=query,
            heatmap=prob, grid=grid, upscale=upscale, points=points,
        )  # fmt: skip
