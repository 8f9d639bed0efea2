"""``PartPointHead``: k Q-Synth modules + the A2P decoder, with strict safetensors checkpoints.

Tensors in (text queries, image keys and values of the k localization heads), tensors out
(synthesized attention and the point heatmap). Nothing here knows about the backbone model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from part_point_ros.errors import CheckpointError
from part_point_ros.heads.attention_to_point import AttentionToPoint, attention_heatmap
from part_point_ros.heads.config import HeadConfig
from part_point_ros.heads.presence import PresenceHead
from part_point_ros.heads.query_synthesis import QuerySynthesis, pool_queries

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class HeadOutput:
    """What the head computes for a batch of B (image, query) pairs on a rows x cols grid."""

    attn_logits: torch.Tensor  # (B, k, P) q_s · K_vᵀ / √d_h
    attn: torch.Tensor  # (B, k, P) softmax over the P image tokens (A_s)
    heatmap: torch.Tensor  # (B, s·rows, s·cols) logits, s = config.upscale (4)
    presence: torch.Tensor | None = None  # (B,) logits "the query's target is in the image" (config.presence)


class PartPointHead(nn.Module):
    """The trainable head of method.md §2-3 for the k localization heads of ``config``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.qsynth = nn.ModuleList()
        if config.query_pooling == "qsynth":
            self.qsynth.extend(
                QuerySynthesis(
                    d_head=config.d_head,
                    n_latents=config.n_latents,
                    n_rounds=config.n_rounds,
                    attn_heads=config.qsynth_attn_heads,
                    prenorm=config.qsynth_prenorm,
                    ffn=config.qsynth_ffn,
                    ffn_ratio=config.qsynth_ffn_ratio,
                )
                for _ in range(config.k)
            )
        self.a2p: AttentionToPoint | None = None
        if config.use_decoder:
            self.a2p = AttentionToPoint(
                k=config.k,
                d_head=config.d_head,
                d_fused=config.d_fused,
                n_blocks=config.n_blocks,
                n_upsample=config.n_upsample,
                norm_groups=config.norm_groups,
                use_values=config.use_values,
                attn_scale=config.attn_scale,
            )
        self.presence: PresenceHead | None = None
        if config.presence:
            self.presence = PresenceHead(k=config.k, d_head=config.d_head, hidden=config.presence_hidden)

    def forward(
        self,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        grid: tuple[int, int],
    ) -> HeadOutput:
        """queries (B, k, L, d), query_mask (B, L) True = real token, keys/values (B, k, P, d)."""
        self._check_inputs(queries, query_mask, keys, values, grid)
        dtype = self.dtype
        queries, keys, values = queries.to(dtype), keys.to(dtype), values.to(dtype)
        query_mask = query_mask.bool()
        if self.config.query_pooling == "qsynth":
            synth = [module(queries[:, i], query_mask) for i, module in enumerate(self.qsynth)]
            q_s = torch.stack(synth, dim=1)  # k x (B, d) -> (B, k, d)
        else:
            batch, k, length, d = queries.shape
            flat = queries.reshape(batch * k, length, d)  # (B, k, L, d) -> (B·k, L, d)
            mask = query_mask.repeat_interleave(k, dim=0)  # (B, L) -> (B·k, L), same order as flat
            q_s = pool_queries(flat, mask, self.config.query_pooling).reshape(batch, k, d)
        attn_logits = torch.einsum("bkd,bkpd->bkp", q_s, keys) / math.sqrt(self.config.d_head)
        attn = attn_logits.softmax(dim=-1)
        if self.a2p is not None:
            heatmap = self.a2p(attn, values, grid)
        else:
            heatmap = attention_heatmap(attn, grid, self.config.upscale)
        presence = self.presence(q_s, attn_logits, values) if self.presence is not None else None
        return HeadOutput(attn_logits=attn_logits, attn=attn, heatmap=heatmap, presence=presence)

    def _check_inputs(self, queries, query_mask, keys, values, grid) -> None:
        k, d = self.config.k, self.config.d_head
        if queries.dim() != 4 or queries.shape[1] != k or queries.shape[3] != d:
            raise ValueError(f"queries must be (B, k={k}, L, d={d}), got {tuple(queries.shape)}")
        batch, _, length, _ = queries.shape
        if tuple(query_mask.shape) != (batch, length):
            raise ValueError(
                f"query_mask must be (B, L) = {(batch, length)} for queries {tuple(queries.shape)}, "
                f"got {tuple(query_mask.shape)}"
            )
        if keys.dim() != 4 or keys.shape[:2] != (batch, k) or keys.shape[3] != d:
            raise ValueError(f"keys must be (B={batch}, k={k}, P, d={d}), got {tuple(keys.shape)}")
        if values.shape != keys.shape:
            raise ValueError(f"values {tuple(values.shape)} must have the shape of keys {tuple(keys.shape)}")
        rows, cols = grid
        if rows * cols != keys.shape[2]:
            raise ValueError(
                f"grid {rows}x{cols} = {rows * cols} patches but keys/values have P={keys.shape[2]} "
                f"(keys {tuple(keys.shape)})"
            )
        if not bool(query_mask.bool().any(dim=1).all()):
            raise ValueError("query_mask has a row with no real token: every sample needs >= 1 text query")

    @property
    def dtype(self) -> torch.dtype:
        first = next(self.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def num_parameters(self) -> dict[str, int]:
        """Trainable parameter counts: {"query_synthesis", "attention_to_point", "presence", "total"}."""
        qsynth = sum(p.numel() for p in self.qsynth.parameters())
        a2p = sum(p.numel() for p in self.a2p.parameters()) if self.a2p is not None else 0
        presence = sum(p.numel() for p in self.presence.parameters()) if self.presence is not None else 0
        return {
            "query_synthesis": qsynth,
            "attention_to_point": a2p,
            "presence": presence,
            "total": qsynth + a2p + presence,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        metadata = {"format": "pt", "version": str(self.config.version)}
        save_file(tensors, str(out / WEIGHTS_NAME), metadata=metadata)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> PartPointHead:
        """Strict load of a ``save_pretrained`` dir, in eval mode; mismatches raise ``CheckpointError``."""
        root = Path(directory)
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such head directory (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
        config = _read_config(root / CONFIG_NAME)
        head = cls(config)
        weights_path = root / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CheckpointError(f"{weights_path}: missing; a head directory needs {WEIGHTS_NAME}")
        try:
            tensors = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            reason = " ".join(str(err).split())
            raise CheckpointError(
                f"{weights_path}: not a readable safetensors file ({reason}): it is truncated or of another "
                "format; copy it again, or re-save the head with save_pretrained"
            ) from err
        expected = head.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = [
            f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
            for name in sorted(set(expected) & set(tensors))
            if tensors[name].shape != expected[name].shape
        ]
        if missing or unexpected or wrong:
            problems = []
            if missing:
                problems.append("missing " + ", ".join(missing))
            if unexpected:
                problems.append("unexpected " + ", ".join(unexpected))
            if wrong:
                problems.append("shape " + ", ".join(wrong))
            raise CheckpointError(
                f"{weights_path}: {'; '.join(problems)} — was it saved by another version or config?"
            )
        head.load_state_dict(tensors, strict=True)
        return head.to(device).eval()


def _read_config(path: Path) -> HeadConfig:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a head directory needs {CONFIG_NAME}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    try:
        return HeadConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err
