"""What the HuggingFace adapters share: loading, input checks, capture, greedy generation.

A family subclass says which model class and processor to load, how its prompt looks and how
its processor maps the image to the image-token grid.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from part_point_ros.backbones.base import BackboneAdapter, BackboneInfo, Capture
from part_point_ros.backbones.capture import CapturedQKV, capture_qkv, capture_qkv_batch
from part_point_ros.backbones.prefix import (
    PROBES,
    ImagePrefix,
    cache_from_prefix,
    cached_prefix,
    expand_image_token,
    image_prefix_length,
    suffix_batch,
)
from part_point_ros.backbones.quantization import is_quantized, quantization_for
from part_point_ros.errors import CheckpointError, HeadMismatchError, InputError, UnknownBackboneError
from part_point_ros.types import HeadRef, ImageGrid

logger = logging.getLogger(__name__)

# The processor's per-token outputs: made again for each prompt; the other tensors it returns are the image's.
TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


def supported_hint() -> str:
    """``supported model types: ...`` from the registry (imported here: the registry imports this file)."""
    from part_point_ros.backbones.registry import REGISTRY

    return f"supported model types: {', '.join(sorted(REGISTRY))}"


def read_config(name_or_path: str) -> Any:
    """``AutoConfig.from_pretrained``; any failure becomes one UnknownBackboneError line."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnknownBackboneError(
            f"cannot read backbone {name_or_path!r}: give a hub id or a local directory with a config.json "
            f"({reason[:160]}); {supported_hint()}"
        ) from err


PICKLE_HINT = (
    "part-point reads safetensors only, because unpickling a file can run code from it: convert the "
    "weights (load them once where you trust them and save_pretrained(DIR), which writes "
    "model.safetensors), or, if you trust the file, pass allow_pickle=True (CLI: --allow-pickle-weights)"
)
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_local_weights(name_or_path: str) -> None:
    """A local backbone directory without safetensors weights -> one CheckpointError line.

    Pickled weights (``pytorch_model.bin``) are named with the way out; a hub id is not checked here.
    """
    root = Path(name_or_path).expanduser()
    if not root.is_dir() or any(root.glob("*.safetensors")) or any(root.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in root.iterdir() if p.name.endswith(PICKLED_SUFFIXES))
    if pickled:
        raise CheckpointError(
            f"backbone {name_or_path!r} has pickled weights only ({', '.join(pickled[:3])}), no "
            f"model.safetensors; {PICKLE_HINT}"
        )
    raise CheckpointError(
        f"backbone {name_or_path!r} has no weights (no model.safetensors beside its config.json): "
        "copy or download the whole model directory"
    )


def _weights_error(name_or_path: str, err: Exception) -> CheckpointError | None:
    """The one-line CheckpointError for a transformers / safetensors loading failure, else None."""
    reason = " ".join(str(err).split())
    if isinstance(err, SafetensorError):
        return CheckpointError(
            f"backbone {name_or_path!r}: cannot read its weights ({reason[:160]}): the safetensors file is "
            "truncated or not a safetensors file; copy or download it again"
        )
    if isinstance(err, OSError) and "use_safetensors" in reason:  # a hub repo with pickled weights only
        return CheckpointError(f"backbone {name_or_path!r} has pickled weights only; {PICKLE_HINT}")
    if isinstance(err, RuntimeError) and reason.startswith("Error(s) in loading state_dict"):
        return CheckpointError(
            f"backbone {name_or_path!r}: its weights do not load ({reason[:200]}): copy or download the "
            "model again"
        )
    return None


