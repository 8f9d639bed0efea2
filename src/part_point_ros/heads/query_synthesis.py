"""Q-Synth (method.md §2): one grounding-aware query per localization head, from all text queries.

N learnable latents read the head's text queries (K_s = V_s = Q_t) in T rounds of residual
cross-attention; an MLP scores each latent and the query is the softmax-weighted sum of latents.
``pool_queries`` holds the parameter-free alternatives of the ablations (EOS / mean / max).
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionRound(nn.Module):
    """One round: Z <- Z + CrossAttn(LN(Z), LN(Q_t)); then Z <- Z + FFN(LN(Z)) when enabled."""

    def __init__(self, *, d_head: int, attn_heads: int, prenorm: bool, ffn: bool, ffn_ratio: int) -> None:
        super().__init__()
        self.norm_latents = nn.LayerNorm(d_head) if prenorm else nn.Identity()
        self.norm_text = nn.LayerNorm(d_head) if prenorm else nn.Identity()
        self.attn = nn.MultiheadAttention(d_head, attn_heads, batch_first=True)
        self.ffn: nn.Module | None = None
        if ffn:
            self.ffn = nn.Sequential(
                nn.LayerNorm(d_head) if prenorm else nn.Identity(),
                nn.Linear(d_head, ffn_ratio * d_head),
                nn.GELU(),
                nn.Linear(ffn_ratio * d_head, d_head),
            )

    def forward(self, latents: torch.Tensor, text: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """latents (B, N, d), text (B, L, d), padding (B, L) True = ignore -> (B, N, d)."""
        kv = self.norm_text(text)
        query = self.norm_latents(latents)
        update, _ = self.attn(query, kv, kv, key_padding_mask=padding, need_weights=False)
        latents = latents + update
        if self.ffn is not None:
            latents = latents + self.ffn(latents)
        return latents


class QuerySynthesis(nn.Module):
    """Q-Synth for ONE localization head: text queries (B, L, d_h) -> synthesized query q_s (B, d_h)."""

    def __init__(
        self,
        *,
        d_head: int = 128,
        n_latents: int = 4,
        n_rounds: int = 3,
        attn_heads: int = 1,
        prenorm: bool = True,
        ffn: bool = True,
        ffn_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, d_head) * 0.02)  # Z^0 (N, d_h)
        self.rounds = nn.ModuleList(
            CrossAttentionRound(
                d_head=d_head, attn_heads=attn_heads, prenorm=prenorm, ffn=ffn, ffn_ratio=ffn_ratio
            )
            for _ in range(n_rounds)
        )
        # the latent scorer: z_i -> scalar importance; alpha = softmax over the N latents
        self.score = nn.Sequential(nn.Linear(d_head, d_head), nn.GELU(), nn.Linear(d_head, 1))

    def forward(self, text_queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """text_queries (B, L, d_h), query_mask (B, L) True = real token -> q_s (B, d_h)."""
        batch = text_queries.shape[0]
        z = self.latents.unsqueeze(0).expand(batch, -1, -1)  # (N, d) -> (B, N, d)
        padding = ~query_mask
        for round_ in self.rounds:
            z = round_(z, text_queries, padding)
        alpha = self.score(z).squeeze(-1).softmax(dim=-1)  # (B, N, 1) -> (B, N)
        return torch.einsum("bn,bnd->bd", alpha, z)


def pool_queries(text_queries: torch.Tensor, query_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Parameter-free query of the ablations: (B, L, d), mask (B, L) True = real -> (B, d).

    ``eos``: the last real token (the native attention-pointing query); ``mean``: mean over real
    tokens; ``max``: element-wise max over real tokens. Padding never contributes.
    """
    mask = query_mask.bool()
    if mode == "eos":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
        last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) index of the last real token
        return text_queries[torch.arange(text_queries.shape[0], device=mask.device), last]
    if mode == "mean":
        weights = mask.to(text_queries.dtype).unsqueeze(-1)  # (B, L) -> (B, L, 1)
        return (text_queries * weights).sum(dim=1) / weights.sum(dim=1)
    if mode == "max":
        filled = text_queries.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, L, d)
        return filled.amax(dim=1)
    raise ValueError(f"query pooling {mode!r} is not one of eos, mean, max")
