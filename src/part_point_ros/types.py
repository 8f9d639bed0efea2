"""Plain shared types: a localization head reference and the image-token grid geometry.

Kept free of torch and of any model code so that heads, data, training and grounding can all use
them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, order=True)
class HeadRef:
    """One attention head of the language model: ``layer`` and ``head`` are 0-indexed."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadRef:
        """Parse ``"L14H24"`` or ``"14,24"``."""
        t = text.strip().upper()
        try:
            if t.startswith("L") and "H" in t:
                layer, head = t[1:].split("H")
            else:
                layer, head = t.split(",")
            return cls(int(layer), int(head))
        except ValueError as err:
            raise ValueError(f"cannot parse head {text!r}: write it as L14H24 or 14,24") from err


@dataclass(frozen=True)
class ImageGrid:
    """How the model's grid of image tokens maps back to pixels of the ORIGINAL image.

    The processor maps an original pixel (x, y) to processed-image pixel
    ``(x * scale[0] + offset[0], y * scale[1] + offset[1])`` (resize, then crop or pad: a crop has
    a negative offset, a pad a positive one). The processed image of size ``processed_size``
    (width, height) is cut into ``rows`` x ``cols`` image tokens (after any patch merging).

    Grid coordinates are continuous: ``(gx, gy)`` with the cell (row, col) covering
    ``[col, col + 1) x [row, row + 1)``; the centre of a cell is ``(col + 0.5, row + 0.5)``.
    """

    rows: int
    cols: int
    orig_size: tuple[int, int]  # (width, height) of the original image
    processed_size: tuple[int, int]  # (width, height) of what the vision encoder sees
    scale: tuple[float, float]  # (sx, sy)
    offset: tuple[float, float]  # (ox, oy)
    # Multi-crop layouts (LLaVA-NeXT / OneVision tiles, InternVL tiles + thumbnail, Idefics3 splits):
    # the grid above is the one set of tokens the methods read (``source`` says which and why); the
    # prompt holds more image tokens. ``token_boxes``: (N, 4) float (x0, y0, x1, y1) in ORIGINAL
    # pixels of every image token of the prompt, in sequence order; a NaN row for a token that sees
    # no pixel (row / column separators, padding only). None: the grid is every image token.
    token_boxes: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: str = ""  # e.g. "base image, 24x24 of 5 crops: covers the whole frame once"

    @property
    def cell_size(self) -> tuple[float, float]:
        """Size of one grid cell in processed-image pixels (width, height)."""
        return self.processed_size[0] / self.cols, self.processed_size[1] / self.rows

    def grid_to_pixel(self, gx: float, gy: float) -> tuple[float, float]:
        """Continuous grid coordinates -> original-image pixel coordinates."""
        cw, ch = self.cell_size
        x = (gx * cw - self.offset[0]) / self.scale[0]
        y = (gy * ch - self.offset[1]) / self.scale[1]
        return float(x), float(y)

    def pixel_to_grid(self, x: float, y: float) -> tuple[float, float]:
        """Original-image pixel coordinates -> continuous grid coordinates."""
        cw, ch = self.cell_size
        return (x * self.scale[0] + self.offset[0]) / cw, (y * self.scale[1] + self.offset[1]) / ch

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        """Centre of grid cell (row, col) in original-image pixels."""
        return self.grid_to_pixel(col + 0.5, row + 0.5)

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of grid cell (row, col) in original-image pixels, clipped to the image."""
        x0, y0 = self.grid_to_pixel(col, row)
        x1, y1 = self.grid_to_pixel(col + 1, row + 1)
        w, h = self.orig_size
        return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)

    def tokens_seeing(self, x: float, y: float) -> np.ndarray:
        """Indices (into ``token_boxes``, i.e. the prompt's image tokens in order) of the tokens whose
        box holds original pixel (x, y); without ``token_boxes``, the one grid cell's row-major index."""
        if self.token_boxes is None:
            gx, gy = self.pixel_to_grid(x, y)
            col, row = int(np.floor(gx)), int(np.floor(gy))
            if not (0 <= row < self.rows and 0 <= col < self.cols):
                return np.zeros(0, dtype=np.int64)
            return np.array([row * self.cols + col], dtype=np.int64)
        b = self.token_boxes
        with np.errstate(invalid="ignore"):
            inside = (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3])
        return np.nonzero(inside)[0].astype(np.int64)

    def heatmap_to_pixel(self, i: float, j: float, upscale: int) -> tuple[float, float]:
        """Centre of heatmap pixel (row i, col j) of a map ``upscale`` times the grid -> original pixels."""
        return self.grid_to_pixel((j + 0.5) / upscale, (i + 0.5) / upscale)

    def resample_mask(self, mask: np.ndarray, upscale: int = 1) -> np.ndarray:
        """Fraction of each cell of the (rows*upscale, cols*upscale) grid covered by ``mask``.

        ``mask`` is a boolean/0-1 array in original-image pixels (H, W). Parts of a cell that lie in
        padding (outside the original image) count as uncovered.
        """
        import cv2

        h, w = mask.shape[:2]
        if (w, h) != tuple(self.orig_size):
            raise ValueError(f"mask is {w}x{h} but the image was {self.orig_size[0]}x{self.orig_size[1]}")
        pw, ph = self.processed_size
        affine = np.array([[self.scale[0], 0.0, self.offset[0]], [0.0, self.scale[1], self.offset[1]]])
        # original pixels -> processed pixels, area-correct enough at 1 px; borders are zero (padding)
        warped = cv2.warpAffine(mask.astype(np.float32), affine, (pw, ph), flags=cv2.INTER_LINEAR)
        out_r, out_c = self.rows * upscale, self.cols * upscale
        # (ph, pw) -> (out_r, out_c): mean over each cell
        return cv2.resize(warped, (out_c, out_r), interpolation=cv2.INTER_AREA).astype(np.float32)
