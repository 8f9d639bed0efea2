"""Dense feature extractors: an RGB image -> one unit-length feature vector per image cell.

POP (seed 002) matches a support image's annotated patch against every patch of the target image
with a self-supervised ViT (DINOv3 in the paper). Everything POP needs from an encoder is here,
behind one small interface, so the encoder is pluggable by name (``load_extractor``):

- ``dinov3``: ``DINOv3ViTModel`` (transformers), patch 16. Token order of its ``last_hidden_state``
  (``models/dinov3_vit/modeling_dinov3_vit.py``, ``DINOv3ViTEmbeddings.forward``):
  ``[CLS, register_1 .. register_R, patch tokens row-major]`` with R = ``config.num_register_tokens``
  (4 for the released checkpoints), so the patch tokens are ``last_hidden_state[:, 1 + R:]``.
  The features are that final (layer-normed) output. Default hub id: ``DINOV3_DEFAULT`` =
  ``facebook/dinov3-vits16-pretrain-lvd1689m`` (ViT-S/16, the checkpoint transformers' own
  ``DINOv3ViTConfig`` documents; gated on the hub: accept its licence first).
- ``llava-tower``: the CLIP-style vision tower of a LLaVA checkpoint, e.g. the synthetic world's
  frozen ``models/tiny-tabletop-llava`` (pad to square, 160 px, patch 8: 20 x 20 cells), so POP can
  be measured on the synthetic world. Its features are the tower's tokens at the layer LLaVA reads
  (``config.vision_feature_layer``), CLS dropped.

Both return a ``FeatureMap``: the (h, w, C) float32 map, L2-normalised per cell (so a dot product is
the cosine similarity of the paper's A_ij), and an ``ImageGrid`` mapping cell (row, col) to ORIGINAL
pixels (``grid.cell_center`` / ``cell_box``), exactly as the MLLM's token grid does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError

from part_point_ros.errors import CheckpointError, InputError, UnknownBackboneError
from part_point_ros.grounding.attention_pointing import cells_on_image
from part_point_ros.grounding.inputs import check_image
from part_point_ros.types import ImageGrid

DINOV3_DEFAULT = "facebook/dinov3-vits16-pretrain-lvd1689m"
TINY_TABLETOP_LLAVA = "models/tiny-tabletop-llava"
# What DINOv3ViTImageProcessor uses when a checkpoint has no preprocessor_config.json (ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureMap(NamedTuple):
    """One image's dense features; unpacks as ``features, grid = extractor.extract(image)``."""

    features: np.ndarray  # (h, w, C) float32, unit L2 norm per cell
    grid: ImageGrid  # rows = h, cols = w; cell (row, col) -> original pixels

    @property
    def valid(self) -> np.ndarray:
        """(h, w) bool: cells that see some of the original image (not only the processor's padding)."""
        return cells_on_image(self.grid)


