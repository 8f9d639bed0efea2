"""``PartPointer``: the inference facade over a frozen backbone and one of three pointing methods.

- ``a2p``: ONE truncated prefill captures Q/K/V of the head's localization heads (decoder layers past
  the deepest one are never loaded), the trained ``PartPointHead`` gives a heatmap at 4x the token
  grid, its peak (LENS sub-pixel refined) is mapped to original pixels (``decode_a2p``, shared with
  the evaluation from cached features). Heatmap cells wholly in the processor's padding
  (pad-to-square) are masked out before the softmax and never win; a point from a cell only partly
  on the image is clamped onto it, so every point has 0 <= x <= W - 1 and 0 <= y <= H - 1.
  ``score`` = mean over the k heads of sigmoid(q_s·K_v/√d_h) at the grid cell under the peak: the
  patch-level probability that L_bce trains, so 0.5 is a natural ``found`` threshold.
- ``attention``: the Kang et al. baseline on the localization heads (``attention_pointing``).
  ``score`` = share of the map's mass in the 3x3 cells around the peak (no calibrated confidence;
  default threshold 0.0: always found).
- ``text``: the backbone writes the point (seed 000 Fig. 5 prompts, ``text_pointing``).
  ``score`` = 1.0 if a point was parsed and lies in the image, else 0.0 (and x, y are NaN).

Several parts of one frame: ``point_many(image, queries)``. For a2p and attention the image is
processed and prefilled once (``backbones/prefix.py``) and only each query's suffix runs, all in
one forward (``batch_queries``); the a2p head then runs once over the batch. With ``reuse_prefix``
the latest frame's prefix is also kept (``frame_cache.py``), so a later ``point`` on the same pixels
skips the image. Both give the points of the uncached path (tests: equal Q/K/V to 1e-5, same points).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from part_point_ros.backbones.base import BackboneAdapter, BackboneInfo, Capture
from part_point_ros.errors import CheckpointError, HeadMismatchError, InputError
from part_point_ros.grounding.attention_pointing import (
    attention_heatmap,
    cells_on_image,
    clamp_to_image,
    peak_share,
)
from part_point_ros.grounding.frame_cache import LatestFrame
from part_point_ros.grounding.inputs import (
    MAX_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    MAX_QUERY_CHARS,
    check_image,
    check_limits,
    check_query,
    reserved_tokens,
)
from part_point_ros.grounding.localization_heads import HeadsFile, known_heads_name, load_heads
from part_point_ros.grounding.peaks import Peak, argmax_peak, nms_peaks, refine_peak
from part_point_ros.grounding.result import PointResult
from part_point_ros.grounding.text_pointing import parse_answer, text_prompt, to_original_pixels
from part_point_ros.types import HeadRef, ImageGrid

METHODS = ("a2p", "attention", "text")
DEFAULT_THRESHOLDS = {"a2p": 0.5, "attention": 0.0, "text": 0.5}


def _load_backbone(name: str, **kwargs: Any) -> BackboneAdapter:
    from part_point_ros.backbones.registry import load_backbone

    return load_backbone(name, **kwargs)


def head_backbone(name: str, head_dir: Path) -> str:
    """The backbone a head's config.json names, as ``load_backbone`` should get it.

    Training writes a local backbone as given, relative to the working directory of the run
    (``models/tiny-tabletop-llava``); so a relative name is tried from the working directory, then
    from the head directory, then as a sibling of the head directory (``models/`` in the checkout
    and in the installed ``share/part_point_ros/models``). Anything else is a hub id.
    """
    path = Path(name).expanduser()
    if path.is_absolute() or (path / "config.json").is_file():
        return str(path)
    for candidate in (head_dir / path, head_dir.parent / path.name):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return name


def _load_head(head: str | Path, device: str) -> tuple[Any, Path]:
    from part_point_ros.heads import PartPointHead

    path = Path(head)
    if not path.exists() and str(head).count("/") == 1 and not str(head).startswith((".", "/")):
        try:  # a hub id: fetch the directory (works offline when it is cached)
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(head), allow_patterns=["config.json", "model.safetensors"]))
        except Exception as err:  # noqa: BLE001 - any hub failure is "head not found" to the user
            raise CheckpointError(f"head {head!r}: not a local directory and not fetchable ({err})") from err
    return PartPointHead.from_pretrained(path, device=device), path


def _resolve_heads(heads: Any, backbone_name: str) -> tuple[list[HeadRef], HeadsFile | None]:
    """Heads for the attention method: HeadRefs / "L14H24" strings / a heads file / a known name."""
    if heads is None:
        name = known_heads_name(backbone_name)
        if name is None:
            raise CheckpointError(
                f"no known localization heads for backbone {backbone_name!r}: run `part-point select-heads` "
                "and pass the file (`--heads FILE`, the `heads_file` parameter of part_point_node, "
                "heads=... in Python)"
            )
        hf = load_heads(name)
        return hf.top(), hf
    if isinstance(heads, (str, Path)):
        hf = load_heads(heads)
        return hf.top(), hf
    refs = [
        h if isinstance(h, HeadRef) else HeadRef.parse(h) if isinstance(h, str) else HeadRef(*h)
        for h in heads
    ]
    return refs, None


def _check_heads_fit(heads: Sequence[HeadRef], info: BackboneInfo, what: str) -> None:
    for ref in heads:
        if not (0 <= ref.layer < info.num_layers and 0 <= ref.head < info.num_heads):
            raise HeadMismatchError(
                f"{what} lists head {ref} but backbone {info.name!r} has {info.num_layers} layers x "
                f"{info.num_heads} heads: the heads were made for another backbone"
            )


def find_peaks(
    heatmap: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    subpixel: bool,
    max_points: int = 5,
    nms_radius: float = 4.0,
    rel_threshold: float = 0.5,
) -> list[Peak]:
    """The best peak (sub-pixel refined if asked), then up to ``max_points - 1`` more NMS peaks above
    ``rel_threshold`` x the best value; only cells in ``valid`` (default: all) can be peaks."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    best = argmax_peak(heatmap, valid)
    if subpixel:
        best = refine_peak(heatmap, best, valid=valid)
    if max_points == 1:
        return [best]
    others = nms_peaks(
        heatmap,
        radius=nms_radius,
        max_points=max_points,
        min_value=rel_threshold * best.value,
        subpixel=subpixel,
        valid=valid,
    )
    return [best, *others[1:]]


