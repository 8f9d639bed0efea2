"""Localization-head selection (Kang et al., CVPR 2025) and the heads-file format.

Selection (method.md §1), for every head (layer, head) of layers >= ``exclude_layers``:

1. attention mass on the image tokens of the last input token's row, averaged over the calibration
   set; keep the heads above the elbow of the ascending-sorted means (max distance to the chord,
   both axes scaled to [0, 1]; the threshold is the VALUE at the elbow, kept = strictly above).
2. spatial entropy of each head's grid map A per sample: B = ReLU(A - mean A), binarised at
   B > 1e-3, 8-connected components (3x3 structure), p_i = mass of B in component i / mass of B in
   all components, H = -sum p_i log p_i (lower = one compact blob).

Per sample the ``per_sample`` (10) lowest-entropy heads among those passing 1 are "selected"; heads
are ranked by how often they were selected (frequency = count / n_samples; ties: lower mean
entropy first) and the top ``k`` kept.

A heads file is JSON: ``{backbone, k, heads: [[layer, head, frequency], ...], calibration:
{n_samples, source}, criteria, source?, note?}`` (frequency may be null where unpublished).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from part_point_ros.errors import CheckpointError
from part_point_ros.types import HeadRef

BINARISE_THRESHOLD = 1e-3
# name -> shipped file; a backbone id containing the name gets the file (the longest name that fits)
KNOWN_HEADS_FILES = {
    "llava-1.5-7b": "llava-1.5-7b.json",
    "qwen2.5-vl-7b": "qwen2.5-vl-7b.json",
    "internvl3-8b": "internvl3-8b.json",  # OpenGVLab/InternVL3-8B(-hf)
    "molmo-7b-d": "molmo-7b-d.json",  # allenai/Molmo-7B-D-0924: POP's high-resolution list (not Molmo2)
    "molmo-7b-d-low-res": "molmo-7b-d-low-res.json",  # the same model's low-resolution list, by name only
}


# ----------------------------------------------------------------------------- pure maths
def image_attention_mass(attn: np.ndarray) -> np.ndarray:
    """(n,) attention mass on the image tokens from (n, P) last-token attention rows."""
    return np.asarray(attn, dtype=np.float64).sum(axis=-1)


def elbow_index(values: Sequence[float]) -> int:
    """Index (into the ASCENDING-sorted values) of the elbow: max distance to the first-last chord.

    Both axes are scaled to [0, 1] first (Kneedle-style) so the result does not depend on units.
    """
    y = np.sort(np.asarray(values, dtype=np.float64))
    n = len(y)
    if n < 3 or y[-1] == y[0]:
        return 0
    x = np.linspace(0.0, 1.0, n)
    yn = (y - y[0]) / (y[-1] - y[0])
    # the chord is the diagonal y = x in scaled coordinates; distance is |x - y| / sqrt(2)
    return int(np.argmax(np.abs(x - yn)))


def elbow_threshold(values: Sequence[float]) -> float:
    """The value at the elbow of the ascending-sorted ``values`` (heads strictly above it pass)."""
    y = np.sort(np.asarray(values, dtype=np.float64))
    return float(y[elbow_index(y)])


def spatial_entropy(attn_map: np.ndarray, *, threshold: float = BINARISE_THRESHOLD) -> float:
    """Kang et al.'s spatial entropy of a 2D attention map; ``inf`` when nothing is above the mean."""
    a = np.asarray(attn_map, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"spatial_entropy needs a 2D map, got shape {a.shape}")
    b = np.maximum(a - a.mean(), 0.0)
    labels, n = ndimage.label(b > threshold, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return float("inf")
    masses = ndimage.sum(b, labels, index=np.arange(1, n + 1))  # (n,) mass of each component
    p = masses / masses.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclass
class HeadSelection:
    """Outcome of ``select_heads``: ranked heads with frequencies, and what the criteria found."""

    heads: list[tuple[HeadRef, float]]  # top k, most frequently selected first
    mass_threshold: float
    passing: list[HeadRef]  # heads passing criterion 1
    counts: dict[HeadRef, int] = field(default_factory=dict)


def select_heads(
    masses: np.ndarray,
    entropies: np.ndarray,
    heads: Sequence[HeadRef],
    *,
    k: int = 5,
    per_sample: int = 10,
) -> HeadSelection:
    """Kang et al.'s ranking from per-sample image-attention masses and entropies, both (S, n)."""
    masses = np.asarray(masses, dtype=np.float64)
    entropies = np.asarray(entropies, dtype=np.float64)
    if masses.shape != entropies.shape or masses.ndim != 2 or masses.shape[1] != len(heads):
        raise ValueError(
            f"masses {masses.shape} and entropies {entropies.shape} must both be (n_samples, {len(heads)})"
        )
    if masses.shape[0] == 0:
        raise ValueError("no calibration samples")
    mean_mass = masses.mean(axis=0)  # (n,)
    threshold = elbow_threshold(mean_mass)
    passing = np.flatnonzero(mean_mass > threshold)
    if passing.size == 0:  # flat curve: nothing stands out, fall back to every head
        passing = np.arange(len(heads))
    counts = np.zeros(len(heads), dtype=np.int64)
    for row in entropies:
        order = passing[np.argsort(row[passing], kind="stable")]
        chosen = [i for i in order[:per_sample] if np.isfinite(row[i])]
        counts[chosen] += 1
    mean_entropy = np.where(np.isfinite(entropies), entropies, 1e9).mean(axis=0)  # (n,) tie-breaker
    ranked = sorted(passing.tolist(), key=lambda i: (-counts[i], mean_entropy[i], heads[i]))
    n = masses.shape[0]
    top = [(heads[i], counts[i] / n) for i in ranked[:k]]
    return HeadSelection(
        heads=[(h, float(f)) for h, f in top],
        mass_threshold=threshold,
        passing=[heads[i] for i in passing],
        counts={heads[i]: int(counts[i]) for i in range(len(heads)) if counts[i]},
    )


# ----------------------------------------------------------------------------- heads files
@dataclass
class HeadsFile:
    """A heads JSON file in memory."""

    backbone: dict[str, Any]  # BackboneInfo fields (name, family, num_layers, num_heads, ...)
    heads: list[tuple[HeadRef, float | None]]  # ranked; frequency None where unpublished
    k: int
    calibration: dict[str, Any] = field(default_factory=dict)
    criteria: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    note: str = ""
    path: str = ""

    def top(self, k: int | None = None) -> list[HeadRef]:
        """The first ``k`` heads (all when k is None or larger than the list)."""
        return [h for h, _ in self.heads[: (k if k is not None else len(self.heads))]]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "k": self.k,
            "heads": [[h.layer, h.head, f] for h, f in self.heads],
            "calibration": self.calibration,
            "criteria": self.criteria,
        }
        if self.source:
            out["source"] = self.source
        if self.note:
            out["note"] = self.note
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _parse_heads_file(data: Any, where: str) -> HeadsFile:
    if not isinstance(data, dict) or not isinstance(data.get("heads"), list) or not data["heads"]:
        raise CheckpointError(
            f"{where} is not a heads file: expected a JSON object with a non-empty 'heads' list"
        )
    heads: list[tuple[HeadRef, float | None]] = []
    for item in data["heads"]:
        ok = isinstance(item, list) and len(item) in (2, 3)
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item[:2])
        ok = ok and (len(item) == 2 or item[2] is None or isinstance(item[2], (int, float)))
        if not ok:
            raise CheckpointError(f"{where}: head entry {item!r} is not [layer, head, frequency]")
        heads.append(
            (HeadRef(item[0], item[1]), None if len(item) == 2 or item[2] is None else float(item[2]))
        )
    backbone = data.get("backbone", {})
    if not isinstance(backbone, dict):
        raise CheckpointError(f"{where}: 'backbone' must be an object of BackboneInfo fields")
    return HeadsFile(
        backbone=backbone,
        heads=heads,
        k=int(data.get("k", len(heads))),
        calibration=dict(data.get("calibration", {})),
        criteria=dict(data.get("criteria", {})),
        source=str(data.get("source", "")),
        note=str(data.get("note", "")),
        path=where,
    )


