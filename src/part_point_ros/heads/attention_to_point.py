"""A2P decoder (method.md §3, seed 000 §2): k attention maps + image values -> point heatmap logits.

F_i = A_s,i ⊙ V_v,i on the (P_h, P_w) grid; an MLP weighs the k heads; the weighted F_i are
concatenated (k·d_h channels), fused by a 1x1 conv to d_fused, mixed by residual conv blocks
(3x3 conv, GroupNorm, SiLU), upsampled by x2 bilinear stages each followed by a conv block
(channels halve per stage: d_fused -> d_fused/4 after two), and a 1x1 conv gives one channel.
Fully convolutional: any grid size works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """3x3 conv -> GroupNorm -> SiLU."""

    def __init__(self, *, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(math.gcd(norm_groups, out_channels), out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class AttentionToPoint(nn.Module):
    """A2P decoder: attn (B, k, P), values (B, k, P, d_h), grid (rows, cols) -> (B, s·rows, s·cols).

    ``s = 2**n_upsample``. The head-importance MLP reads the concatenation over heads of the
    spatial mean of each F_i (with ``attn_scale="num_patches"`` that mean is exactly the head's
    attention output Σ_p A·V) and returns k weights ``k · softmax(·)``, so equal importance leaves
    F unchanged. ``attn_scale="num_patches"`` multiplies A by P (1 = uniform attention) so that
    the features do not shrink with the number of patches; ``"none"`` uses A as is.
    ``use_values=False`` is the "no image V" ablation: F_i = A_s,i, one channel per head.
    """

    def __init__(
        self,
        *,
        k: int,
        d_head: int = 128,
        d_fused: int = 256,
        n_blocks: int = 4,
        n_upsample: int = 2,
        norm_groups: int = 32,
        use_values: bool = True,
        attn_scale: str = "num_patches",
    ) -> None:
        super().__init__()
        if d_fused % (2**n_upsample):
            raise ValueError(f"d_fused={d_fused} must be divisible by 2**n_upsample={2**n_upsample}")
        if attn_scale not in ("num_patches", "none"):
            raise ValueError(f"attn_scale={attn_scale!r} is not one of num_patches, none")
        self.k = k
        self.use_values = use_values
        self.attn_scale = attn_scale
        channels = d_head if use_values else 1  # channels of one F_i
        self.importance = nn.Sequential(nn.Linear(k * channels, d_head), nn.GELU(), nn.Linear(d_head, k))
        self.fuse = nn.Conv2d(k * channels, d_fused, kernel_size=1)
        self.mix = nn.ModuleList(
            ConvBlock(in_channels=d_fused, out_channels=d_fused, norm_groups=norm_groups)
            for _ in range(n_blocks)
        )
        widths = [d_fused // 2**stage for stage in range(n_upsample + 1)]  # 256, 128, 64
        self.up = nn.ModuleList(
            ConvBlock(in_channels=c_in, out_channels=c_out, norm_groups=norm_groups)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = nn.Conv2d(widths[-1], 1, kernel_size=1)

    def forward(self, attn: torch.Tensor, values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, k, num_patches = attn.shape
        rows, cols = grid
        if self.attn_scale == "num_patches":
            attn = attn * num_patches
        if self.use_values:
            feats = attn.unsqueeze(-1) * values  # F_i: (B, k, P, 1) * (B, k, P, d) -> (B, k, P, d)
        else:
            feats = attn.unsqueeze(-1)  # F_i = A_s,i: (B, k, P) -> (B, k, P, 1)
        pooled = feats.mean(dim=2).reshape(batch, -1)  # (B, k, c) -> (B, k·c)
        weights = self.k * self.importance(pooled).softmax(dim=-1)  # (B, k)
        feats = feats * weights[:, :, None, None]  # (B, k, P, c)
        channels = feats.shape[-1]
        feats = feats.reshape(batch, k, rows, cols, channels)  # (B, k, P, c) -> (B, k, rows, cols, c)
        feats = feats.permute(0, 1, 4, 2, 3)  # (B, k, rows, cols, c) -> (B, k, c, rows, cols)
        x = feats.reshape(batch, k * channels, rows, cols)  # (B, k, c, rows, cols) -> (B, k·c, rows, cols)
        x = self.fuse(x)  # (B, d_fused, rows, cols)
        for block in self.mix:
            x = x + block(x)  # skip connection around every mixing block
        for block in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(x)  # channels halve: (B, C, 2h, 2w) -> (B, C/2, 2h, 2w)
        return self.out(x).squeeze(1)  # (B, 1, s·rows, s·cols) -> (B, s·rows, s·cols)


def attention_heatmap(attn: torch.Tensor, grid: tuple[int, int], upscale: int) -> torch.Tensor:
    """The "no A2P" ablation: log of the mean of the k maps, bilinearly upsampled, as logits.

    attn (B, k, P) probabilities -> (B, upscale·rows, upscale·cols) log-probabilities (up to a
    constant: softmax of the result is the upsampled mean attention, renormalised).
    """
    batch, _, _ = attn.shape
    rows, cols = grid
    mean = attn.mean(dim=1).reshape(batch, 1, rows, cols)  # (B, k, P) -> (B, 1, rows, cols)
    up = F.interpolate(mean, scale_factor=float(upscale), mode="bilinear", align_corners=False)
    up = up / up.sum(dim=(-2, -1), keepdim=True)
    return up.clamp_min(torch.finfo(up.dtype).tiny).log().squeeze(1)  # (B, 1, H, W) -> (B, H, W)