def l2_normalise(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``features`` (..., C) divided by their L2 norm along the last axis (zero vectors stay zero)."""
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / np.maximum(norm, eps)).astype(np.float32)


def model_ref(name_or_path: str) -> str:
    """How a model is named in an extractor's ``key``: a hub id as given, a local directory by its
    folder name (a copied or moved checkpoint keeps its identity)."""
    path = Path(name_or_path).expanduser()
    return path.resolve().name if path.is_dir() else str(name_or_path)


class DenseFeatureExtractor(ABC):
    """One frozen encoder behind ``extract``. Subclasses set ``name`` (the registry name)."""

    name: ClassVar[str]
    model_id: str  # hub id or directory as given by the user
    dim: int  # C, the feature size

    @property
    def key(self) -> str:
        """Identity of the feature space (``"dinov3:dinov3-vits16-pretrain-lvd1689m"``): support sets
        store it, and features of different keys are never compared."""
        return f"{self.name}:{model_ref(self.model_id)}"

    @classmethod
    @abstractmethod
    def from_pretrained(cls, name_or_path: str, **options: Any) -> DenseFeatureExtractor:
        """Load the encoder (hub id or local directory; safetensors only)."""

    @abstractmethod
    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense unit-length features of an RGB uint8 (H, W, 3) image, and their grid."""

    def describe(self) -> dict[str, Any]:
        """What is loaded, JSON-ready (support sets store it)."""
        return {"name": self.name, "key": self.key, "model": str(self.model_id), "dim": self.dim}


# ----------------------------------------------------------------------------- DINOv3
def multiple_of_patch_size(width: int, height: int, long_side: int, patch: int) -> tuple[int, int]:
    """(w', h'): the image scaled so that its long side is ``long_side``, each side then rounded to the
    nearest multiple of ``patch`` (at least one patch): the aspect ratio is kept to within half a patch."""
    factor = long_side / max(width, height)
    new_w = max(patch, int(round(width * factor / patch)) * patch)
    new_h = max(patch, int(round(height * factor / patch)) * patch)
    return new_w, new_h


def resize_normalise(
    image: np.ndarray, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], rescale: float
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h', w') float32, the steps of ``DINOv3ViTImageProcessor``:
    rescale, bilinear antialiased resize to ``size`` (w', h'), normalise.

    PIL's bilinear resize of a float ("F") image antialiases on downscaling as torchvision's
    ``antialias=True`` does, and maps pixel edges linearly (x' = x * w' / W), which is what the
    feature grid's ``scale`` assumes.
    """
    from PIL import Image

    pixels = image.astype(np.float32) * rescale  # (H, W, 3)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize(size, Image.BILINEAR))
        for c in range(3)
    ]
    resized = np.stack(channels, axis=0)  # 3 x (h', w') -> (3, h', w')
    mean_arr = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy((resized - mean_arr) / std_arr)[None]  # (3, h', w') -> (1, 3, h', w')


def processor_settings(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, rescale_factor) from the checkpoint's own ``preprocessor_config.json`` (read as
    data: instantiating ``DINOv3ViTImageProcessor`` needs torchvision); ImageNet's where it has none."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    except (OSError, ValueError):
        return IMAGENET_MEAN, IMAGENET_STD, 1.0 / 255.0
    mean = tuple(float(v) for v in config.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in config.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CheckpointError(f"{name_or_path!r}: preprocessor_config.json has mean {mean} / std {std}")
    return mean, std, float(config.get("rescale_factor", 1.0 / 255.0))


def _load_error(name_or_path: str, what: str, err: Exception) -> Exception:
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return UnknownBackboneError(
        f"cannot load {what} {name_or_path!r}: give a hub id or a local directory with its config.json "
        f"and model.safetensors ({reason})"
    )


class DinoV3Extractor(DenseFeatureExtractor):
    """DINOv3 ViT patch features (POP's visual branch)."""

    name = "dinov3"

    def __init__(self, *, model: Any, model_id: str, mean, std, rescale: float, long_side: int = 512) -> None:
        """Use ``from_pretrained``. ``long_side``: the image is resized so that its long side is about
        this many pixels (both sides multiples of the patch size): a 4:3 frame at 512 gives 32 x 24
        cells (POP does not state its input size; DINOv3's processor default, a 224 x 224 square,
        would distort the aspect ratio and give a grid coarser than most MLLMs' token grids)."""
        patch = model.config.patch_size
        if not isinstance(patch, int):
            raise CheckpointError(f"{model_id!r}: non-square patches {patch} are not supported")
        if long_side < patch:
            raise InputError(f"long_side must be at least the patch size {patch}, got {long_side}")
        self.model = model
        self.model_id = model_id
        self.patch = patch
        self.num_registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.dim = int(model.config.hidden_size)
        self.mean, self.std, self.rescale = tuple(mean), tuple(std), float(rescale)
        self.long_side = int(long_side)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DINOV3_DEFAULT,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        long_side: int = 512,
    ) -> DinoV3Extractor:
        """``DINOv3ViTModel.from_pretrained`` (safetensors only) plus its processor's mean / std."""
        from transformers import DINOv3ViTModel

        try:
            model = DINOv3ViTModel.from_pretrained(name_or_path, dtype=dtype, use_safetensors=True)
        except (OSError, ValueError, SafetensorError) as err:
            raise _load_error(name_or_path, "DINOv3 model", err) from err
        model.to(device).eval().requires_grad_(False)
        mean, std, rescale = processor_settings(name_or_path)
        return cls(
            model=model, model_id=str(name_or_path), mean=mean, std=std, rescale=rescale, long_side=long_side
        )

    def grid_for(self, width: int, height: int) -> ImageGrid:
        """The feature grid of a ``width`` x ``height`` image: a plain resize, no pad, no crop."""
        new_w, new_h = multiple_of_patch_size(width, height, self.long_side, self.patch)
        return ImageGrid(
            rows=new_h // self.patch,
            cols=new_w // self.patch,
            orig_size=(width, height),
            processed_size=(new_w, new_h),
            scale=(new_w / width, new_h / height),
            offset=(0.0, 0.0),
        )

    def pixel_values(self, image: np.ndarray) -> tuple[torch.Tensor, ImageGrid]:
        """(1, 3, h', w') model input of a checked image, and its grid."""
        image = check_image(image)
        grid = self.grid_for(image.shape[1], image.shape[0])
        pixels = resize_normalise(image, grid.processed_size, self.mean, self.std, self.rescale)
        param = next(self.model.parameters())
        return pixels.to(device=param.device, dtype=param.dtype), grid

    @torch.no_grad()
    def extract(self, image: np.ndarray) -> FeatureMap:
        pixels, grid = self.pixel_values(image)
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (1, 1 + R + h*w, C)
        prefix = 1 + self.num_registers  # CLS, then the registers
        if hidden.shape[1] != prefix + grid.rows * grid.cols:
            raise CheckpointError(
                f"{self.model_id!r} returned {hidden.shape[1]} tokens for {grid.rows}x{grid.cols} patches "
                f"+ {prefix} CLS/register tokens"
            )
        patches = hidden[0, prefix:].float().cpu().numpy()  # (h*w, C), row-major
        features = patches.reshape(grid.rows, grid.cols, -1)  # (h*w, C) -> (h, w, C)
        return FeatureMap(l2_normalise(features), grid)