def known_heads_name(backbone_name: str) -> str | None:
    """The shipped heads-file name matching a backbone id ("llava-hf/llava-1.5-7b-hf" -> "llava-1.5-7b");
    the longest name wins ("molmo-7b-d-low-res" is not "molmo-7b-d")."""
    lowered = backbone_name.lower().replace("_", ".")
    for name in sorted(KNOWN_HEADS_FILES, key=len, reverse=True):
        if name in lowered:
            return name
    return None


def load_heads(path_or_name: str | Path) -> HeadsFile:
    """Read a heads file from a path, or a shipped one by name ("llava-1.5-7b", "qwen2.5-vl-7b")."""
    path = Path(path_or_name)
    if path.is_file():
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read heads file {where}: {err}") from err
        return _parse_heads_file(data, where)
    name = known_heads_name(str(path_or_name))
    if name is None:
        raise CheckpointError(
            f"heads file {str(path_or_name)!r} not found and not a known name "
            f"({', '.join(KNOWN_HEADS_FILES)}); run `part-point select-heads` to make one"
        )
    text = (
        resources.files("part_point_ros.grounding")
        .joinpath("heads_files", KNOWN_HEADS_FILES[name])
        .read_text()
    )
    return _parse_heads_file(json.loads(text), f"heads_files/{KNOWN_HEADS_FILES[name]}")


