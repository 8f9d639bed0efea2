"""``pop``: training-free few-shot part pointing (POP, seed 002, "Method": Key Designs 1-3).

Per query, with K supports (I_s, p_s) and the target image I:

1. S_Text (Key Design 1): the last query token's attention over the image tokens of the top-3
   localization heads, each reshaped to the token grid (H_l x W_l), Gaussian-smoothed (7x7, sigma 1,
   as Kang et al.) and summed (``attention_pointing.attention_heatmap``).
2. S_Visual (Key Design 2), per support, from unit-length patch features z_s (support) and z_t
   (target) of a self-supervised ViT (DINOv3, ``features.py``), A_ij = z_s^i . z_t^j (cosine):
   forward  S_fwd_j = A_{i_s j}, i_s = the support cell containing p_s;
   backward S_bwd_j = z_s^{i_s} . z_s^{m(j)}, m(j) = argmax_i A_ij (target cell j's best match
   among all support cells);
   S_Visual = S_fwd (.) S_bwd (element-wise).
3. Fusion (Key Design 3): S_Final = Interp(S_Text) (.) prod_k S_Visual,k ("multiplying the text map
   with the visual map of each support image"), Interp = bilinear onto the S_Visual grid; S_Final
   is bilinearly upsampled x2 and the centre of its highest-scoring cell, mapped back to original
   pixels, is the point.

What the paper leaves open, and the defaults chosen here (``PopOptions``):

- Interp across grids: the MLLM's token grid and the extractor's feature grid cover the image
  differently (LLaVA pads to square, DINOv3 here resizes the whole frame), so S_Text is sampled at
  each feature cell's centre through both grids' ORIGINAL-pixel mappings (bilinear, edge values
  held up to the token grid's outer edge, 0 beyond it: pixels the MLLM never saw get no text
  evidence). On identical grids this is the paper's plain bilinear resize.
- Negative cosines: clamped to 0 before any product (``clamp_negative``), so that two negative
  factors cannot multiply into a positive score.
- Padding: target cells wholly in an extractor's padding are 0 and never peak; support cells wholly
  in padding are never a backward match m(j).
- x2 upsampling: bilinear with half-pixel centres (OpenCV ``INTER_LINEAR``), the alignment that
  ``ImageGrid.heatmap_to_pixel(i, j, 2)`` assumes; no sub-pixel refinement by default.
- Heads: the first ``text_heads`` (3) of the ranked heads given.
- ``score``: S_Text is divided by its maximum over the target's cells, so S_Final lies in [0, 1] as
  a product of 2K + 1 factors in [0, 1] (text, K forward and K backward cosines); score = the
  peak's S_Final ** (1 / (2K + 1)), their geometric mean at the peak: 1.0 when the peak is the text
  map's maximum and matches every support exactly both ways, comparable across K. It is not
  calibrated, so ``default_threshold`` is 0.0 (always found), as for the attention baseline.
- The paper's optional [CLS]-based retrieval of supports is not done: every support of the set is
  used.
- K supports: the paper multiplies their S_Visual maps (``support_fusion`` "product", the default),
  so each support adds two factors beside the one text factor and the visual evidence outweighs the
  text map more with every support. "geomean" and "mean" keep it at one support's weight (score:
  the cube root, 3 factors); measured in the README ("Teaching by example").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from part_point_ros.errors import InputError
from part_point_ros.grounding.attention_pointing import attention_heatmap, cells_on_image
from part_point_ros.grounding.features import DenseFeatureExtractor, FeatureMap
from part_point_ros.grounding.methods.base import (
    CaptureFn,
    PeakOptions,
    PointingMethod,
    clamp_into_image,
    find_peaks,
)
from part_point_ros.grounding.result import PointResult
from part_point_ros.grounding.supports import StoreSupports, Support, SupportSet, SupportStore
from part_point_ros.types import HeadRef, ImageGrid

# How the K supports' S_Visual maps combine: the paper's product (each support one more pair of
# factors beside the single text factor), or their geometric / arithmetic mean (the visual evidence
# keeps the weight of one support whatever K is; README, "Teaching by example")
SUPPORT_FUSIONS = ("product", "geomean", "mean")


def check_support_fusion(fusion: str) -> str:
    """``fusion`` if it is one of ``SUPPORT_FUSIONS``, else a one-line ``InputError``."""
    if fusion not in SUPPORT_FUSIONS:
        raise InputError(f"support_fusion must be one of {', '.join(SUPPORT_FUSIONS)}, got {fusion!r}")
    return fusion


@dataclass(frozen=True)
class PopOptions:
    """POP's settings (module docstring: which are the paper's and which are defaults of ours)."""

    text_heads: int = 3  # top-k localization heads summed into S_Text (paper: 3)
    sigma: float = 1.0  # Gaussian smoothing of each head's map (Kang et al.: 7x7, sigma 1)
    kernel: int = 7
    upsample: int = 2  # bilinear upsampling of S_Final before the argmax (paper: x2)
    clamp_negative: bool = True  # cosines < 0 -> 0 before multiplying (ours)
    support_fusion: str = "product"  # K supports' S_Visual: the paper's product, or "geomean" / "mean"

    def __post_init__(self) -> None:
        if self.text_heads < 1:
            raise InputError(f"text_heads must be >= 1, got {self.text_heads}")
        check_support_fusion(self.support_fusion)
        if self.upsample < 1:
            raise InputError(f"upsample must be an integer >= 1, got {self.upsample}")


@dataclass
class PopMaps:
    """The maps of one query, all on the target's feature grid (h, w) unless said otherwise."""

    text: np.ndarray  # (h, w) S_Text resampled and divided by its max, in [0, 1]
    visual: np.ndarray  # (h, w) prod_k S_Visual,k (or their mean: support_fusion), in [0, 1] when clamped
    final: np.ndarray  # (h, w) text * visual, zero off the image
    upsampled: np.ndarray  # (h * s, w * s) S_Final upsampled, s = PopOptions.upsample
    valid: np.ndarray  # (h * s, w * s) bool: cells that see the image
    factors: int  # 2K + 1 (3 for a mean over supports): the [0, 1] factors multiplied into ``final``