# ----------------------------------------------------------------------------- LLaVA tower
class LlavaTowerExtractor(DenseFeatureExtractor):
    """The vision tower of a LLaVA checkpoint as a dense extractor (the synthetic world's encoder).

    The tower is what the MLLM itself sees, so its grid is the MLLM's token grid (``clip_geometry``:
    pad to square, resize, centre crop); cells wholly in the padding are ``FeatureMap.valid`` False.
    """

    name = "llava-tower"

    def __init__(self, *, tower: Any, image_processor: Any, model_id: str, feature_layer: int) -> None:
        """Use ``from_pretrained`` or ``from_model``."""
        self.tower = tower
        self.image_processor = image_processor
        self.model_id = model_id
        self.feature_layer = int(feature_layer)
        self.patch = int(tower.config.patch_size)
        self.dim = int(tower.config.hidden_size)

    @classmethod
    def from_model(cls, model: Any, image_processor: Any, model_id: str) -> LlavaTowerExtractor:
        """Share the tower of an already loaded ``LlavaForConditionalGeneration`` (no second copy)."""
        return cls(
            tower=model.model.vision_tower,
            image_processor=image_processor,
            model_id=model_id,
            feature_layer=model.config.vision_feature_layer,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = TINY_TABLETOP_LLAVA,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LlavaTowerExtractor:
        """Load a LLaVA checkpoint (safetensors) and keep its vision tower and image processor."""
        from transformers import AutoImageProcessor, LlavaForConditionalGeneration

        try:
            model = LlavaForConditionalGeneration.from_pretrained(
                name_or_path, dtype=dtype, use_safetensors=True
            )
            image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError, SafetensorError) as err:
            raise _load_error(name_or_path, "LLaVA model", err) from err
        model.to(device).eval().requires_grad_(False)
        return cls.from_model(model, image_processor, str(name_or_path))

    def grid_for(self, width: int, height: int, pixel_size: tuple[int, int]) -> ImageGrid:
        """The token grid of a ``width`` x ``height`` image whose processed pixels are ``pixel_size``
        (width, height)."""
        from part_point_ros.backbones.llava import clip_geometry

        scale, offset = clip_geometry(self.image_processor, (width, height))
        return ImageGrid(
            rows=pixel_size[1] // self.patch,
            cols=pixel_size[0] // self.patch,
            orig_size=(width, height),
            processed_size=pixel_size,
            scale=scale,
            offset=offset,
        )

    @torch.no_grad()
    def extract(self, image: np.ndarray) -> FeatureMap:
        from PIL import Image

        image = check_image(image)
        pixels = self.image_processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
        param = next(self.tower.parameters())
        pixels = pixels.to(device=param.device, dtype=param.dtype)  # (1, 3, S, S)
        grid = self.grid_for(image.shape[1], image.shape[0], (int(pixels.shape[-1]), int(pixels.shape[-2])))
        states = self.tower(pixels, output_hidden_states=True).hidden_states
        hidden = states[self.feature_layer]  # (1, 1 + P, C): CLS, then the patches row-major
        if hidden.shape[1] != 1 + grid.rows * grid.cols:
            raise CheckpointError(
                f"{self.model_id!r}: the tower returned {hidden.shape[1]} tokens for {grid.rows}x{grid.cols} "
                "patches + CLS"
            )
        patches = hidden[0, 1:].float().cpu().numpy()  # (P, C), CLS dropped, row-major
        features = patches.reshape(grid.rows, grid.cols, -1)  # (P, C) -> (h, w, C)
        return FeatureMap(l2_normalise(features), grid)


# ----------------------------------------------------------------------------- registry
EXTRACTORS: dict[str, type[DenseFeatureExtractor]] = {
    DinoV3Extractor.name: DinoV3Extractor,
    LlavaTowerExtractor.name: LlavaTowerExtractor,
}
DEFAULT_MODELS = {DinoV3Extractor.name: DINOV3_DEFAULT, LlavaTowerExtractor.name: TINY_TABLETOP_LLAVA}


def load_extractor(name: str, model: str | None = None, **options: Any) -> DenseFeatureExtractor:
    """An extractor by registry name (``dinov3``, ``llava-tower``); ``model``: hub id or directory
    (default ``DEFAULT_MODELS[name]``); ``options`` go to its ``from_pretrained`` (device, dtype, ...)."""
    if name not in EXTRACTORS:
        raise InputError(f"unknown feature extractor {name!r}; use one of {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name].from_pretrained(model or DEFAULT_MODELS[name], **options)
