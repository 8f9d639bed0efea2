"""What the HuggingFace adapters share: loading, input checks, capture, greedy generation.

A family subclass says which model class and processor to load, how its prompt looks and how
its processor maps the image to the image-token grid.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from part_point_ros.backbones.base import BackboneAdapter, BackboneInfo, Capture
from part_point_ros.backbones.capture import capture_qkv
from part_point_ros.errors import HeadMismatchError, InputError, UnknownBackboneError
from part_point_ros.types import HeadRef, ImageGrid

SUPPORTED_HINT = "supported families: llava (LLaVA-1.5), qwen2_5_vl (Qwen2.5-VL)"


def read_config(name_or_path: str) -> Any:
    """``AutoConfig.from_pretrained``; any failure becomes one UnknownBackboneError line."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnknownBackboneError(
            f"cannot read backbone {name_or_path!r}: give a hub id or a local directory with a config.json "
            f"({reason[:160]}); {SUPPORTED_HINT}"
        ) from err


class HFAdapter(BackboneAdapter):
    """A transformers ``*ForConditionalGeneration`` model plus its processor."""

    def __init__(self, *, model: Any, processor: Any, info: BackboneInfo) -> None:
        self.model = model
        self.processor = processor
        self.info = info
        self._lock = threading.Lock()  # one capture at a time: the decoder config is switched during it

    # ----- what a family provides -----------------------------------------------------------------

    @classmethod
    @abstractmethod
    def _model_class(cls) -> type: ...

    @classmethod
    @abstractmethod
    def _load_processor(cls, name_or_path: str) -> Any: ...

    @abstractmethod
    def _grid(self, image_size: tuple[int, int], inputs: dict[str, torch.Tensor]) -> ImageGrid:
        """The image-token grid for an original image of ``image_size`` (width, height)."""

    @property
    def image_token_id(self) -> int:
        """The image placeholder token in ``input_ids`` (``config.image_token_id`` in both families)."""
        return int(self.model.config.image_token_id)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    # ----- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_layer: int | None = None,
        attn_implementation: str = "sdpa",
    ) -> HFAdapter:
        config = read_config(name_or_path)
        if config.model_type not in cls.model_types:
            raise UnknownBackboneError(
                f"{name_or_path!r} is a {config.model_type!r} model, not one of {list(cls.model_types)}; "
                f"{SUPPORTED_HINT}"
            )
        text = config.text_config
        num_layers = text.num_hidden_layers
        if max_layer is not None:
            if not 0 <= max_layer < num_layers:
                raise ValueError(
                    f"max_layer must be in 0..{num_layers - 1} for {name_or_path!r}, got {max_layer}"
                )
            text.num_hidden_layers = max_layer + 1  # layers beyond are never built nor read from disk
            if isinstance(getattr(text, "layer_types", None), list):
                text.layer_types = text.layer_types[: max_layer + 1]
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        if max_layer is not None:  # the skipped layers' weights are reported as "unexpected": expected here
            hf_logging.set_verbosity_error()
        try:
            model = cls._model_class().from_pretrained(
                name_or_path, config=config, dtype=dtype, attn_implementation=attn_implementation
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        model.to(device).eval().requires_grad_(False)
        info = BackboneInfo(
            name=str(name_or_path),
            family=cls.family,
            num_layers=num_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        )
        return cls(model=model, processor=cls._load_processor(name_or_path), info=info)

    # ----- inputs ---------------------------------------------------------------------------------

    @staticmethod
    def check_image(image: np.ndarray) -> np.ndarray:
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            shape = getattr(image, "shape", None)
            raise InputError(
                f"expected an RGB uint8 image of shape (H, W, 3), got {type(image).__name__} {shape}"
            )
        if min(image.shape[:2]) < 2:
            raise InputError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small")
        return image

    def prepare(self, image: np.ndarray, prompt: str) -> tuple[dict[str, torch.Tensor], ImageGrid]:
        from PIL import Image

        image = self.check_image(image)
        batch = self.processor(images=[Image.fromarray(image)], text=[prompt], return_tensors="pt")
        device, dtype = self.device, next(self.model.parameters()).dtype
        inputs = {
            k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }
        grid = self._grid((image.shape[1], image.shape[0]), inputs)
        n_tokens = int((inputs["input_ids"][0] == self.image_token_id).sum())
        if n_tokens != grid.rows * grid.cols:
            raise ValueError(f"{n_tokens} image tokens in the prompt but the grid is {grid.rows}x{grid.cols}")
        return inputs, grid

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(input_ids == self.image_token_id).flatten()

    # ----- capture and generation ---------------------------------------------------------------

    def check_heads(self, heads: Sequence[HeadRef]) -> None:
        loaded = len(self.decoder_layers)
        for ref in heads:
            if not 0 <= ref.head < self.info.num_heads or not 0 <= ref.layer < self.info.num_layers:
                raise HeadMismatchError(
                    f"head {ref} does not exist on {self.info.name} "
                    f"({self.info.num_layers} layers x {self.info.num_heads} heads)"
                )
            if ref.layer >= loaded:
                raise HeadMismatchError(
                    f"head {ref} is in layer {ref.layer} but only layers 0..{loaded - 1} were loaded: "
                    f"load the backbone with max_layer >= {ref.layer}"
                )

    def capture(
        self, image: np.ndarray, instruction: str, heads: Sequence[HeadRef], *, truncate: bool = True
    ) -> Capture:
        heads = tuple(heads)
        self.check_heads(heads)
        inputs, grid = self.prepare(image, self.build_prompt(instruction))
        ids = inputs["input_ids"][0]
        image_positions = self.image_token_positions(ids).cpu()
        text_positions = torch.arange(int(image_positions[-1]) + 1, ids.shape[0])
        attention = [layer.self_attn for layer in self.decoder_layers]
        with self._lock:
            qkv = capture_qkv(
                lambda: self.model.model(**inputs, use_cache=False),
                attention,
                heads,
                text_positions,
                truncate=truncate,
            )
        return Capture(
            heads=heads,
            queries=qkv.queries,
            keys=qkv.keys,
            values=qkv.values,
            image_positions=image_positions,
            text_positions=text_positions,
            scaling=qkv.scaling,
            grid=grid,
        )

    def generate_with_grid(
        self, image: np.ndarray, instruction: str, *, max_new_tokens: int = 64
    ) -> tuple[str, ImageGrid]:
        """Greedy answer. Meaningless (but harmless) on a model loaded with ``max_layer``."""
        inputs, grid = self.prepare(image, self.build_prompt(instruction))
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip(), grid
