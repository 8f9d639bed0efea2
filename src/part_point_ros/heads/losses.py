"""Losses of the head (method.md §4): patch BCE on A_s and the SDF penalty field on the heatmap.

Plus the supervisions of the ablations (L2 on the mask, Gaussian at the innermost point,
symmetric SDF) and the numpy builders of their targets. Tensors in, tensors out.

Signed distance convention (``signed_distance``): distances are between pixel CENTRES, and the
zero level set lies half a pixel outside the centres of the mask's border pixels:
``D = edt(outside) - 0.5`` outside the mask, ``D = -(edt(inside) - 0.5)`` inside, so a mask
border pixel has D = -0.5 and its outside 4-neighbour D = +0.5. Multi-instance masks use the
union (the SDF of the union, as in the paper's Figure 3).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from part_point_ros.heads.config import HeadConfig

if TYPE_CHECKING:
    from part_point_ros.heads.head import HeadOutput

HEATMAP_TARGET_KEYS = {"sdf": "sdf", "symmetric_sdf": "sdf", "l2": "mask", "gaussian": "gaussian"}


def penalty_f(x: torch.Tensor, tau: float = 1.5, gamma: float = 1.0) -> torch.Tensor:
    """f(x) = softplus(x/τ) + γ·(e^{x/τ} if x <= 0 else 1): small deep inside, large outside."""
    s = x / tau
    inside = torch.exp(s.clamp(max=0.0))  # equals e^{x/τ} where x <= 0; never overflows
    return F.softplus(s) + gamma * torch.where(x <= 0, inside, torch.ones_like(s))


def _union(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:  # (N, H, W) instances -> (H, W) union
        mask = mask.any(axis=0)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (N, H, W), got shape {mask.shape}")
    return mask.astype(bool)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance field of a mask in pixels: positive outside, negative inside (float32).

    ``mask``: (H, W) bool/0-1, or (N, H, W) instances (their union is used). Boundary
    convention: see the module docstring (±0.5 at the two pixels straddling the boundary).
    A mask with no boundary gives a constant field of the image diagonal √(H²+W²): ``+diag``
    when empty (everything is far outside: the penalty has no gradient), ``-diag`` when full.
    """
    m = _union(mask)
    if not m.any() or m.all():
        diag = math.hypot(*m.shape)
        return np.full(m.shape, -diag if m.any() else diag, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~m)  # distance to the nearest mask pixel centre
    inside = ndimage.distance_transform_edt(m)  # distance to the nearest background pixel centre
    return np.where(m, -(inside - 0.5), outside - 0.5).astype(np.float32)


def innermost_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of the argmax of the mask's Euclidean distance transform; None if empty.

    Ties go to the first pixel in row-major order; a full mask gives the centre pixel.
    """
    m = _union(mask)
    if not m.any():
        return None
    if m.all():
        return m.shape[0] // 2, m.shape[1] // 2
    edt = ndimage.distance_transform_edt(m)
    row, col = np.unravel_index(int(np.argmax(edt)), m.shape)
    return int(row), int(col)


def gaussian_target(mask: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float32 Gaussian of peak 1 at ``innermost_point(mask)``; all zeros for an empty mask."""
    m = _union(mask)
    point = innermost_point(m)
    if point is None:
        return np.zeros(m.shape, dtype=np.float32)
    rows, cols = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    d2 = (rows - point[0]) ** 2 + (cols - point[1]) ** 2
    return np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)


