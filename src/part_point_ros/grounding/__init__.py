"""Grounding: the ``PartPointer`` facade (a2p / attention / text), peaks, pixel mapping, head selection.

``PartPointer`` and ``PointResult`` are imported lazily so that the pure modules (peaks, text
parsers, head-selection maths) load without torch or transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PartPointer", "PointResult", "load_heads"]


def __getattr__(name: str) -> Any:
    if name == "PartPointer":
        from part_point_ros.grounding.pointer import PartPointer

        return PartPointer
    if name == "PointResult":
        from part_point_ros.grounding.result import PointResult

        return PointResult
    if name == "load_heads":
        from part_point_ros.grounding.localization_heads import load_heads

        return load_heads
    raise AttributeError(f"module 'part_point_ros.grounding' has no attribute {name!r}")
