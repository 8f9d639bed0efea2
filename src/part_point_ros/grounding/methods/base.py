"""What every pointing method implements, and the peak options they share.

A method turns one frame and its queries into ``PointResult`` objects. Methods that read the
backbone's attention list the localization ``heads`` they need; the facade (``PartPointer``) owns
the backbone, the input checks, the frame's image prefix and the ``found`` threshold, and hands the
method a ``captures(queries)`` callable that returns the heads' Q/K/V for the frame (prefilled once,
``backbones/prefix.py``). A method that needs no attention ignores it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from part_point_ros.backbones.base import Capture
from part_point_ros.grounding.peaks import Peak, argmax_peak, nms_peaks, refine_peak
from part_point_ros.grounding.result import PointResult
from part_point_ros.types import HeadRef, ImageGrid

CaptureFn = Callable[[Sequence[str]], list[Capture]]


@dataclass
class PeakOptions:
    """How a heatmap becomes points: the best peak (``subpixel``: LENS refinement), then up to
    ``max_points - 1`` more NMS peaks (``nms_radius`` heatmap pixels apart) above ``rel_threshold``
    x the best value. One object shared by the facade and its method (``PartPointer.subpixel``)."""

    subpixel: bool
    max_points: int = 5
    nms_radius: float = 4.0
    rel_threshold: float = 0.5
    one_per_region: bool = False  # one further peak per region above rel_threshold x best (nms_peaks)

    def __post_init__(self) -> None:
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")


def find_peaks(heatmap: np.ndarray, valid: np.ndarray | None, options: PeakOptions) -> list[Peak]:
    """The best peak, then the further NMS peaks of ``options``; only cells in ``valid`` (default:
    all) can be peaks."""
    best = argmax_peak(heatmap, valid)
    if options.subpixel:
        best = refine_peak(heatmap, best, valid=valid)
    if options.max_points == 1:
        return [best]
    others = nms_peaks(
        heatmap,
        radius=options.nms_radius,
        max_points=options.max_points,
        min_value=options.rel_threshold * best.value,
        subpixel=options.subpixel,
        valid=valid,
        one_per_region=options.one_per_region,
    )
    return [best, *others[1:]]


def clamp_into_image(grid: ImageGrid, x: float, y: float) -> tuple[float, float]:
    """(x, y) moved into [0, W - 1] x [0, H - 1] of the original image."""
    width, height = grid.orig_size
    return min(max(float(x), 0.0), width - 1.0), min(max(float(y), 0.0), height - 1.0)


class PointingMethod(ABC):
    """One way to point. Subclasses set ``name`` and ``default_threshold`` (of ``PointResult.score``:
    ``found`` is ``score >= threshold``)."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    needs_lm_head: ClassVar[bool] = False  # only generation calls the language-model head
    heads: tuple[HeadRef, ...] = ()  # localization heads whose Q/K/V ``captures`` must return

    @property
    def max_layer(self) -> int | None:
        """The deepest decoder layer the method reads (None: the whole model, e.g. to generate)."""
        return max(ref.layer for ref in self.heads) if self.heads else None

    @abstractmethod
    def point_many(self, image: np.ndarray, queries: Sequence[str], captures: CaptureFn) -> list[PointResult]:
        """One result per query, in order, for a checked RGB uint8 ``image``; ``found`` and
        ``latency_ms`` are filled in by the facade."""

    def describe(self) -> dict[str, Any]:
        """What the method uses, for ``PartPointer.describe()``."""
        return {"method": self.name, "heads": [str(h) for h in self.heads]}