def instance_gaussian_target(mask: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float32: one Gaussian of peak w_i at the innermost point of each connected piece i of
    the mask (8-connected), w_i = its area / the largest piece's area; all zeros for an empty mask.

    For a query that names several instances ("the handle of the mug" with two mugs), the union mask
    falls apart into one piece per instance, and the target asks for a peak on each, instead of one
    at the innermost point of the largest (``gaussian_target``); a part cut in two by an occluder
    gets a weaker second peak on its smaller piece."""
    m = _union(mask)
    labels, count = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(m.shape, dtype=np.float32)
    areas = ndimage.sum_labels(m, labels, index=np.arange(1, count + 1))
    target = np.zeros(m.shape, dtype=np.float32)
    for i, area in enumerate(areas, start=1):
        target = np.maximum(target, gaussian_target(labels == i, sigma) * float(area / areas.max()))
    return target


def build_heatmap_targets(mask: np.ndarray, config: HeadConfig) -> dict[str, np.ndarray]:
    """Heatmap target of ``config.supervision`` for ONE mask already at heatmap resolution.

    ``mask``: (H, W) or (N, H, W), H×W = the heatmap size (e.g. ``ImageGrid.resample_mask(mask,
    upscale) >= 0.5``). Returns ``{"sdf": ...}`` (in ``config.sdf_units``), ``{"mask": ...}`` or
    ``{"gaussian": ...}``; stack them over the batch for ``head_loss``.
    """
    m = _union(mask)
    if config.supervision in ("sdf", "symmetric_sdf"):
        sdf = signed_distance(m)
        if config.sdf_units == "grid_px":
            sdf = sdf / config.upscale
        return {"sdf": sdf}
    if config.supervision == "l2":
        return {"mask": m.astype(np.float32)}
    if config.gaussian_instances:
        return {"gaussian": instance_gaussian_target(m, config.gaussian_sigma)}
    return {"gaussian": gaussian_target(m, config.gaussian_sigma)}


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32; float32/float64 unchanged (losses are summed over many pixels)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _flat_softmax(heatmap_logits: torch.Tensor) -> torch.Tensor:
    return _wide(heatmap_logits).flatten(1).softmax(dim=-1)  # (B, H, W) -> (B, H·W)


def sdf_penalty(
    heatmap_logits: torch.Tensor, sdf: torch.Tensor, tau: float = 1.5, gamma: float = 1.0
) -> torch.Tensor:
    """L_sdf = Σ_{u,v} softmax(H)(u,v) · f(D(u,v)), softmax over all pixels: (B, H, W) x2 -> (B,)."""
    _same_shape(heatmap_logits, sdf, "heatmap_targets['sdf']")
    return (_flat_softmax(heatmap_logits) * penalty_f(_wide(sdf).flatten(1), tau, gamma)).sum(dim=-1)


def symmetric_sdf_penalty(heatmap_logits: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    """Ablation "symmetric SDF": Σ softmax(H)·D with the raw signed distance -> (B,).

    The raw SDF is the symmetric (odd) transform the paper compares against; it still rewards
    depth inside the mask. (|D| would instead reward the boundary, the opposite of the goal.)
    """
    _same_shape(heatmap_logits, sdf, "heatmap_targets['sdf']")
    return (_flat_softmax(heatmap_logits) * _wide(sdf).flatten(1)).sum(dim=-1)


def l2_heatmap_loss(heatmap_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ablation "L2": mean over pixels of (sigmoid(H) - mask)², mask in [0, 1] -> (B,)."""
    _same_shape(heatmap_logits, mask, "heatmap_targets['mask']")
    return (_wide(heatmap_logits).sigmoid() - _wide(mask)).pow(2).flatten(1).mean(dim=-1)


def gaussian_heatmap_loss(heatmap_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Ablation "Gaussian": cross-entropy of softmax(H) against the normalised Gaussian -> (B,).

    Softmax over all pixels as in L_sdf, so only the target changes between the two.
    An all-zero target (empty mask) gives 0.
    """
    _same_shape(heatmap_logits, target, "heatmap_targets['gaussian']")
    t = _wide(target).flatten(1)  # (B, H, W) -> (B, H·W)
    t = t / t.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    log_p = _wide(heatmap_logits).flatten(1).log_softmax(dim=-1)
    return -(t * log_p).sum(dim=-1)


def _check_patch_targets(attn_logits: torch.Tensor, targets: torch.Tensor) -> None:
    if targets.shape != (attn_logits.shape[0], attn_logits.shape[2]):
        raise ValueError(
            f"patch_targets must be (B, P) = {(attn_logits.shape[0], attn_logits.shape[2])}, "
            f"got {tuple(targets.shape)}"
        )


def patch_bce(attn_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_bce: BCE(q_s·K_vᵀ/√d_h as logits, M_p); attn_logits (B, k, P), targets (B, P) in [0, 1].

    The same patch target supervises every head; mean over heads and patches -> (B,).
    """
    _check_patch_targets(attn_logits, targets)
    logits = _wide(attn_logits)
    target = _wide(targets).to(logits.dtype).unsqueeze(1).expand_as(logits)  # (B, P) -> (B, k, P)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce.flatten(1).mean(dim=-1)


def patch_softmax_ce(attn_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Patch term ``softmax_ce``: cross-entropy of softmax over the P patches (per head) against the
    target's share of coverage; attn_logits (B, k, P), targets (B, P) >= 0 -> (B,) mean over heads.

    An all-zero target row (a part no patch covers) contributes 0."""
    _check_patch_targets(attn_logits, targets)
    logits = _wide(attn_logits)
    target = _wide(targets).to(logits.dtype)
    share = target / target.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, P), rows sum to 1 or 0
    return -(share.unsqueeze(1) * logits.log_softmax(dim=-1)).sum(dim=-1).mean(dim=-1)


def point_loss(
    heatmap_logits: torch.Tensor, heatmap_targets: dict[str, torch.Tensor], config: HeadConfig
) -> torch.Tensor:
    """The heatmap term of ``config.supervision`` -> (B,)."""
    key = HEATMAP_TARGET_KEYS[config.supervision]
    if key not in heatmap_targets:
        raise KeyError(
            f"supervision {config.supervision!r} needs heatmap_targets[{key!r}] "
            f"(build it with build_heatmap_targets); got keys {sorted(heatmap_targets)}"
        )
    target = heatmap_targets[key].to(heatmap_logits.device)
    if config.supervision == "sdf":
        return sdf_penalty(heatmap_logits, target, config.sdf_tau, config.sdf_gamma)
    if config.supervision == "symmetric_sdf":
        return symmetric_sdf_penalty(heatmap_logits, target)
    if config.supervision == "l2":
        return l2_heatmap_loss(heatmap_logits, target)
    return gaussian_heatmap_loss(heatmap_logits, target)


def head_loss(
    output: HeadOutput,
    *,
    patch_targets: torch.Tensor,
    heatmap_targets: dict[str, torch.Tensor],
    config: HeadConfig,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L_total = L_patch + λ·L_point (+ w·L_presence) -> {"total", "bce", "point", "presence"}.

    L_patch is the paper's BCE, the softmax cross-entropy, or their sum, as ``config.patch_loss``
    says (the key stays "bce" so logs and histories keep one name for the patch term). ``present``
    (B,) bool marks the samples whose target is in the image (None: all): L_patch and L_point are
    averaged over those only (an absent query has nothing to point at), L_presence (BCE of
    ``output.presence`` against ``present``, weight ``config.presence_weight``) over every sample;
    0 for a head without a presence output."""
    logits, targets = output.attn_logits, patch_targets.to(output.attn_logits.device)
    if present is None:
        present = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    present = present.to(logits.device).bool()
    weight = present.to(torch.float32) / present.sum().clamp_min(1)  # mean over present samples

    bce = logits.new_zeros((), dtype=torch.float32)
    if config.patch_loss in ("bce", "bce+softmax_ce"):
        bce = bce + (patch_bce(logits, targets) * weight).sum()
    if config.patch_loss in ("softmax_ce", "bce+softmax_ce"):
        bce = bce + (patch_softmax_ce(logits, targets) * weight).sum()
    point_each = point_loss(output.heatmap, heatmap_targets, config)
    point = (torch.where(present, point_each, torch.zeros_like(point_each)) * weight).sum()
    presence = bce.new_zeros(())
    if output.presence is not None:
        presence = F.binary_cross_entropy_with_logits(_wide(output.presence), present.to(torch.float32))
    total = bce + config.sdf_lambda * point + config.presence_weight * presence
    return {"total": total, "bce": bce, "point": point, "presence": presence}


def _same_shape(heatmap: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if heatmap.shape != target.shape:
        raise ValueError(f"{name} has shape {tuple(target.shape)} but the heatmap is {tuple(heatmap.shape)}")
