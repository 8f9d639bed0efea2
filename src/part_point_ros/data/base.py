"""One data interface for every dataset: an image, a query, the part mask(s), and metadata.

Loaders return a ``PartDataset``: a sequence of ``Sample`` whose image and mask are read from disk
only when asked for, plus a report of what was skipped and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One (image, query) pair with its ground truth.

    ``load_image`` returns RGB uint8 (H, W, 3); ``load_mask`` returns bool (H, W): the union of every
    instance of the referred part (a point inside any instance is a hit).
    """

    sample_id: str
    image_path: Path
    query: str
    load_image: Callable[[], np.ndarray]
    load_mask: Callable[[], np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, category, object, part, ...


@dataclass
class PartDataset(Sequence[Sample]):
    """A loaded split: samples plus what was skipped (reason -> count) and where it came from."""

    name: str
    samples: list[Sample]
    skipped: Counter[str] = field(default_factory=Counter)
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def report(self) -> str:
        """One line: how many samples were kept and what was skipped, e.g. for a CLI."""
        kept = f"{self.name}: {len(self.samples)} samples from {self.source or '?'}"
        if not self.skipped:
            return kept + ", nothing skipped"
        parts = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"{kept}; skipped {sum(self.skipped.values())}: {parts}"