def check_weight_shapes(name_or_path: str, mismatched: Any) -> None:
    """transformers' ``mismatched_keys`` ((name, checkpoint shape, model shape), ...) -> CheckpointError."""
    if not mismatched:
        return
    rows = sorted((str(k), tuple(a), tuple(b)) for k, a, b in mismatched)
    shown = ", ".join(f"{k} {a} != {b}" for k, a, b in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    raise CheckpointError(
        f"backbone {name_or_path!r}: {len(rows)} weight(s) in the checkpoint do not have the shape its "
        f"config.json gives them ({shown}{more}; checkpoint != config): the weights belong to another "
        "model, or config.json was changed; use the model's own files"
    )


NO_LM_HEAD = (
    "this backbone was loaded without its language-model head (lm_head=False), which only text pointing "
    "needs: load it with lm_head=True to generate"
)


class NoLMHead(nn.Module):
    """Stands where ``lm_head`` was: no weights; calling it is the one-line error ``NO_LM_HEAD``."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise InputError(NO_LM_HEAD)


def _concrete_model_class(model_class: type, config: Any) -> type:
    """The class an ``AutoModel*`` would build for ``config`` (a concrete class is returned as is)."""
    mapping = getattr(model_class, "_model_mapping", None)
    return mapping[type(config)] if mapping is not None else model_class


def without_lm_head(model_class: type) -> type:
    """``model_class`` whose ``lm_head`` is never built nor read: it is replaced by ``NoLMHead`` in
    ``post_init``, which the class's ``__init__`` calls last. Under ``from_pretrained`` the original
    head exists only on the meta device (no memory) until then; with no head there is nothing to tie
    (``_tied_weights_keys`` empty), so the checkpoint's ``lm_head.weight`` is one unexpected key that
    is never materialised, and tied embeddings load as the input embedding they are.

    The subclass keeps the class's name and module: transformers looks weight-renaming rules (legacy
    checkpoint keys) up by class name, and skips them for a class defined outside transformers.
    """

    def post_init(self: Any) -> None:
        if not isinstance(getattr(self, "lm_head", None), nn.Module):
            raise UnknownBackboneError(
                f"{model_class.__name__} has no lm_head module, so it cannot be loaded with lm_head=False"
            )
        self.lm_head = NoLMHead()
        model_class.post_init(self)

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise InputError(NO_LM_HEAD)

    headless = type(
        model_class.__name__,
        (model_class,),
        {
            "_tied_weights_keys": {},
            "post_init": post_init,
            "generate": generate,
            "__module__": model_class.__module__,
        },
    )
    headless.__qualname__ = model_class.__qualname__
    return headless


def _dropped_keys(text_layers: range, vision_layers: range, lm_head: bool) -> re.Pattern:
    """Checkpoint keys of what was deliberately not built: decoder layers ``text_layers``, vision-tower
    layers ``vision_layers``, the language-model head unless ``lm_head`` (loading calls them unexpected)."""

    def numbers(layers: range) -> str:
        return "|".join(str(i) for i in layers)

    patterns = []
    if text_layers:  # the decoder's (language_model / text_model / legacy model.layers), not a vision part's
        patterns.append(rf"^(?!.*visi).*(?:^|\.)layers\.(?:{numbers(text_layers)})\.")
    if vision_layers:
        patterns.append(rf"vision_(?:tower|model)\..*\.layers\.(?:{numbers(vision_layers)})\.")
    if not lm_head:
        patterns.append(r"(?:^|\.)lm_head\.")
    return re.compile("|".join(patterns) or r"(?!)")


def _report_loading(name_or_path: str, loading: dict[str, Any], dropped: re.Pattern) -> None:
    """One warning line for weights the model needs but the checkpoint lacks (randomly initialised) and
    for checkpoint weights nothing reads, except the parts ``dropped`` on purpose."""
    missing = sorted(loading.get("missing_keys") or ())
    unexpected = sorted(k for k in loading.get("unexpected_keys") or () if not dropped.search(k))
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} weight(s) not in the checkpoint, left random ({', '.join(missing[:3])})"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint weight(s) unused ({', '.join(unexpected[:3])})")
    if parts:
        logger.warning("backbone %r: %s", name_or_path, "; ".join(parts))


def unseen_fraction(grid: ImageGrid) -> tuple[float, tuple[float, float, float, float]]:
    """(fraction of the original frame no image token sees, (x0, y0, x1, y1) box of what is seen).

    Without ``token_boxes``: the part of the frame inside the processed image (resize, pad, crop map
    the frame linearly: ``ImageGrid.scale`` / ``offset``). With them: the pixels whose centre lies in
    some token's box (every token of the prompt, not only the grid the methods read).
    """
    w, h = grid.orig_size
    if grid.token_boxes is None:
        pw, ph = grid.processed_size
        (sx, sy), (ox, oy) = grid.scale, grid.offset
        x0, x1 = max(0.0, -ox / sx), min(float(w), (pw - ox) / sx)
        y0, y1 = max(0.0, -oy / sy), min(float(h), (ph - oy) / sy)
        eps = 1e-3  # float round-off of the scale, in original pixels
        if x0 <= eps and y0 <= eps and x1 >= w - eps and y1 >= h - eps:
            return 0.0, (0.0, 0.0, float(w), float(h))
        seen = max(0.0, x1 - x0) * max(0.0, y1 - y0)
        return 1.0 - seen / (w * h), (x0, y0, x1, y1)
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in grid.token_boxes[np.isfinite(grid.token_boxes).all(axis=1)]:
        # pixel (x, y) covers [x, x + 1): it is seen when its centre x + 0.5 lies in [x0, x1)
        r0, r1, c0, c1 = (max(0, math.ceil(v - 0.5)) for v in (y0, y1, x0, x1))
        mask[r0:r1, c0:c1] = True
    if mask.all():
        return 0.0, (0.0, 0.0, float(w), float(h))
    ys, xs = np.nonzero(mask)
    box = (
        (0.0, 0.0, 0.0, 0.0)
        if xs.size == 0
        else (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    )
    return 1.0 - float(mask.mean()), box


class HFAdapter(BackboneAdapter):
    """A transformers ``*ForConditionalGeneration`` model plus its processor."""

    # how a user gets the whole frame seen, for ``field_of_view``; a family that can crop says how
    crop_hint: ClassVar[str] = "the checkpoint's image processor settings (preprocessor_config.json) cut it"
    # module path of the decoder in the model (``decoder_layers`` are its ``layers``): what is quantized
    language_model_path: ClassVar[str] = "model.language_model"

    def __init__(
        self, *, model: Any, processor: Any, info: BackboneInfo, quantization: str | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.info = info
        self.quantization = quantization  # None, or the QUANTIZATIONS name its decoder's weights hold
        self._lock = threading.Lock()  # one capture at a time: the decoder config is switched during it
        self._probe_prefix: dict[int, torch.Tensor | None] = {}  # image tokens -> the template's prefix ids
        self._field_of_view: dict[tuple[int, int], str | None] = {}  # frame size -> field_of_view()

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

    @classmethod
    def _check_config(cls, name_or_path: str, config: Any) -> None:
        """Refuse (one UnknownBackboneError line) a checkpoint of this model type the family's code does
        not handle, before anything is read from its weights. Default: every one is handled."""

    @classmethod
    def _trim_config(cls, config: Any) -> None:
        """Cut parts of ``config`` the model never uses (vision-tower layers past the one it reads)
        before the model is built, so they are neither allocated nor read. Default: nothing."""

    def _set_crop(self, crop: bool) -> None:
        """``from_pretrained(crop=...)``: configure the processor to crop (True) or to show the whole
        frame (False). Default: the family's processor never crops, so there is nothing to switch."""

    @property
    def image_token_id(self) -> int:
        """The image placeholder token in ``input_ids`` (``config.image_token_id`` in both families)."""
        return int(self.model.config.image_token_id)

    VISION_ATTRIBUTES = ("vision_tower", "visual", "vision_model")  # where each family keeps its tower

    def compile_vision(self) -> str:
        """``torch.compile`` the vision tower in place (the image's share of a new frame; the decoder is
        left eager: the capture switches its attention function per call). The first frame of each
        size pays the compilation (tens of seconds). Returns the attribute compiled."""
        inner = self.model.model
        name = next(
            (n for n in self.VISION_ATTRIBUTES if isinstance(getattr(inner, n, None), nn.Module)), None
        )
        if name is None:
            raise RuntimeError(f"{type(self.model).__name__} has no vision tower at {self.VISION_ATTRIBUTES}")
        setattr(inner, name, torch.compile(getattr(inner, name)))
        return name

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    @property
    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.decoder_layers]

    def _position_ids(self, ids: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positions of a whole prompt's tokens ``ids`` (S,) as the model's forward takes them for a
        batch of one; ``inputs``: the frame's processor tensors. Default 1D RoPE: (1, S) = 0..S-1."""
        return torch.arange(ids.shape[0], device=ids.device)[None]

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
        allow_pickle: bool = False,
        crop: bool = False,
        lm_head: bool = True,
        quantization: str | None = None,
    ) -> HFAdapter:
        quantized = quantization_for(
            quantization, device=device, dtype=dtype, language_model=cls.language_model_path
        )
        config = read_config(name_or_path)
        if config.model_type not in cls.model_types:
            raise UnknownBackboneError(
                f"{name_or_path!r} is a {config.model_type!r} model, not one of {list(cls.model_types)}; "
                f"{supported_hint()}"
            )
        cls._check_config(name_or_path, config)
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
        if not allow_pickle:
            check_local_weights(name_or_path)
        vision = getattr(config, "vision_config", None)
        vision_layers = getattr(vision, "num_hidden_layers", None) or 0
        cls._trim_config(config)
        dropped = _dropped_keys(
            range(text.num_hidden_layers, num_layers),
            range(getattr(vision, "num_hidden_layers", None) or 0, vision_layers),
            lm_head,
        )
        model_class = cls._model_class()
        if not lm_head:
            model_class = without_lm_head(_concrete_model_class(model_class, config))
        from transformers.utils import logging as hf_logging

        extra: dict[str, Any] = {}
        if quantized is not None:
            extra["quantization_config"] = quantized.config
            if quantized.device_map is not None:
                extra["device_map"] = quantized.device_map
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its report lists the parts dropped on purpose: ours follows
        try:
            model, loading = model_class.from_pretrained(
                name_or_path,
                config=config,
                dtype=dtype,
                attn_implementation=attn_implementation,
                use_safetensors=None if allow_pickle else True,  # None: safetensors first, then .bin
                ignore_mismatched_sizes=True,  # refused below, in one line naming the tensors
                output_loading_info=True,
                **extra,
            )
        except (OSError, RuntimeError, SafetensorError) as err:
            error = _weights_error(name_or_path, err)
            if error is None:
                raise
            raise error from err
        finally:
            hf_logging.set_verbosity(verbosity)
        check_weight_shapes(name_or_path, loading.get("mismatched_keys"))
        _report_loading(name_or_path, loading, dropped)
        if quantized is None or quantized.device_map is None:
            model.to(device)  # a device_map already put every weight on it (bitsandbytes refuses .to)
        model.eval().requires_grad_(False)
        info = BackboneInfo(
            name=str(name_or_path),
            family=cls.family,
            num_layers=num_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        )
        adapter = cls(
            model=model,
            processor=cls._load_processor(name_or_path),
            info=info,
            quantization=None if quantized is None else quantized.name,
        )
        if quantized is not None:
            adapter._check_quantized(name_or_path)
        adapter._set_crop(crop)
        return adapter

    def _check_quantized(self, name_or_path: str) -> None:
        """Fail loudly when the quantization matched no linear layer of the decoder (a family whose
        ``language_model_path`` is wrong would otherwise run in full precision, silently)."""
        linears = [m for m in self.decoder_layers.modules() if hasattr(m, "weight") and m.weight is not None]
        if not any(is_quantized(m.weight) for m in linears):
            raise RuntimeError(
                f"backbone {name_or_path!r}: quantization {self.quantization!r} quantized none of the "
                f"decoder's weights under {self.language_model_path!r}"
            )

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
        expected = grid.rows * grid.cols if grid.token_boxes is None else len(grid.token_boxes)
        if n_tokens != expected:
            raise ValueError(
                f"{n_tokens} image tokens in the prompt but the grid is {grid.rows}x{grid.cols} "
                f"({expected} tokens)"
            )
        self._note_field_of_view(grid)
        return inputs, grid

    def _note_field_of_view(self, grid: ImageGrid) -> str | None:
        """``field_of_view`` of the grid's frame size, worked out from ``grid`` once per size; logged as a
        warning the first time a frame size loses pixels."""
        size = tuple(grid.orig_size)
        if size not in self._field_of_view:
            fraction, (x0, y0, x1, y1) = unseen_fraction(grid)
            message = None
            if fraction > 0:
                w, h = size
                message = (
                    f"{self.info.name}: {fraction:.1%} of a {w}x{h} frame never reaches the model (its image "
                    f"tokens see x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} only): {self.crop_hint}"
                )
                logger.warning(message)
            self._field_of_view[size] = message
        return self._field_of_view[size]

    def field_of_view(self, image_size: tuple[int, int]) -> str | None:
        w, h = (int(v) for v in image_size)
        if (w, h) not in self._field_of_view:  # one processor call on a blank frame of that size
            self.prepare(np.zeros((h, w, 3), dtype=np.uint8), self.build_prompt("x"))
        return self._field_of_view[(w, h)]

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
        return self._capture_prompt(inputs, grid, heads, truncate=truncate)

    def _first_query_row(self, ids: torch.Tensor) -> int:
        """The first causal text row of a prompt ``ids`` (S,): right after the last image token (multi-crop:
        past every tile). A family whose image block ends later overrides this."""
        return int(torch.nonzero(ids == self.image_token_id).max()) + 1

    def _capture_prompt(
        self,
        inputs: dict[str, torch.Tensor],
        grid: ImageGrid,
        heads: tuple[HeadRef, ...],
        *,
        truncate: bool,
        cache: Any = None,
    ) -> Capture:
        """One prefill of a whole prompt (processor ``inputs``); ``cache``: a KV cache it fills as it goes."""
        ids = inputs["input_ids"][0]
        image_positions = self.image_token_positions(ids).cpu()
        text_positions = torch.arange(self._first_query_row(ids), ids.shape[0])
        with self._lock:
            qkv = capture_qkv(
                lambda: self.model.model(**inputs, past_key_values=cache, use_cache=cache is not None),
                self.attention_modules,
                heads,
                text_positions,
                truncate=truncate,
            )
        return _as_capture(qkv, heads, image_positions, text_positions, grid)

    # ----- image-prefix reuse (backbones/prefix.py) ----------------------------------------------

    def prompt_ids(self, instruction: str, n_image_tokens: int) -> torch.Tensor:
        """(S,) the ids the processor makes of the prompt around ``instruction`` for an image of
        ``n_image_tokens`` tokens, without processing the image again (model device)."""
        ids = self.processor.tokenizer(self.build_prompt(instruction), return_tensors="pt")["input_ids"][0]
        return expand_image_token(ids, self.image_token_id, n_image_tokens).to(self.device)

    def _reusable_prefix_length(self, instruction: str, ids: torch.Tensor) -> int | None:
        """P0 of a frame whose prompt for ``instruction`` the processor made ``ids`` (S,) of; None: the
        prefix cannot be reused (the template, the tokenizer or the attention does not allow it)."""
        layer_types = getattr(self.model.config.get_text_config(), "layer_types", None) or ()
        if any(kind != "full_attention" for kind in layer_types):
            return None  # a sliding-window cache keeps only the window: the captured keys would be cut
        n_image = int((ids == self.image_token_id).sum())
        if not torch.equal(self.prompt_ids(instruction, n_image), ids):
            warnings.warn(
                f"{self.info.name}: the tokenizer alone does not give the processor's prompt ids, so "
                "the image prefix is not reused (each query runs the whole prompt)",
                stacklevel=4,
            )
            return None
        if n_image not in self._probe_prefix:  # the template's, the same for every frame of this size
            probes = [self.prompt_ids(probe, n_image) for probe in PROBES]
            length = image_prefix_length(*probes, self.image_token_id)
            self._probe_prefix[n_image] = None if length is None else probes[0][:length]
        prefix = self._probe_prefix[n_image]
        if prefix is None or not torch.equal(ids[: prefix.shape[0]], prefix):
            return None
        return int(prefix.shape[0])

    def capture_and_prefix(
        self, image: np.ndarray, instruction: str, heads: Sequence[HeadRef]
    ) -> tuple[Capture, ImagePrefix | None]:
        heads = tuple(heads)
        self.check_heads(heads)
        inputs, grid = self.prepare(image, self.build_prompt(instruction))
        length = self._reusable_prefix_length(instruction, inputs["input_ids"][0])
        if length is None:
            return self._capture_prompt(inputs, grid, heads, truncate=True), None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        capture = self._capture_prompt(inputs, grid, heads, truncate=True, cache=cache)
        depth = max(ref.layer for ref in heads) + 1  # the truncated prefill filled layers 0..depth-1
        prefix = ImagePrefix(
            grid=grid,
            ids=inputs["input_ids"][0, :length],
            image_positions=capture.image_positions,
            image_inputs={k: v for k, v in inputs.items() if k not in TOKEN_INPUTS and k != "pixel_values"},
            past=cached_prefix(cache, depth, length),
        )
        return capture, prefix

    def capture_after_prefix(
        self,
        prefix: ImagePrefix,
        instructions: Sequence[str],
        heads: Sequence[HeadRef],
        *,
        batch: bool = True,
    ) -> list[Capture]:
        heads = tuple(heads)
        self.check_heads(heads)
        deepest = max(ref.layer for ref in heads)
        if deepest >= prefix.depth:
            raise HeadMismatchError(
                f"head layer {deepest} is past the prefix's cache (layers 0..{prefix.depth - 1}): prefill "
                "the frame with these heads"
            )
        prompts = [self._prompt_after(prefix, instruction) for instruction in instructions]
        if batch:
            return self._capture_suffixes(prefix, prompts, heads)
        return [self._capture_suffixes(prefix, [prompt], heads)[0] for prompt in prompts]

    def _prompt_after(self, prefix: ImagePrefix, instruction: str) -> torch.Tensor:
        """(S,) the whole prompt's ids for ``instruction``; they start with the prefix's."""
        ids = self.prompt_ids(instruction, int((prefix.ids == self.image_token_id).sum()))
        if not torch.equal(ids[: prefix.length], prefix.ids):  # the prefix ends with a special token
            raise RuntimeError(f"the prompt for {instruction!r} does not start with the frame's prefix")
        return ids

    def _capture_suffixes(
        self, prefix: ImagePrefix, prompts: Sequence[torch.Tensor], heads: tuple[HeadRef, ...]
    ) -> list[Capture]:
        """One forward over the suffixes of ``prompts`` (whole prompts' ids) after the prefix's cache."""
        pad_id = self.processor.tokenizer.pad_token_id
        positions = [self._position_ids(ids, prefix.image_inputs) for ids in prompts]
        batch = suffix_batch(prompts, positions, prefix.length, 0 if pad_id is None else pad_id)
        first_text = prefix.length  # Capture's query rows: every token after the image (the prefix's end)
        text_positions = [torch.arange(first_text, prefix.length + n) for n in batch.lengths]
        cache = cache_from_prefix(prefix, len(prompts), self.model.config)
        with self._lock:
            qkvs = capture_qkv_batch(
                lambda: self.model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    past_key_values=cache,
                    use_cache=True,
                ),
                self.attention_modules,
                heads,
                [rows - prefix.length for rows in text_positions],  # sequence index -> suffix index
                [prefix.length + n for n in batch.lengths],  # keys: the prefix and the real suffix tokens
            )
        return [
            _as_capture(qkv, heads, prefix.image_positions, rows, prefix.grid)
            for qkv, rows in zip(qkvs, text_positions, strict=True)
        ]

    def generate_with_grid(
        self, image: np.ndarray, instruction: str, *, max_new_tokens: int = 64
    ) -> tuple[str, ImageGrid]:
        """Greedy answer. Meaningless (but harmless) on a model loaded with ``max_layer``."""
        inputs, grid = self.prepare(image, self.build_prompt(instruction))
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip(), grid


def _as_capture(
    qkv: CapturedQKV,
    heads: tuple[HeadRef, ...],
    image_positions: torch.Tensor,
    text_positions: torch.Tensor,
    grid: ImageGrid,
) -> Capture:
    return Capture(
        heads=heads,
        queries=qkv.queries,
        keys=qkv.keys,
        values=qkv.values,
        image_positions=image_positions,
        text_positions=text_positions,
        scaling=qkv.scaling,
        grid=grid,
        windows=qkv.windows,  # what each head's softmax used besides the scale (capture.py)
        softcaps=qkv.softcaps,
    )
