"""The one small interface every MLLM family implements.

An adapter wraps a frozen HuggingFace model and its processor. It knows the family's prompt
template, where the image tokens sit in the sequence and how their grid maps to original pixels,
and how to capture per-(layer, head) queries, keys and values exactly as the model uses them
(rotary embedding applied, grouped-query KV heads mapped) in one truncated prefill.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from part_point_ros.backbones.prefix import ImagePrefix
from part_point_ros.types import HeadRef, ImageGrid


@dataclass
class Capture:
    """Q/K/V of the selected heads from one prefill of one (image, prompt) pair.

    ``k`` is the number of selected heads, ``S`` the sequence length of the prompt, ``d`` the head
    size. Tensors are float32 on the CPU unless ``to()`` moved them.
    """

    heads: tuple[HeadRef, ...]
    queries: torch.Tensor  # (k, L, d) query rows at ``text_positions`` (RoPE applied)
    keys: torch.Tensor  # (k, S, d) keys of every position (RoPE applied, KV head of each query head)
    values: torch.Tensor  # (k, S, d) values of every position
    image_positions: torch.Tensor  # (P,) long: sequence index of each image token, grid row-major
    text_positions: torch.Tensor  # (L,) long: sequence index of each text query row; last = last token
    scaling: float  # softmax scale the model uses (1 / sqrt(d) for the supported families)
    grid: ImageGrid

    @property
    def image_keys(self) -> torch.Tensor:
        """(k, P, d) keys of the image tokens."""
        return self.keys[:, self.image_positions]

    @property
    def image_values(self) -> torch.Tensor:
        """(k, P, d) values of the image tokens."""
        return self.values[:, self.image_positions]

    def last_token_attention(self) -> torch.Tensor:
        """(k, P) the last input token's attention probabilities over the image tokens.

        Softmax over every position the last token attends to (the whole causal prefix), then the
        image columns: this is the row the model itself computes.
        """
        q = self.queries[:, -1]  # (k, d)
        logits = torch.einsum("kd,ksd->ks", q.float(), self.keys.float()) * self.scaling  # (k, S)
        probs = logits.softmax(dim=-1)
        return probs[:, self.image_positions]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Capture:
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return Capture(
            heads=self.heads,
            queries=mv(self.queries),
            keys=mv(self.keys),
            values=mv(self.values),
            image_positions=self.image_positions.to(device),
            text_positions=self.text_positions.to(device),
            scaling=self.scaling,
            grid=self.grid,
        )


@dataclass(frozen=True)
class BackboneInfo:
    """What a head needs to know about the backbone it was trained on."""

    name: str  # hub id or directory name as given by the user
    family: str  # "llava", "qwen2_5_vl", ...
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def compatible_with(self, other: BackboneInfo) -> str | None:
        """None if a head for ``other`` runs on ``self``, else a sentence saying what differs."""
        for field in ("family", "num_layers", "num_heads", "head_dim"):
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                return f"{field} is {a} on this backbone but {b} on the head's"
        return None


class BackboneAdapter(ABC):
    """One MLLM family behind one interface. Subclasses set ``family`` and ``model_types``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # ``config.model_type`` values this adapter handles

    model: Any  # the transformers model, eval() and requires_grad_(False)
    processor: Any
    info: BackboneInfo

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_layer: int | None = None,
        attn_implementation: str = "sdpa",
        allow_pickle: bool = False,
    ) -> BackboneAdapter:
        """Load model + processor with the real ``from_pretrained`` (hub id or local directory).

        ``max_layer``: load only decoder layers ``0..max_layer`` (the deepest one a method needs).
        ``allow_pickle``: also read pickled weights (``pytorch_model.bin``); UNSAFE, off by default:
        only safetensors are read, and weights that cannot be read raise ``CheckpointError``.
        """

    @abstractmethod
    def build_prompt(self, instruction: str) -> str:
        """The family's chat template around the image and ``instruction``, ready for prefill."""

    @abstractmethod
    def prepare(self, image: np.ndarray, prompt: str) -> tuple[dict[str, torch.Tensor], ImageGrid]:
        """Processor inputs (on the model's device) and the image-token grid for an RGB uint8 image."""

    @abstractmethod
    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(P,) positions of the image tokens in a 1D ``input_ids``, grid row-major."""

    @abstractmethod
    def capture(
        self, image: np.ndarray, instruction: str, heads: Sequence[HeadRef], *, truncate: bool = True
    ) -> Capture:
        """One prefill; return Q/K/V of ``heads``. ``truncate`` stops after the deepest layer needed."""

    def capture_and_prefix(
        self, image: np.ndarray, instruction: str, heads: Sequence[HeadRef]
    ) -> tuple[Capture, ImagePrefix | None]:
        """``capture(image, instruction, heads)``, and the frame's ``ImagePrefix`` from the same prefill
        (its KV cache through the last image token: ``backbones/prefix.py``), at no extra forward;
        None where the prefix cannot be reused (this default)."""
        return self.capture(image, instruction, heads, truncate=True), None

    def capture_after_prefix(
        self,
        prefix: ImagePrefix,
        instructions: Sequence[str],
        heads: Sequence[HeadRef],
        *,
        batch: bool = True,
    ) -> list[Capture]:
        """``capture(image, instruction, heads)`` for each instruction on the prefix's frame; only each
        instruction's suffix runs. ``batch``: all suffixes in one forward, else one forward each."""
        raise NotImplementedError(f"{type(self).__name__} does not reuse image prefixes")

    def capture_many(
        self,
        image: np.ndarray,
        instructions: Sequence[str],
        heads: Sequence[HeadRef],
        *,
        batch: bool = True,
    ) -> tuple[list[Capture], ImagePrefix | None]:
        """``capture(image, instruction, heads)`` for each instruction, and the frame's prefix (None: not
        reusable). The first instruction's whole prompt runs once and leaves the prefix; the others run
        only their suffixes after it (one whole prefill each where the prefix cannot be reused)."""
        if not instructions:
            raise ValueError("capture_many needs at least one instruction")
        first, prefix = self.capture_and_prefix(image, instructions[0], heads)
        rest = list(instructions[1:])
        if prefix is None:
            return [first, *(self.capture(image, text, heads, truncate=True) for text in rest)], None
        after = self.capture_after_prefix(prefix, rest, heads, batch=batch) if rest else []
        return [first, *after], prefix

    @abstractmethod
    def generate_with_grid(
        self, image: np.ndarray, instruction: str, *, max_new_tokens: int = 64
    ) -> tuple[str, ImageGrid]:
        """Greedy answer plus the image-token grid of the same processor call (text pointing maps the
        coordinates a model writes in its processed frame through it: the image is processed once)."""

    def generate(self, image: np.ndarray, instruction: str, *, max_new_tokens: int = 64) -> str:
        """Greedy generation of an answer (used by the text-pointing baseline only)."""
        return self.generate_with_grid(image, instruction, max_new_tokens=max_new_tokens)[0]

    @property
    def pointing_format(self) -> str:
        """The text-pointing format (prompt and answer) of this checkpoint: its family's, unless its
        config names another (``config.pointing_format``: the tiny-tabletop LLaVA answers like Molmo)."""
        return str(getattr(self.model.config, "pointing_format", None) or self.info.family)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def default_scaling(head_dim: int) -> float:
        return 1.0 / math.sqrt(head_dim)
