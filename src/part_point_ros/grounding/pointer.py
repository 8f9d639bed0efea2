"""``PartPointer``: the inference facade over a frozen backbone and one pointing method.

The methods live in ``grounding/methods/``, one file each (``a2p``: the trained Q-Synth + A2P
head; ``attention``: Kang et al.'s attention pointing; ``text``: the backbone writes the point;
``pop``: attention fused with dense-feature matches to a few taught examples, ``teach``).
The facade loads the backbone (only as deep as the method reads), checks every input, keeps the
latest frame's image prefix, runs the method and sets ``found = score >= threshold``.

Several parts of one frame: ``point_many(image, queries)``. For the methods that read attention
the image is processed and prefilled once (``backbones/prefix.py``) and only each query's suffix
runs, all in one forward (``batch_queries``); the a2p head then runs once over the batch. With
``reuse_prefix`` the latest frame's prefix is also kept (``frame_cache.py``), so a later ``point``
on the same pixels skips the image. Both give the points of the uncached path (tests: equal Q/K/V
to 1e-5, same points).
"""

from __future__ import annotations

import json
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
from part_point_ros.grounding.methods.a2p import A2PMethod, calibrated_threshold
from part_point_ros.grounding.methods.attention import AttentionMethod
from part_point_ros.grounding.methods.base import PeakOptions, PointingMethod
from part_point_ros.grounding.methods.pop import PopMethod, PopOptions
from part_point_ros.grounding.methods.text import TextMethod
from part_point_ros.grounding.result import PointResult
from part_point_ros.types import HeadRef

POINTING_METHODS: dict[str, type[PointingMethod]] = {
    m.name: m for m in (A2PMethod, AttentionMethod, TextMethod, PopMethod)
}
METHODS = tuple(POINTING_METHODS)
DEFAULT_THRESHOLDS = {name: m.default_threshold for name, m in POINTING_METHODS.items()}


