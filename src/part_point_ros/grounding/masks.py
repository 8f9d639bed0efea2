"""``PartMasker``: the mask of the part a point is on, from SAM or SAM 2 prompted with keypoints.

LENS (seed 004) turns the peaks of a frozen MLLM's attention into SAM prompts: NMS on the heatmap
(radius r = 4, up to m = 16 keypoints), sub-pixel refinement, then each keypoint gets a learned
"description" (positive if its region belongs to the target, negative otherwise) that the SAM
decoder reads in place of a label embedding. We have the same keypoints (``PointResult.points``:
the best peak, then NMS peaks, ``peaks.nms_peaks``) but no trained descriptor, so the description is
SAM's own point label: 1 (positive) or 0 (negative). ``prompts_from_result`` makes them: the best
point is always positive; a further point is negative when its score is below ``negative_below``
(for a2p the score is the patch probability that L_bce trains, so 0.5 separates part from not-part,
the role LENS' descriptor plays); by default every point is positive.

LENS does not say how many masks the decoder outputs or which is kept (its decoder is trained with
its own embeddings). We follow SAM's guidance for point prompts: one point is ambiguous (part or
whole object), so ask for the 3 multimask outputs and keep the one with the highest predicted IoU;
several points disambiguate, so ask for the single-mask output (``multimask=None``, the default;
True / False force one way, and with True the highest predicted IoU still decides).

Coordinates: points are in ORIGINAL image pixels (x right, y down, the centre of the top-left pixel
is (0, 0), as everywhere in this package and in SAM, whose prompt encoder adds the half pixel). They
are mapped into the processor's resized frame exactly as the processor maps them (SAM: longest side
resized to ``target_size``, aspect kept, so x' = x * w'/W, y' = y * h'/H with (h', w') the
processor's ``reshaped_input_sizes``; SAM 2: resized to a ``target_size`` square). The chosen
low-resolution mask goes back to (H, W) through the processor's own ``post_process_masks`` (unpad,
then resize), so the mask is exactly the image's size whatever its aspect ratio.

The image embeddings (the vision encoder, by far the costliest step) are kept for the LATEST frame
only: a robot asks several parts of one frame, and a frame is the same when its pixels are equal
(``np.array_equal``, as ``frame_cache.LatestFrame`` does for the MLLM prefix).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from part_point_ros.errors import CheckpointError, InputError, MissingDependencyError
from part_point_ros.grounding.inputs import check_image
from part_point_ros.grounding.result import PointResult

# hub ids of the official checkpoints, as transformers' docs and tests load them
DEFAULT_MODELS = {"sam": "facebook/sam-vit-base", "sam2": "facebook/sam2.1-hiera-tiny"}
DEFAULT_MODEL = DEFAULT_MODELS["sam"]
LENS_MAX_KEYPOINTS = 16  # LENS S1.1: NMS keeps up to N = 16 keypoints
# config.json model_type -> family
FAMILIES = {"sam": "sam", "sam2": "sam2", "sam2_video": "sam2"}


@dataclass(frozen=True)
class MaskResult:
    """The part's mask and how it was found.

    ``mask``: bool (H, W) of the original image. ``score``: the decoder's predicted IoU of the chosen
    mask. ``index``: which decoder output was chosen (0..2 multimask, 0 single). ``points`` (N, 2) and
    ``labels`` (N,): the prompts in original pixels, 1 positive / 0 negative. ``object_score``: SAM 2's
    probability that the prompt is on an object at all (None for SAM). ``cached``: the frame's image
    embeddings were reused.
    """

    mask: np.ndarray
    score: float
    index: int
    points: np.ndarray
    labels: np.ndarray
    multimask: bool
    latency_ms: float
    cached: bool
    object_score: float | None = None
    family: str = "sam"

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(self.mask.sum())

    @property
    def mono8(self) -> np.ndarray:
        """The mask as uint8 (H, W), 255 = part, 0 = not (a ``sensor_msgs/Image`` ``mono8`` mask)."""
        return self.mask.astype(np.uint8) * np.uint8(255)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no mask array)."""
        height, width = self.mask.shape
        return {
            "family": self.family,
            "score": self.score,
            "object_score": self.object_score,
            "index": self.index,
            "multimask": self.multimask,
            "area": self.area,
            "image_size": [width, height],
            "points": [
                {"x": float(x), "y": float(y), "label": int(lab)}
                for (x, y), lab in zip(self.points, self.labels, strict=True)
            ],
            "latency_ms": self.latency_ms,
            "cached": self.cached,
        }