# ----------------------------------------------------------------------------- calibration
def calibrate(
    backbone: Any,
    samples: Iterable[Any],
    *,
    k: int = 5,
    per_sample: int = 10,
    exclude_layers: int = 2,
    max_samples: int | None = None,
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> HeadsFile:
    """Run the selection on a ``BackboneAdapter`` over ``samples`` (objects with ``load_image()`` and
    ``query``): one full prefill per sample capturing every head of layers >= ``exclude_layers``."""
    info = backbone.info
    if exclude_layers >= info.num_layers:
        raise ValueError(f"exclude_layers={exclude_layers} leaves no layer of {info.num_layers}")
    heads = [
        HeadRef(layer, h) for layer in range(exclude_layers, info.num_layers) for h in range(info.num_heads)
    ]
    masses, entropies = [], []
    for index, sample in enumerate(samples):
        if max_samples is not None and index >= max_samples:
            break
        capture = backbone.capture(sample.load_image(), sample.query, heads, truncate=False)
        attn = capture.last_token_attention().detach().float().cpu().numpy()  # (n, P)
        maps = attn.reshape(len(heads), capture.grid.rows, capture.grid.cols)  # (n, P) -> (n, rows, cols)
        masses.append(image_attention_mass(attn))
        entropies.append([spatial_entropy(m) for m in maps])
        if progress is not None:
            progress(index + 1)
    if not masses:
        raise ValueError("the calibration set is empty")
    selection = select_heads(np.array(masses), np.array(entropies), heads, k=k, per_sample=per_sample)
    return HeadsFile(
        backbone=asdict(info),
        heads=list(selection.heads),
        k=len(selection.heads),
        calibration={"n_samples": len(masses), "source": source},
        criteria={
            "method": "Kang et al. CVPR 2025 (method.md section 1)",
            "query_row": "last input token",
            "excluded_layers": list(range(exclude_layers)),
            "mass_elbow_threshold": selection.mass_threshold,
            "n_passing_mass": len(selection.passing),
            "entropy_binarise_threshold": BINARISE_THRESHOLD,
            "connectivity": 8,
            "per_sample_lowest_entropy": per_sample,
        },
    )
