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
    size. Tensors are float32 on the CPU unless ``to()`` moved them. Key ``j`` is the token at sequence
    position ``j``; query row ``i`` the token at ``text_positions[i]``.

    The model's own softmax of a head (``model_attention``): logits ``q·k * scaling``, soft-capped to
    ``softcap * tanh(logits / softcap)`` where the head's layer does so (Gemma 2), over the keys its
    query may see: the causal prefix, cut to the last ``window`` positions on a sliding-window layer
    (Gemma 2/3: the query at position p sees keys j with ``p - window < j <= p``). ``windows`` and
    ``softcaps`` are what the layer passed to its attention function (empty: none on any head). The
    query rows are text tokens after the image, so an image's bidirectional block (Gemma 3) never
    applies to them.
    """

    heads: tuple[HeadRef, ...]
    queries: torch.Tensor  # (k, L, d) query rows at ``text_positions`` (RoPE applied)
    keys: torch.Tensor  # (k, S, d) keys of every position (RoPE applied, KV head of each query head)
    values: torch.Tensor  # (k, S, d) values of every position
    image_positions: torch.Tensor  # (P,) long: sequence index of each image token, grid row-major
    text_positions: torch.Tensor  # (L,) long: sequence index of each text query row; last = last token
    scaling: float  # softmax scale the model uses (1 / sqrt(d); Gemma: query_pre_attn_scalar ** -0.5)
    grid: ImageGrid
    windows: tuple[int | None, ...] = ()  # per head: sliding window of its layer (None: whole prefix)
    softcaps: tuple[float | None, ...] = ()  # per head: attention-logit soft-cap of its layer (None: none)

    @property
    def image_keys(self) -> torch.Tensor:
        """(k, P, d) keys of the image tokens."""
        return self.keys[:, self.image_positions]

    @property
    def image_values(self) -> torch.Tensor:
        """(k, P, d) values of the image tokens."""
        return self.values[:, self.image_positions]

    def visible_keys(self, positions: torch.Tensor) -> torch.Tensor:
        """(k, R, S) bool: the keys a query at each sequence position of ``positions`` (R,) sees in the
        model's softmax (causal, and within its head's sliding window)."""
        pos = positions.to(self.keys.device)[:, None]  # (R, 1)
        j = torch.arange(self.keys.shape[1], device=self.keys.device)[None]  # (1, S)
        causal = j <= pos  # (R, S)
        masks = [causal & (pos - j < w) if w is not None else causal for w in self._per_head(self.windows)]
        return torch.stack(masks)  # k x (R, S) -> (k, R, S)

    def attention_logits(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(k, R, S) the logits the model's softmax takes for query rows ``rows`` (indices into
        ``text_positions``; None: all): scaled, soft-capped, -inf on the keys a row does not see."""
        rows = torch.arange(self.queries.shape[1]) if rows is None else rows
        q = self.queries[:, rows.to(self.queries.device)].float()  # (k, R, d)
        logits = torch.einsum("krd,ksd->krs", q, self.keys.float()) * self.scaling  # (k, R, S)
        caps = self._per_head(self.softcaps)
        if any(c is not None for c in caps):  # the layer's soft-cap comes before its mask, as in eager
            logits = torch.stack(
                [lg if c is None else c * torch.tanh(lg / c) for lg, c in zip(logits, caps, strict=True)]
            )
        visible = self.visible_keys(self.text_positions[rows.to(self.text_positions.device)])
        return logits.masked_fill(~visible, float("-inf"))

    def model_attention(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(k, R, S) attention probabilities of query rows ``rows`` (indices into ``text_positions``;
        None: all) over every position, as the model's own softmax computes them."""
        return self.attention_logits(rows).softmax(dim=-1)

    def last_token_attention(self) -> torch.Tensor:
        """(k, P) the last input token's attention probabilities over the image tokens.

        Softmax over every position the last token attends to (the whole causal prefix, or its
        window on a sliding-window layer), then the image columns: the row the model itself computes.
        """
        if not any(w is not None for w in self.windows) and not any(c is not None for c in self.softcaps):
            # the common case: the last token sees every key, no soft-cap
            q = self.queries[:, -1]  # (k, d)
            logits = torch.einsum("kd,ksd->ks", q.float(), self.keys.float()) * self.scaling  # (k, S)
            return logits.softmax(dim=-1)[:, self.image_positions]
        last = torch.tensor([self.queries.shape[1] - 1])
        return self.model_attention(last)[:, 0, self.image_positions]  # (k, 1, S) -> (k, P)

    def _per_head(self, values: tuple) -> tuple:
        """A per-head tuple, or k Nones for an empty one."""
        if not values:
            return (None,) * len(self.heads)
        if len(values) != len(self.heads):
            raise ValueError(f"{len(values)} per-head values for {len(self.heads)} heads")
        return values

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
            windows=self.windows,
            softcaps=self.softcaps,
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
    quantization: str | None = None  # what the decoder's weights hold (``backbones/quantization.py``)

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
        crop: bool = False,
        lm_head: bool = True,
        quantization: str | None = None,
    ) -> BackboneAdapter:
        """Load model + processor with the real ``from_pretrained`` (hub id or local directory).

        ``max_layer``: load only decoder layers ``0..max_layer`` (the deepest one a method needs).
        ``allow_pickle``: also read pickled weights (``pytorch_model.bin``); UNSAFE, off by default:
        only safetensors are read, and weights that cannot be read raise ``CheckpointError``.
        ``crop``: let the processor crop the frame as the checkpoint ships it (LLaVA-1.5: centre crop);
        default False: the whole frame reaches the model (``field_of_view``); families whose processor
        never crops ignore it.
        ``lm_head``: False does not build nor read the language-model head: captures (a2p, attention)
        never use it; generation (text pointing) then raises one ``InputError`` line.
        ``quantization``: None, ``"int8"`` / ``"int4"`` (torchao) or ``"nf4"`` / ``"bnb-int8"``
        (bitsandbytes): the decoder's linear layers only, quantized as they load; one line when the
        package or the device is missing (``backbones/quantization.py``).
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

    def field_of_view(self, image_size: tuple[int, int]) -> str | None:
        """None when every pixel of a frame of ``image_size`` (width, height) reaches the model; else one
        sentence: what fraction the processor cuts, and how to change that. Default: nothing is cut."""
        return None

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