@dataclass
class _Frame:
    """One frame's image embeddings and its sizes: ``original`` (H, W), ``resized`` (h', w')."""

    pixels: np.ndarray  # a copy of the frame's (H, W, 3) uint8 pixels
    embeddings: Any  # SAM: (1, C, h, w) tensor; SAM 2: list of per-level (1, C_l, h_l, w_l) tensors
    original: tuple[int, int]
    resized: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)


def prompts_from_result(
    result: PointResult,
    *,
    max_points: int = LENS_MAX_KEYPOINTS,
    negative_below: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pointer's keypoints as SAM prompts: points (N, 2) in original pixels and labels (N,).

    ``result.points`` (best first) or, when it is empty, (``result.x``, ``result.y``); at most
    ``max_points`` (LENS: 16). The first point is always positive; a further point is negative (0)
    when its score is below ``negative_below`` (None: all positive). See the module docstring.
    """
    if max_points < 1:
        raise InputError(f"max_points must be >= 1, got {max_points}")
    triples = list(result.points) or [(result.x, result.y, result.score)]
    triples = [t for t in triples if np.isfinite(t[0]) and np.isfinite(t[1])][:max_points]
    if not triples:
        raise InputError(
            f"the {result.method!r} pointer found no point for {result.query!r}: "
            "nothing to prompt the mask with"
        )
    points = np.array([[x, y] for x, y, _ in triples], dtype=np.float64)  # (N, 2)
    labels = np.ones(len(triples), dtype=np.int64)
    if negative_below is not None:
        scores = np.array([s for _, _, s in triples], dtype=np.float64)
        labels[1:] = (scores[1:] >= negative_below).astype(np.int64)
    return points, labels


def check_prompts(points: object, labels: object, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Points as (N, 2) float64 and labels as (N,) int64, or a one-line ``InputError``.

    Every point must be finite and on the image (-0.5 <= x < W - 0.5, -0.5 <= y < H - 0.5: on some
    pixel); labels are 1 (positive) or 0 (negative), default all 1, and at least one is positive.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        raise InputError("no points: give at least one (x, y) in original image pixels to prompt the mask")
    if pts.ndim == 1 and pts.size == 2:
        pts = pts.reshape(1, 2)  # a single (x, y) -> (1, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(
            f"points must be (N, 2) pairs (x, y) in original image pixels, got shape {pts.shape}"
        )
    for i, (x, y) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"point {i} is not finite: ({x}, {y})")
        if not (-0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5):
            raise InputError(
                f"point {i} ({x:.1f}, {y:.1f}) is outside the {width}x{height} image: points are original "
                "image pixels (x right, y down, pixel centres at integers)"
            )
    if labels is None:
        labs = np.ones(len(pts), dtype=np.int64)
    else:
        labs = np.asarray(labels).reshape(-1)
        if labs.shape != (len(pts),):
            raise InputError(f"labels must be one per point ({len(pts)}), got {labs.size}")
        if not np.isin(labs, (0, 1)).all():
            raise InputError(f"labels must be 1 (positive) or 0 (negative), got {labs.tolist()}")
        labs = labs.astype(np.int64)
    if not (labs == 1).any():
        raise InputError("every point is negative (label 0): give at least one positive point on the part")
    return pts, labs


def _family_of(model_id: str) -> str:
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(model_id).model_type
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"mask model {model_id!r}: not a local directory and not fetchable ({str(err).splitlines()[0]})"
        ) from err
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"mask model {model_id!r} is a {model_type!r} model; use a SAM or SAM 2 checkpoint "
            f"({', '.join(DEFAULT_MODELS.values())})"
        )
    return FAMILIES[model_type]


class PartMasker:
    """SAM / SAM 2 with keypoint prompts: ``PartMasker.from_pretrained().mask(image, points)``."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        processor: Any,
        multimask: bool | None = None,
        mask_threshold: float = 0.0,
    ) -> None:
        """Use ``from_pretrained`` unless you already hold a loaded ``SamModel`` / ``Sam2Model`` and
        its processor. ``multimask``: None = one point asks for 3 masks (highest predicted IoU kept),
        several points for 1; True / False force it. ``mask_threshold``: on the decoder's logits."""
        from transformers import Sam2Model, SamModel

        if isinstance(model, Sam2Model):
            self.family = "sam2"
        elif isinstance(model, SamModel):
            self.family = "sam"
        else:
            raise CheckpointError(f"PartMasker needs a SamModel or Sam2Model, got {type(model).__name__}")
        self.model = model.eval().requires_grad_(False)  # frozen: LENS never trains the mask model
        self.processor = processor
        self.multimask = multimask
        self.mask_threshold = float(mask_threshold)
        self._lock = threading.Lock()
        self._frame: _Frame | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path = DEFAULT_MODEL,
        *,
        family: str = "auto",
        device: str = "cpu",
        dtype: str = "float32",
        **options: Any,
    ) -> PartMasker:
        """Load a SAM or SAM 2 checkpoint (hub id or directory) and its processor.

        ``family``: "sam", "sam2" or "auto" (read from config.json's ``model_type``). Defaults:
        ``DEFAULT_MODELS`` (SAM ViT-B; LENS used ViT-H, ``facebook/sam-vit-huge``). ``options`` go to
        the constructor (``multimask``, ``mask_threshold``).
        """
        name = str(model_id)
        family = _family_of(name) if family == "auto" else family
        if family not in DEFAULT_MODELS:
            raise InputError(f"unknown mask model family {family!r}; use 'sam', 'sam2' or 'auto'")
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        if family == "sam2":
            from transformers.utils import is_torchvision_available

            if not is_torchvision_available():
                raise MissingDependencyError(
                    "SAM 2's image processor (Sam2ImageProcessor) needs torchvision: install torchvision "
                    "matching your torch, or use a SAM checkpoint (family 'sam', e.g. facebook/sam-vit-base)"
                )
            from transformers import Sam2Model as Model
            from transformers import Sam2Processor as Processor
        else:
            from transformers import SamModel as Model
            from transformers import SamProcessor as Processor
        try:
            model = Model.from_pretrained(name, dtype=getattr(torch, dtype)).to(device)
            processor = Processor.from_pretrained(name)
        except OSError as err:
            raise CheckpointError(f"mask model {name!r}: {str(err).splitlines()[0]}") from err
        return cls(model=model, processor=processor, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def target_size(self) -> int:
        """The side the processor resizes to (SAM: the longest side; SAM 2: both sides)."""
        return int(self.processor.target_size)

    def clear(self) -> None:
        """Drop the kept frame's embeddings (frees their memory)."""
        with self._lock:
            self._frame = None

    def holds(self, image: np.ndarray) -> bool:
        """Whether the embeddings of ``image``'s pixels are kept."""
        frame = self._frame
        return frame is not None and frame.pixels.shape == image.shape and np.array_equal(frame.pixels, image)

    def to_model_frame(
        self, points: np.ndarray, original: tuple[int, int], resized: tuple[int, int]
    ) -> np.ndarray:
        """Points (N, 2) in original pixels -> the processor's resized frame, as the processor maps
        them: x * w'/W, y * h'/H for an ``original`` (H, W) image resized to ``resized`` (h', w')."""
        (height, width), (new_h, new_w) = original, resized
        return np.asarray(points, dtype=np.float64) * np.array([new_w / width, new_h / height])

    def _embed(self, image: np.ndarray) -> tuple[_Frame, bool]:
        """The kept frame if ``image`` has its pixels, else a new one (vision encoder run once)."""
        if self.holds(image):
            return self._frame, True
        inputs = self.processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        original = tuple(int(s) for s in inputs["original_sizes"][0])
        if self.family == "sam":
            resized = tuple(int(s) for s in inputs["reshaped_input_sizes"][0])
        else:
            resized = (self.target_size, self.target_size)
        embeddings = self.model.get_image_embeddings(pixel_values)
        frame = _Frame(
            pixels=np.array(image, copy=True), embeddings=embeddings, original=original, resized=resized
        )
        self._frame = frame  # the latest frame only: the previous frame's embeddings are freed
        return frame, False

    def mask(self, image: np.ndarray, points: object, labels: object = None) -> MaskResult:
        """The part's mask from ``points`` (N, 2) in ORIGINAL pixels (x, y) with ``labels`` (N,):
        1 positive (default), 0 negative. ``image``: RGB uint8 (H, W, 3)."""
        start = time.perf_counter()
        image = check_image(image)
        height, width = image.shape[:2]
        pts, labs = check_prompts(points, labels, width, height)
        multimask = len(pts) == 1 if self.multimask is None else bool(self.multimask)
        with self._lock, torch.inference_mode():
            frame, cached = self._embed(image)
            model_pts = self.to_model_frame(pts, frame.original, frame.resized)
            input_points = torch.as_tensor(model_pts, dtype=torch.float32, device=self.device)[None, None]
            input_labels = torch.as_tensor(labs, device=self.device)[None, None]  # (N,) -> (1, 1, N)
            out = self.model(
                image_embeddings=frame.embeddings,
                input_points=input_points,  # (N, 2) -> (1, 1, N, 2): image, prompt set, points
                input_labels=input_labels,
                multimask_output=multimask,
            )
            iou = out.iou_scores[0, 0].float()  # (1, 1, M) -> (M,)
            index = int(iou.argmax())
            low_res = out.pred_masks[:, 0, index : index + 1].float()  # (1, 1, M, h, w) -> (1, 1, h, w)
            if self.family == "sam":
                full = self.processor.post_process_masks(
                    [low_res.cpu()], [frame.original], [frame.resized], mask_threshold=self.mask_threshold
                )
            else:
                full = self.processor.post_process_masks(
                    [low_res.cpu()], [frame.original], mask_threshold=self.mask_threshold
                )
            mask = full[0][0, 0].numpy().astype(bool)  # (1, 1, H, W) -> (H, W)
            object_score = None
            if getattr(out, "object_score_logits", None) is not None:
                object_score = float(out.object_score_logits.float().sigmoid().reshape(-1)[0])
        if mask.shape != (height, width):
            raise RuntimeError(f"post-processed mask is {mask.shape}, expected {(height, width)}")
        return MaskResult(
            mask=mask,
            score=float(iou[index]),
            index=index,
            points=pts,
            labels=labs,
            multimask=multimask,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            cached=cached,
            object_score=object_score,
            family=self.family,
        )

    def mask_result(
        self,
        image: np.ndarray,
        result: PointResult,
        *,
        max_points: int = LENS_MAX_KEYPOINTS,
        negative_below: float | None = None,
    ) -> MaskResult:
        """The mask of the part a ``PointResult`` points at, prompted with its keypoints
        (``prompts_from_result``)."""
        points, labels = prompts_from_result(result, max_points=max_points, negative_below=negative_below)
        return self.mask(image, points, labels)
