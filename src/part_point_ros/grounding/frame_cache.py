"""The latest frame's image prefix, so that later queries on the same frame skip the image.

A robot asks several parts of one scene, often in separate requests: ``PartPointer`` keeps the
``ImagePrefix`` (the KV cache of the prompt through its image tokens: processor, vision tower and
their prefill done) of the LAST frame it saw, and only that one: bounded memory, one frame's cache of
the layers the heads read on the backbone's device, and a copy of that frame's pixels on the host.
A frame is the same frame when its pixels are (``np.array_equal``: about 1 ms for 640x480 RGB,
cheaper than hashing them, and exact), never by the array's identity: an array refilled in place
with a new camera image is a new frame.
"""

from __future__ import annotations

import threading

import numpy as np

from part_point_ros.backbones.prefix import ImagePrefix


class LatestFrame:
    """Holds the image prefix of one frame; keeping another frame's replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: tuple[np.ndarray, ImagePrefix] | None = None  # (copy of the pixels, prefix)

    def find(self, image: np.ndarray) -> ImagePrefix | None:
        """The kept prefix if ``image`` has the kept frame's pixels, else None."""
        with self._lock:
            kept = self._kept
        if kept is None or not np.array_equal(kept[0], image):
            return None
        return kept[1]

    def keep(self, image: np.ndarray, prefix: ImagePrefix | None) -> None:
        """Keep ``prefix`` as the prefix of ``image``'s pixels (copied), dropping the previous frame's
        (None: keep nothing)."""
        kept = None if prefix is None else (np.array(image, copy=True), prefix)
        with self._lock:
            self._kept = kept

    def clear(self) -> None:
        """Drop the kept prefix (frees its KV cache)."""
        self.keep(np.empty(0), None)

    def holds(self, image: np.ndarray) -> bool:
        """Whether a prefix of ``image``'s pixels is kept."""
        return self.find(image) is not None

    @property
    def empty(self) -> bool:
        return self._kept is None