# ----------------------------------------------------------------------------- visual branch
def forward_backward(
    support_features: np.ndarray,
    support_cell: tuple[int, int],
    target_features: np.ndarray,
    support_valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(S_fwd, S_bwd), both (h_t, w_t): POP's forward and backward similarity of one support.

    ``support_features`` (h_s, w_s, C) and ``target_features`` (h_t, w_t, C) are unit-length per cell,
    so dot products are cosines. ``support_valid`` (h_s, w_s) bool: only these support cells can be
    a target cell's best match m(j) (default: all).
    """
    hs, ws, dim = support_features.shape
    ht, wt, dim_t = target_features.shape
    if dim != dim_t:
        raise ValueError(f"support features are {dim}-d but target features {dim_t}-d")
    row, col = support_cell
    if not (0 <= row < hs and 0 <= col < ws):
        raise ValueError(f"support cell {support_cell} is outside the {hs}x{ws} support grid")
    zs = support_features.reshape(hs * ws, dim).astype(np.float32)  # (h_s, w_s, C) -> (N_s, C)
    zt = target_features.reshape(ht * wt, dim).astype(np.float32)  # (h_t, w_t, C) -> (N_t, C)
    i_s = row * ws + col  # row-major cell index
    affinity = zs @ zt.T  # (N_s, N_t): A_ij
    forward = affinity[i_s]  # (N_t,): A_{i_s j}
    if support_valid is not None:
        keep = np.asarray(support_valid, dtype=bool).reshape(hs * ws)  # (h_s, w_s) -> (N_s,)
        affinity = np.where(keep[:, None], affinity, -np.inf)
    best = affinity.argmax(axis=0)  # (N_t,): m(j) = argmax_i A_ij
    self_similarity = zs @ zs[i_s]  # (N_s,): z_s^i . z_s^{i_s}
    backward = self_similarity[best]  # (N_t,)
    return forward.reshape(ht, wt), backward.reshape(ht, wt)  # (N_t,) -> (h_t, w_t)


def visual_similarity(
    support: Support, target_features: np.ndarray, *, clamp_negative: bool = True
) -> np.ndarray:
    """(h_t, w_t) S_Visual = S_fwd (.) S_bwd of one support (negative cosines clamped to 0 first)."""
    forward, backward = forward_backward(support.features, support.cell, target_features, support.valid)
    if clamp_negative:
        forward, backward = np.maximum(forward, 0.0), np.maximum(backward, 0.0)
    return (forward * backward).astype(np.float32)


def visual_map(
    supports: Sequence[Support],
    target_features: np.ndarray,
    *,
    clamp_negative: bool = True,
    fusion: str = "product",
) -> np.ndarray:
    """(h_t, w_t) every support's S_Visual combined (the K-shot extension): their product (the
    paper's), or their geometric or arithmetic mean (``SUPPORT_FUSIONS``)."""
    if not supports:
        raise InputError("POP needs at least one support (teach one with SupportStore.teach)")
    check_support_fusion(fusion)
    maps = [visual_similarity(s, target_features, clamp_negative=clamp_negative) for s in supports]
    if fusion == "mean":
        return np.mean(maps, axis=0).astype(np.float32)
    out = np.ones(target_features.shape[:2], dtype=np.float32)
    for m in maps:
        out *= m
    if fusion == "geomean":  # (a product of values in [0, 1] when clamped: the root is defined)
        out = np.power(np.maximum(out, 0.0), 1.0 / len(maps)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- text branch
def text_on_feature_grid(text_map: np.ndarray, text_grid: ImageGrid, feature_grid: ImageGrid) -> np.ndarray:
    """(h, w) ``text_map`` (the token grid's rows x cols) sampled bilinearly at the centre of each
    feature cell, both grids mapped through ORIGINAL pixels. Values beyond the token grid's outer
    cell centres are held up to the grid's edge; feature cells whose centre the token grid does not
    cover at all (e.g. a centre crop cut it off) get 0."""
    if text_map.shape != (text_grid.rows, text_grid.cols):
        raise ValueError(f"text map is {text_map.shape} but its grid is {text_grid.rows}x{text_grid.cols}")
    if text_grid.orig_size != feature_grid.orig_size:
        raise ValueError(
            f"token grid of a {text_grid.orig_size} image, features of a {feature_grid.orig_size} one"
        )
    h, w = feature_grid.rows, feature_grid.cols
    xs = np.array([feature_grid.grid_to_pixel(c + 0.5, 0.0)[0] for c in range(w)])  # (w,) pixel x of centres
    ys = np.array([feature_grid.grid_to_pixel(0.0, r + 0.5)[1] for r in range(h)])  # (h,) pixel y of centres
    gx, _ = text_grid.pixel_to_grid(xs, np.zeros_like(xs))  # (w,) continuous token-grid columns
    _, gy = text_grid.pixel_to_grid(np.zeros_like(ys), ys)  # (h,) continuous token-grid rows
    map_x = np.broadcast_to((gx - 0.5)[None, :], (h, w)).astype(np.float32)  # cell index coordinates
    map_y = np.broadcast_to((gy - 0.5)[:, None], (h, w)).astype(np.float32)
    sampled = cv2.remap(
        np.asarray(text_map, dtype=np.float32),
        map_x,
        map_y,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    inside = ((gy >= 0) & (gy < text_grid.rows))[:, None] & ((gx >= 0) & (gx < text_grid.cols))[None, :]
    return np.where(inside, sampled, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- fusion
def upsample_map(values: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) -> (h * factor, w * factor), bilinear with half-pixel centres."""
    if factor == 1:
        return values.astype(np.float32)
    h, w = values.shape
    return cv2.resize(values.astype(np.float32), (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)


def pop_maps(
    text_map: np.ndarray,
    text_grid: ImageGrid,
    supports: Sequence[Support],
    target: FeatureMap,
    options: PopOptions | None = None,
) -> PopMaps:
    """S_Final = Interp(S_Text) (.) prod_k S_Visual,k on the target's feature grid, and its upsampling.

    ``text_map``: S_Text on the MLLM's token grid ``text_grid`` (any non-negative scale);
    ``supports``: the K supports; ``target``: the target image's ``FeatureMap``.
    """
    options = options or PopOptions()
    grid = target.grid
    on_image = cells_on_image(grid)  # (h, w)
    text = np.maximum(text_on_feature_grid(text_map, text_grid, grid), 0.0) * on_image
    peak = float(text.max())
    text = text / peak if peak > 0 else on_image.astype(np.float32)  # no text evidence: neutral
    visual = visual_map(
        supports, target.features, clamp_negative=options.clamp_negative, fusion=options.support_fusion
    )
    final = (text * visual * on_image).astype(np.float32)
    valid = cells_on_image(grid, options.upsample)  # (h * s, w * s)
    return PopMaps(
        text=text.astype(np.float32),
        visual=visual,
        final=final,
        upsampled=upsample_map(final, options.upsample) * valid,  # nothing bleeds into the padding
        valid=valid,
        factors=2 * len(supports) + 1 if options.support_fusion == "product" else 3,
    )


def pop_points(
    maps: PopMaps, grid: ImageGrid, peaks: PeakOptions, upsample: int
) -> list[tuple[float, float, float]]:
    """(x, y, score) in original pixels, best first: the centres of the upsampled map's peaks, clamped
    into the image; score = value ** (1 / (2K + 1))."""
    found = find_peaks(maps.upsampled, maps.valid, peaks)
    out = []
    for p in found:
        x, y = clamp_into_image(grid, *grid.heatmap_to_pixel(p.row, p.col, upsample))
        out.append((x, y, float(max(p.value, 0.0) ** (1.0 / maps.factors))))
    return out


# ----------------------------------------------------------------------------- the method
SupportsArg = SupportSet | Mapping[str, SupportSet]


class PopMethod(PointingMethod):
    """POP over the facade's captures: S_Text from the top-3 localization heads, S_Visual from the
    support set of the query (one set for every query, or a mapping query -> set)."""

    name = "pop"
    default_threshold = 0.0

    def __init__(
        self,
        heads: Sequence[HeadRef],
        peaks: PeakOptions,
        extractor: DenseFeatureExtractor,
        supports: SupportsArg,
        options: PopOptions | None = None,
    ) -> None:
        """``heads``: ranked localization heads (the first ``options.text_heads`` are used);
        ``extractor``: the dense encoder the supports were made with (checked here)."""
        self.options = options or PopOptions()
        if not heads:
            raise InputError("method 'pop' needs localization heads (a heads file or a list)")
        self.heads = tuple(heads)[: self.options.text_heads]
        self.peaks = peaks
        self.extractor = extractor
        sets = [supports] if isinstance(supports, SupportSet) else list(supports.values())
        if not sets and not isinstance(supports, StoreSupports):  # a store may be taught later
            raise InputError("method 'pop' needs a support set (SupportStore.teach, then load)")
        for support_set in sets:
            support_set.check_extractor(extractor)
            if not support_set.supports:
                raise InputError(f"support set {support_set.name!r} has no supports")
        self.supports = supports

    def supports_for(self, query: str) -> SupportSet:
        """The support set of ``query``: the one set, or the mapping's entry (exact, then ignoring case
        and surrounding spaces)."""
        if isinstance(self.supports, SupportSet):
            return self.supports
        table = dict(self.supports.items())  # one read of a store-backed mapping per query
        if query in table:
            return table[query]
        folded = {key.strip().lower(): value for key, value in table.items()}
        if query.strip().lower() in folded:
            return folded[query.strip().lower()]
        taught = ", ".join(sorted(table)) or "none yet"
        raise InputError(
            f"no support set for query {query!r} (taught: {taught}): teach it first (part-point teach, "
            "the /teach_part service, or RViz's Publish Point tool), or ask for a taught name"
        )

    def teach(
        self, store: SupportStore, name: str, image: np.ndarray, point: tuple[float, float]
    ) -> SupportSet:
        """Add one support (``point`` in original pixels of ``image``) to the set ``name`` of ``store``."""
        return store.teach(name, image, point, self.extractor)

    def point_many(self, image: np.ndarray, queries: Sequence[str], captures: CaptureFn) -> list[PointResult]:
        sets = [self.supports_for(q) for q in queries]  # unknown queries fail before any forward
        target = self.extractor.extract(image)  # once per frame
        results = []
        for capture, query, support_set in zip(captures(queries), queries, sets, strict=True):
            text = attention_heatmap(capture, sigma=self.options.sigma, size=self.options.kernel)
            maps = pop_maps(text, capture.grid, support_set.supports, target, self.options)
            points = pop_points(maps, target.grid, self.peaks, self.options.upsample)
            x, y, score = points[0]
            results.append(
                PointResult(
                    x=x,
                    y=y,
                    score=score,
                    found=False,
                    method=self.name,
                    latency_ms=0.0,
                    query=query,
                    heatmap=maps.upsampled,
                    grid=target.grid,
                    upscale=self.options.upsample,
                    points=points,
                )
            )
        return results

    def describe(self) -> dict[str, Any]:
        sets = [self.supports] if isinstance(self.supports, SupportSet) else list(self.supports.values())
        return {
            **super().describe(),
            "extractor": self.extractor.describe(),
            "supports": {s.name: len(s) for s in sets},
            "support_fusion": self.options.support_fusion,
        }