def default_threshold(method: str, head: str | Path | None = None) -> float:
    """The ``found`` threshold ``method`` uses when none is given, without loading a model: for a2p
    with a local head directory whose config carries a calibrated one (``a2p.calibrated_threshold``),
    that; else the method's default (``DEFAULT_THRESHOLDS``)."""
    if method == "a2p" and head and (Path(head).expanduser() / "config.json").is_file():
        path = Path(head).expanduser() / "config.json"
        try:
            config = json.loads(path.read_text())
            calibrated = calibrated_threshold(config.get("extra"))
        except (ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: cannot read a calibrated threshold ({err})") from err
        if calibrated is not None:
            return calibrated
    return DEFAULT_THRESHOLDS[method]


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


def _pop_options(
    adapter: BackboneAdapter,
    extractor: str,
    model: str | None,
    support: str | None,
    root: str | Path | None,
    device: str,
) -> dict[str, Any]:
    """``__init__``'s POP options: the extractor (the backbone's own LLaVA tower shared when asked
    for without a model), the store and, when ``support`` names one, that set."""
    from part_point_ros.grounding.features import LlavaTowerExtractor, load_extractor
    from part_point_ros.grounding.supports import SupportStore

    if extractor == LlavaTowerExtractor.name and model is None:
        if adapter.family != "llava":
            raise InputError(
                f"extractor {extractor!r} without a model shares the backbone's LLaVA vision tower, but "
                f"{adapter.info.name!r} is a {adapter.family!r} model: use --extractor dinov3"
            )
        dense = LlavaTowerExtractor.from_model(
            adapter.model, adapter.processor.image_processor, adapter.info.name
        )
    else:
        dense = load_extractor(extractor, model, device=device)
    store = SupportStore(root)
    options: dict[str, Any] = {"extractor": dense, "support_store": store}
    if support is not None:
        options["supports"] = store.load(support, dense)
    return options


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
        points_one_per_region: bool = True,
        max_new_tokens: int = 64,
        prompt_mode: str = "auto",
        allow_grey: bool = False,
        max_query_chars: int = MAX_QUERY_CHARS,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_aspect_ratio: float = MAX_ASPECT_RATIO,
        reuse_prefix: bool = True,
        batch_queries: bool = True,
        max_batch: int = 8,
        extractor: Any = None,
        supports: Any = None,
        support_store: Any = None,
        support_fusion: str = "product",
    ) -> None:
        """Use ``from_pretrained`` unless you already hold a backbone adapter (and head).

        ``subpixel``: LENS refinement of the peak; default on for a2p, off for attention (Kang et al.
        point at the argmax patch's centre). ``max_points`` / ``nms_radius`` (heatmap pixels) /
        ``points_rel_threshold`` (fraction of the peak value) shape ``PointResult.points``;
        ``points_one_per_region``: at most one point per connected region of the heatmap above
        ``points_rel_threshold`` x the peak (one long handle is one instance; ``peaks.nms_peaks``).
        ``max_image_pixels`` / ``max_aspect_ratio`` (long side / short side): larger images are
        refused with an ``InputError`` before they reach the processor (``inputs.check_image_size``).
        ``reuse_prefix`` (a2p, attention): prefill each frame's image once and keep the latest frame's
        prefix for later calls on the same pixels; False: every query runs its whole prompt.
        ``batch_queries``: ``point_many`` runs the queries' suffixes (and the a2p head) in one forward
        (right-padded; faster on the CPU, ``part-point bench``); False: one forward per query.
        ``max_batch``: at most this many queries per forward (each row of a batch holds its own copy of
        the prefix's KV cache, ~150 MB for a 600-token prefix through 15 layers of a 7B model in bf16).
        ``pop``: ``extractor`` (a ``features.DenseFeatureExtractor``), ``supports`` (one ``SupportSet``
        for every query, or a mapping query -> set; default: every set of ``support_store``, by name,
        read again when taught), ``support_store`` (a ``SupportStore``; default its default root) and
        ``support_fusion`` (how K supports' maps combine: "product", the paper's; "geomean", "mean").
        """
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        self.backbone = backbone
        subpixel = (method == "a2p") if subpixel is None else bool(subpixel)
        self.peaks = PeakOptions(
            subpixel, max_points, nms_radius, points_rel_threshold, points_one_per_region
        )
        if method == "pop":
            from part_point_ros.grounding.supports import StoreSupports, SupportStore

            self.support_store = support_store if support_store is not None else SupportStore()
            if extractor is None:
                raise CheckpointError(
                    "method 'pop' needs a dense feature extractor (extractor=..., --extractor)"
                )
            supports = supports if supports is not None else StoreSupports(self.support_store, extractor)
        self.pointing = self._make_method(
            method,
            head,
            heads,
            batch_queries,
            prompt_mode=prompt_mode,
            max_new_tokens=max_new_tokens,
            extractor=extractor,
            supports=supports,
            support_fusion=support_fusion,
        )
        self.method = method
        self.head = head
        self.heads = self.pointing.heads
        self.threshold = self.pointing.default_threshold if threshold is None else float(threshold)
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

    @property
    def subpixel(self) -> bool:
        """LENS sub-pixel refinement of the best peak (the method's ``PeakOptions``)."""
        return self.peaks.subpixel

    @subpixel.setter
    def subpixel(self, value: bool) -> None:
        self.peaks.subpixel = bool(value)

    def _make_method(
        self,
        method: str,
        head: Any,
        heads: Sequence[HeadRef] | None,
        batch: bool,
        *,
        extractor: Any,
        supports: Any,
        support_fusion: str,
        **text: Any,
    ) -> PointingMethod:
        if method == "a2p":
            if head is None:
                raise CheckpointError("method 'a2p' needs a trained head (head=DIR / --head DIR)")
            return A2PMethod(head, self.peaks, batch=batch)
        if method == "attention":
            if not heads:
                raise CheckpointError(
                    "method 'attention' needs localization heads (`--heads FILE`, the `heads_file` parameter "
                    "of part_point_node, heads=... in Python)"
                )
            return AttentionMethod(heads, self.peaks)
        if method == "pop":
            if not heads:
                raise CheckpointError(
                    "method 'pop' needs localization heads (`--heads FILE`, the `heads_file` parameter of "
                    "part_point_node, heads=... in Python)"
                )
            options = PopOptions(support_fusion=support_fusion)
            return PopMethod(heads, self.peaks, extractor, supports, options)
        return TextMethod(self.backbone, **text)

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
        crop: bool = False,
        quantization: str | None = None,
        compile_vision: bool = False,
        extractor: str = "dinov3",
        extractor_model: str | None = None,
        support: str | None = None,
        support_root: str | Path | None = None,
        **options: Any,
    ) -> PartPointer:
        """Load the backbone (hub id or directory) and, for ``a2p``, the head directory.

        ``a2p``: ``backbone`` defaults to the one named in the head's config; the backbone is loaded
        only up to the head's deepest layer. ``attention``: ``heads`` is a heads file, a shipped
        name, or a list of (layer, head); default: the shipped heads for a known backbone; the top
        ``k`` are used. ``text``: the whole backbone is loaded. ``pop``: heads as for attention (POP
        fuses the top 3), the dense ``extractor`` ("dinov3": ``extractor_model`` or DINOv3 ViT-S/16;
        "llava-tower": the LLaVA backbone's own vision tower, shared, or ``extractor_model``'s), and
        the support sets of ``support_root`` (default: the user's data dir): the set named
        ``support`` for every query, else the set named like each query. ``options`` go to ``__init__``.
        ``compile_vision``: ``torch.compile`` the vision tower (the first frame of a size compiles it).
        ``crop``: let the processor crop the frame as the checkpoint ships it (default: the whole frame,
        padded to a square where the processor would crop). ``quantization``: None, "int8" / "int4"
        (torchao), "nf4" / "bnb-int8" (bitsandbytes) of the backbone's decoder, for small-memory GPUs.
        Only the method's needs are loaded: no language-model head unless the method generates (text),
        no layer past the deepest head.
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
            "crop": crop,
            "quantization": quantization,
            "lm_head": POINTING_METHODS[method].needs_lm_head,
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
        from part_point_ros.backbones.registry import adapter_for

        adapter_for(str(backbone))  # an unsupported family is named first, before any advice on heads
        if method in ("attention", "pop"):
            head_refs, _ = _resolve_heads(heads, str(backbone))
            if k < 1:
                raise InputError(f"k must be >= 1, got {k}")
            head_refs = head_refs[: min(k, PopOptions().text_heads) if method == "pop" else k]
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
        if compile_vision:
            adapter.compile_vision()
        if method == "pop":
            options.update(_pop_options(adapter, extractor, extractor_model, support, support_root, device))
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
        results: list[PointResult] = []
        with torch.inference_mode():  # max_batch queries at a time; from the second on the prefix is reused
            for start_at in range(0, len(queries), self.max_batch):
                chunk = queries[start_at : start_at + self.max_batch]
                results += self.pointing.point_many(image, chunk, lambda qs: self._captures(image, qs))
        self._sync()
        latency_ms = (time.perf_counter() - start) * 1000.0
        for result in results:
            result.latency_ms = latency_ms
            result.found = bool(result.score >= self.threshold) and math.isfinite(result.x)
        return results

    def teach(self, name: str, image: np.ndarray, point: tuple[float, float]) -> Any:
        """Method ``pop``: add ``image`` with the part at ``point`` (u, v, original pixels) to the support
        set ``name`` (created if new) in the pointer's store; the next query ``name`` uses it.
        Returns the ``SupportSet``."""
        if self.method != "pop":
            raise InputError(f"teach needs method 'pop' (this pointer runs {self.method!r})")
        image = check_image(
            image,
            allow_grey=self.allow_grey,
            max_image_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
        )
        with torch.inference_mode():
            return self.pointing.teach(self.support_store, name, image, point)

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

    def describe(self) -> dict[str, Any]:
        """What is loaded: method, backbone info, heads."""
        return {
            **self.pointing.describe(),
            "backbone": asdict(self.backbone.info),
            "threshold": self.threshold,
            # None: every pixel of a 640x480 frame reaches the model; else what is cut and how to keep it
            "field_of_view_640x480": self.backbone.field_of_view((640, 480)),
            "quantization": getattr(self.backbone, "quantization", None),
        }
