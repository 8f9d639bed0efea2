"""Presence output ("not here"): is the queried part in the image at all? (not in the paper)

The paper's head always points somewhere; its score (sigmoid of the patch logit, or the share of
attention near the peak) does not separate a query about something absent from one about a present
part (docs/evaluation.md: AUROC 0.57 on the synthetic world). This small MLP reads what the head
already computes for one (image, query) pair and returns one logit, trained with a BCE against
"the query has a target in the image" on a training set that holds absent queries too
(``load_synthetic(..., absent=True)``):

- per localization head, statistics of the patch logits q_s·K_vᵀ/√d_h over the image tokens: max,
  log-mean-exp, mean and standard deviation (4 numbers: how strongly, and how peaked, the query
  finds a match);
- per head, the attention output Σ_p A_s,p·V_v,p (d_h numbers: what it found) and q_s (d_h: what
  was asked).

Its inputs are detached: the presence loss never changes Q-Synth or the decoder, so the pointing
accuracy of a head is the same with or without it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOGIT_STATS = 4  # max, log-mean-exp, mean, std of the patch logits, per head


def presence_features(q_s: torch.Tensor, attn_logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """q_s (B, k, d), attn_logits (B, k, P), values (B, k, P, d) -> (B, k·(4 + 2d)), detached."""
    q_s, logits, values = q_s.detach(), attn_logits.detach(), values.detach()
    num_patches = logits.shape[-1]
    stats = torch.stack(
        [
            logits.amax(dim=-1),
            logits.logsumexp(dim=-1) - math.log(num_patches),
            logits.mean(dim=-1),
            logits.std(dim=-1, unbiased=False),
        ],
        dim=-1,
    )  # (B, k, 4)
    seen = torch.einsum("bkp,bkpd->bkd", logits.softmax(dim=-1), values)  # attention output (B, k, d)
    return torch.cat([stats, seen, q_s], dim=-1).flatten(1)  # (B, k, 4 + 2d) -> (B, k·(4 + 2d))


class PresenceHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: ``presence_features`` -> one logit per sample (B,)."""

    def __init__(self, *, k: int, d_head: int, hidden: int = 64) -> None:
        super().__init__()
        width = k * (LOGIT_STATS + 2 * d_head)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, q_s: torch.Tensor, attn_logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.mlp(presence_features(q_s, attn_logits, values)).squeeze(-1)  # (B, 1) -> (B,)