def clamp_into_image(grid: ImageGrid, x: float, y: float) -> tuple[float, float]:
    """(x, y) moved into [0, W - 1] x [0, H - 1] of the original image."""
    width, height = grid.orig_size
    return min(max(float(x), 0.0), width - 1.0), min(max(float(y), 0.0), height - 1.0)


def decode_a2p(
    heatmap_logits: torch.Tensor,
    attn_logits: torch.Tensor,
    grid: ImageGrid,
    upscale: int,
    *,
    subpixel: bool = True,
    max_points: int = 1,
    nms_radius: float = 4.0,
    rel_threshold: float = 0.5,
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """One sample's head output -> (heatmap, points): THE a2p decoding, for ``PartPointer`` and for
    the evaluation from cached features alike.

    ``heatmap_logits``: (s·rows, s·cols), s = ``upscale``; ``attn_logits``: (k, P) patch logits.
    The heatmap is the softmax over the cells that cover some of the original image (cells wholly
    in pad-to-square padding get probability 0 and are never peaks); points are (x, y, score) in
    original pixels, best first, clamped into [0, W - 1] x [0, H - 1]; score = mean over the k
    heads of sigmoid(attn logit) at the (on-image) token-grid cell under the peak.
    """
    logits = heatmap_logits.float()
    expected = (grid.rows * upscale, grid.cols * upscale)
    if tuple(logits.shape) != expected:
        raise ValueError(f"heatmap is {tuple(logits.shape)} but the grid x upscale is {expected}")
    valid = cells_on_image(grid, upscale)  # (s·rows, s·cols) bool
    masked = logits.masked_fill(~torch.from_numpy(valid).to(logits.device), float("-inf"))
    prob = masked.flatten().softmax(0).reshape(logits.shape).cpu().numpy()  # (s·rows·s·cols,) -> map
    patch_prob = attn_logits.float().sigmoid().mean(0).cpu().numpy()  # (k, P) -> (P,)
    on_cells = cells_on_image(grid)  # (rows, cols): the score's cell is one of these
    on_rows, on_cols = np.flatnonzero(on_cells.any(1)), np.flatnonzero(on_cells.any(0))
    peaks = find_peaks(
        prob,
        valid,
        subpixel=subpixel,
        max_points=max_points,
        nms_radius=nms_radius,
        rel_threshold=rel_threshold,
    )

    def cell_score(peak: Peak) -> float:
        row = min(max(int((peak.row + 0.5) // upscale), int(on_rows[0])), int(on_rows[-1]))
        col = min(max(int((peak.col + 0.5) // upscale), int(on_cols[0])), int(on_cols[-1]))
        return float(patch_prob[row * grid.cols + col])  # row-major (rows, cols) -> (P,)

    points = [
        (*clamp_into_image(grid, *grid.heatmap_to_pixel(p.row, p.col, upscale)), cell_score(p)) for p in peaks
    ]
    return prob.astype(np.float32), points


def _info_from_dict(data: dict[str, Any]) -> BackboneInfo | None:
    try:
        return BackboneInfo(**{f: data[f] for f in BackboneInfo.__dataclass_fields__})
    except (KeyError, TypeError):
        return None


class PartPointer:
    """Point at object parts: ``PartPointer.from_pretrained(...).point(image, "the handle of the mug")``."""

    def __init__(
        self,
        *,
        backbone: BackboneAdapter,
        method: str = "a2p",
        head: Any = None,
        heads: Sequence[HeadRef] | None = None,
        threshold: float | None = None,
        subpixel: bool | None = None,
        max_points: int = 5,
        nms_radius: float = 4.0,
        points_rel_threshold: float = 0.5,
        max_new_tokens: int = 64,
        prompt_mode: str = "auto",
        allow_grey: bool = False,
        max_query_chars: int = MAX_QUERY_CHARS,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_aspect_ratio: float = MAX_ASPECT_RATIO,
        reuse_prefix: bool = True,
        batch_queries: bool = True,
        max_batch: int = 8,
    ) -> None:
        """Use ``from_pretrained`` unless you already hold a backbone adapter (and head).

        ``subpixel``: LENS refinement of the peak; default on for a2p, off for attention (Kang et al.
        point at the argmax patch's centre). ``max_points`` / ``nms_radius`` (heatmap pixels) /
        ``points_rel_threshold`` (fraction of the peak value) shape ``PointResult.points``.
        ``max_image_pixels`` / ``max_aspect_ratio`` (long side / short side): larger images are
        refused with an ``InputError`` before they reach the processor (``inputs.check_image_size``).
        ``reuse_prefix`` (a2p, attention): prefill each frame's image once and keep the latest frame's
        prefix for later calls on the same pixels; False: every query runs its whole prompt.
        ``batch_queries``: ``point_many`` runs the queries' suffixes (and the a2p head) in one forward
        (right-padded; faster on the CPU, ``part-point bench``); False: one forward per query.
        ``max_batch``: at most this many queries per forward (each row of a batch holds its own copy of
        the prefix's KV cache, ~150 MB for a 600-token prefix through 15 layers of a 7B model in bf16).
        """
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if method == "a2p" and head is None:
            raise CheckpointError("method 'a2p' needs a trained head (head=DIR / --head DIR)")
        if method == "attention" and not heads:
            raise CheckpointError(
                "method 'attention' needs localization heads (`--heads FILE`, the `heads_file` parameter of "
                "part_point_node, heads=... in Python)"
            )
        self.backbone = backbone
        self.method = method
        self.head = head
        self.heads = tuple(head.config.head_refs) if head is not None else tuple(heads or ())
        self.threshold = DEFAULT_THRESHOLDS[method] if threshold is None else float(threshold)
        self.subpixel = (method == "a2p") if subpixel is None else bool(subpixel)
        self.max_points = max_points
        self.nms_radius = nms_radius
        self.points_rel_threshold = points_rel_threshold
        self.max_new_tokens = max_new_tokens
        self.prompt_mode = prompt_mode
        self.allow_grey = allow_grey
        self.max_query_chars = max_query_chars
        self.max_image_pixels, self.max_aspect_ratio = check_limits(max_image_pixels, max_aspect_ratio)
        self.reserved_tokens = reserved_tokens(getattr(backbone, "processor", None))  # never in a query
        self.reuse_prefix = reuse_prefix
        self.batch_queries = batch_queries
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.frame = LatestFrame()  # the latest frame's image prefix (reuse_prefix); .clear() frees it
        if head is not None:
            self._check_head(head)
        elif self.heads:
            _check_heads_fit(self.heads, backbone.info, "the heads list")

    def _check_head(self, head: Any) -> None:
        trained = _info_from_dict(head.config.backbone)
        info = self.backbone.info
        if trained is None:
            raise CheckpointError(f"head config's backbone entry is incomplete: {head.config.backbone}")
        diff = info.compatible_with(trained)
        if diff is not None:
            raise HeadMismatchError(
                f"head was trained for backbone {trained.name!r} ({trained.family}) but {info.name!r} "
                f"is loaded: {diff}"
            )
        _check_heads_fit(self.heads, info, "the head")

    @classmethod
    def from_pretrained(
        cls,
        backbone: str | None = None,
        head: str | Path | None = None,
        *,
        method: str = "a2p",
        device: str = "cpu",
        dtype: str = "float32",
        heads: Any = None,
        k: int = 5,
        attn_implementation: str = "sdpa",
        allow_pickle: bool = False,
        **options: Any,
    ) -> PartPointer:
        """Load the backbone (hub id or directory) and, for ``a2p``, the head directory.

        ``a2p``: ``backbone`` defaults to the one named in the head's config; the backbone is loaded
        only up to the head's deepest layer. ``attention``: ``heads`` is a heads file, a shipped
        name, or a list of (layer, head); default: the shipped heads for a known backbone; the top
        ``k`` are used. ``text``: the whole backbone is loaded. ``options`` go to ``__init__``.
        Backbone weights are read from safetensors only; ``allow_pickle=True`` also accepts pickled
        ``pytorch_model.bin`` files, which is UNSAFE: unpickling can run code from the file.
        """
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        from part_point_ros.backbones.registry import check_device

        check_device(device)  # one line for cuda on a machine without it, before anything loads
        load = {
            "device": device,
            "dtype": dtype,
            "attn_implementation": attn_implementation,
            "allow_pickle": allow_pickle,
        }
        head_module = None
        head_refs: list[HeadRef] | None = None
        if method == "a2p":
            if head is None:
                raise CheckpointError("method 'a2p' needs a trained head directory (head=DIR / --head DIR)")
            head_module, head_dir = _load_head(head, device)
            backbone = backbone or head_backbone(str(head_module.config.backbone["name"]), head_dir)
            load["max_layer"] = max(layer for layer, _ in head_module.config.heads)
        elif backbone is None:
            raise InputError(f"method {method!r} needs a backbone (hub id or directory)")
        if method == "attention":
            head_refs, _ = _resolve_heads(heads, str(backbone))
            if k < 1:
                raise InputError(f"k must be >= 1, got {k}")
            head_refs = head_refs[:k]
            load["max_layer"] = max(ref.layer for ref in head_refs)
        try:
            adapter = _load_backbone(str(backbone), **load)
        except ValueError as err:
            if "max_layer" not in str(err):
                raise
            what = "the head" if method == "a2p" else "the heads"
            raise HeadMismatchError(
                f"{what} need layer {load['max_layer']}, which backbone {str(backbone)!r} does not have: "
                "they were made for another backbone"
            ) from err
        return cls(backbone=adapter, method=method, head=head_module, heads=head_refs, **options)

    # ------------------------------------------------------------------------------ inference
    def point(self, image: np.ndarray, query: str) -> PointResult:
        """Point at ``query`` in ``image`` ((H, W, 3) uint8 RGB); x, y in ORIGINAL-image pixels."""
        return self.point_many(image, [query])[0]

    def point_many(self, image: np.ndarray, queries: Sequence[str]) -> list[PointResult]:
        """``point(image, query)`` for each of ``queries`` on one frame: the same results, in order.

        a2p / attention: the image is prefilled once and the queries' suffixes run together (see the
        module docstring). text: one generation per query (a loop: each answer is generated on its
        own). Every result's ``latency_ms`` is the wall time of the whole call.
        """
        image = check_image(
            image,
            allow_grey=self.allow_grey,
            max_image_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
        )
        if isinstance(queries, str):
            raise InputError("point_many takes a list of queries; use point() for one query")
        queries = [
            check_query(query, max_chars=self.max_query_chars, reserved=self.reserved_tokens)
            for query in queries
        ]
        if not queries:
            raise InputError("point_many needs at least one query")
        self._sync()
        start = time.perf_counter()
        with torch.inference_mode():
            if self.method == "text":
                results = [self._point_text(image, query) for query in queries]
            else:  # max_batch queries at a time; from the second chunk on the frame's prefix is reused
                results = []
                for start_at in range(0, len(queries), self.max_batch):
                    chunk = queries[start_at : start_at + self.max_batch]
                    captures = self._captures(image, chunk)
                    if self.method == "a2p":
                        results += self._point_a2p(captures, chunk)
                    else:
                        results += [self._point_attention(c, q) for c, q in zip(captures, chunk, strict=True)]
        self._sync()
        latency_ms = (time.perf_counter() - start) * 1000.0
        for result in results:
            result.latency_ms = latency_ms
            result.found = bool(result.score >= self.threshold) and math.isfinite(result.x)
        return results

    def _sync(self) -> None:
        if self.backbone.device.type == "cuda":
            torch.cuda.synchronize(self.backbone.device)

    def _captures(self, image: np.ndarray, queries: Sequence[str]) -> list[Capture]:
        """Truncated captures of the pointer's heads, one per query (``reuse_prefix``: see the module)."""
        if not self.reuse_prefix:
            return [self.backbone.capture(image, query, self.heads, truncate=True) for query in queries]
        prefix = self.frame.find(image)
        if prefix is not None:
            return self.backbone.capture_after_prefix(prefix, queries, self.heads, batch=self.batch_queries)
        captures, prefix = self.backbone.capture_many(image, queries, self.heads, batch=self.batch_queries)
        self.frame.keep(image, prefix)
        return captures

    def _point_a2p(self, captures: Sequence[Capture], queries: Sequence[str]) -> list[PointResult]:
        """The head over the captures (one forward, or one per query without ``batch_queries``), decoded."""
        groups = [list(range(len(captures)))] if self.batch_queries else [[i] for i in range(len(captures))]
        results: list[PointResult] = []
        for group in groups:
            out = self._run_head([captures[i] for i in group])
            results += [
                self._a2p_result(out.heatmap[b], out.attn_logits[b], captures[i].grid, queries[i])
                for b, i in enumerate(group)
            ]
        return results

    def _run_head(self, captures: Sequence[Capture]) -> Any:
        """One head forward over captures of one frame; their query rows right-padded and masked."""
        device = next(self.head.parameters()).device
        captures = [c.to(device) for c in captures]
        rows = [c.queries.transpose(0, 1) for c in captures]  # (k, L_b, d) -> (L_b, k, d)
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # B x (L_b, k, d) -> (B, L, k, d)
        queries = padded.permute(0, 2, 1, 3)  # (B, L, k, d) -> (B, k, L, d)
        lengths = torch.tensor([r.shape[0] for r in rows], device=device)
        mask = torch.arange(queries.shape[2], device=device)[None] < lengths[:, None]  # (B, L)
        keys = torch.stack([c.image_keys for c in captures])  # B x (k, P, d) -> (B, k, P, d)
        values = torch.stack([c.image_values for c in captures])  # B x (k, P, d) -> (B, k, P, d)
        grid = captures[0].grid
        return self.head(queries, mask, keys, values, (grid.rows, grid.cols))

    def _a2p_result(
        self, heatmap: torch.Tensor, attn_logits: torch.Tensor, grid: ImageGrid, query: str
    ) -> PointResult:
        upscale = self.head.config.upscale
        prob, points = decode_a2p(
            heatmap,  # (s·rows, s·cols)
            attn_logits,  # (k, P)
            grid,
            upscale,
            subpixel=self.subpixel,
            max_points=self.max_points,
            nms_radius=self.nms_radius,
            rel_threshold=self.points_rel_threshold,
        )
        x, y, score = points[0]
        return PointResult(
            x=x, y=y, score=score, found=False, method="a2p", latency_ms=0.0, query=query,
            heatmap=prob, grid=grid, upscale=upscale, points=points,
        )  # fmt: skip

    def _point_attention(self, capture: Capture, query: str) -> PointResult:
        grid = capture.grid
        heatmap = attention_heatmap(capture)
        peaks = find_peaks(
            heatmap,
            cells_on_image(grid),
            subpixel=self.subpixel,
            max_points=self.max_points,
            nms_radius=self.nms_radius,
            rel_threshold=self.points_rel_threshold,
        )
        # Kang et al. point at the argmax patch's centre; sub-pixel refinement is an option on top.
        points = [
            (*clamp_to_image(grid, *grid.heatmap_to_pixel(p.row, p.col, 1)), peak_share(heatmap, p))
            for p in peaks
        ]
        x, y, score = points[0]
        return PointResult(
            x=x, y=y, score=score, found=False, method="attention", latency_ms=0.0, query=query,
            heatmap=heatmap, grid=grid, upscale=1, points=points,
        )  # fmt: skip

    def _point_text(self, image: np.ndarray, query: str) -> PointResult:
        family = self.backbone.pointing_format  # the checkpoint's own format (config.pointing_format)
        prompt = text_prompt(family, query, mode=self.prompt_mode)
        answer, grid = self.backbone.generate_with_grid(image, prompt, max_new_tokens=self.max_new_tokens)
        height, width = image.shape[:2]
        if family == "qwen2_5_vl":  # Qwen answers in pixels of the resized input: map through the grid
            parse = parse_answer(family, answer, processed_size=grid.processed_size)
            frame = grid
        else:  # LLaVA / Molmo answers are normalised to the original image
            parse = parse_answer(family, answer)
            frame = ImageGrid(1, 1, (width, height), (width, height), (1.0, 1.0), (0.0, 0.0))
        pixels = [(x, y) for x, y in to_original_pixels(parse, frame) if 0 <= x <= width and 0 <= y <= height]
        if not pixels:
            return PointResult(
                x=float("nan"), y=float("nan"), score=0.0, found=False, method="text", latency_ms=0.0,
                query=query, text=answer, grid=grid,
            )  # fmt: skip
        return PointResult(
            x=pixels[0][0], y=pixels[0][1], score=1.0, found=False, method="text", latency_ms=0.0,
            query=query, points=[(x, y, 1.0) for x, y in pixels], text=answer, grid=grid,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What is loaded: method, backbone info, heads."""
        return {
            "method": self.method,
            "backbone": asdict(self.backbone.info),
            "heads": [str(h) for h in self.heads],
            "threshold": self.threshold,
        }
