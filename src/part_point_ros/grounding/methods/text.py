"""``text``: the backbone writes the point (seed 000 Fig. 5 prompts, ``text_pointing`` parsers).

One generation per query (each answer is generated on its own). ``score`` = 1.0 if a point was
parsed and lies in the image, else 0.0 (and x, y are NaN). The answer's coordinates are read in the
checkpoint's own format (``backbone.pointing_format``) and mapped to original pixels through the
grid of the same processor call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from part_point_ros.grounding.methods.base import CaptureFn, PointingMethod
from part_point_ros.grounding.result import PointResult
from part_point_ros.grounding.text_pointing import answer_to_pixels, text_prompt


class TextMethod(PointingMethod):
    name = "text"
    default_threshold = 0.5
    needs_lm_head = True

    def __init__(self, backbone: Any, *, prompt_mode: str = "auto", max_new_tokens: int = 64) -> None:
        self.backbone = backbone
        self.prompt_mode = prompt_mode
        self.max_new_tokens = max_new_tokens

    def point_many(self, image: np.ndarray, queries: Sequence[str], captures: CaptureFn) -> list[PointResult]:
        return [self._point(image, query) for query in queries]

    def _point(self, image: np.ndarray, query: str) -> PointResult:
        fmt = self.backbone.pointing_format  # the checkpoint's own format (config.pointing_format)
        prompt = text_prompt(fmt, query, mode=self.prompt_mode)
        answer, grid = self.backbone.generate_with_grid(image, prompt, max_new_tokens=self.max_new_tokens)
        height, width = image.shape[:2]
        _, pixels = answer_to_pixels(fmt, answer, grid)
        pixels = [(x, y) for x, y in pixels if 0 <= x <= width and 0 <= y <= height]
        if not pixels:
            return PointResult(
                x=float("nan"), y=float("nan"), score=0.0, found=False, method=self.name, latency_ms=0.0,
                query=query, text=answer, grid=grid,
            )  # fmt: skip
        return PointResult(
            x=pixels[0][0], y=pixels[0][1], score=1.0, found=False, method=self.name, latency_ms=0.0,
            query=query, points=[(x, y, 1.0) for x, y in pixels], text=answer, grid=grid,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "heads": [], "pointing_format": self.backbone.pointing_format}
