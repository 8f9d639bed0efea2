"""Support sets of POP (seed 002) on disk: a named set of (support image, annotated point) examples.

POP needs, per support, the support image's whole dense feature map z_s (the backward similarity
looks up each target patch's best match among ALL support patches) and the cell i_s under the
annotated point p_s. So a set stores exactly that, and never the image itself:

- ``<root>/<name>.safetensors``: per support k, ``support.<k>.features`` (h, w, C) float32 (unit L2
  per cell, as the extractor made it). About 1.2 MB per support for ViT-S at 32 x 24 cells.
- ``<root>/<name>.json``: ``{format, name, extractor: {name, key, model, dim}, created, updated,
  supports: [{point: [u, v] (original pixels), image_size: [W, H], image_sha256, image_path,
  grid: {rows, cols, orig_size, processed_size, scale, offset}, cell: [row, col], created}]}``.

Writes are atomic (temporary file in ``root``, fsync, ``os.replace``): tensors first, then the JSON,
which is what makes the new support count (a crash in between leaves the old set, whose tensors are
all still in the new safetensors file). Deleting removes the JSON first for the same reason.
One ``SupportStore`` serialises its writers with a lock; two processes teaching the same set at the
same time can lose one support (last writer wins), never corrupt it.

Names: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit (they are file names).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from part_point_ros.errors import CheckpointError, InputError
from part_point_ros.grounding.attention_pointing import cells_on_image
from part_point_ros.grounding.features import DenseFeatureExtractor
from part_point_ros.grounding.inputs import check_image
from part_point_ros.types import ImageGrid

FORMAT = 1
# a name is also a query ("the drill's grip"): words of letters, digits, '.', '_', "'", '-', single spaces
NAME_PATTERN = re.compile(r"(?=.{1,64}$)[A-Za-z0-9][A-Za-z0-9._'-]*(?: [A-Za-z0-9._'-]+)*")
ENV_ROOT = "PART_POINT_SUPPORTS"


def default_root() -> Path:
    """``$PART_POINT_SUPPORTS``, else ``$XDG_DATA_HOME/part_point_ros/supports`` (XDG_DATA_HOME
    defaults to ``~/.local/share``)."""
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "part_point_ros" / "supports"


def check_name(name: object) -> str:
    """``name`` if it is a valid support-set name, else one ``InputError`` line."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"bad support-set name {name!r}: use 1-64 letters, digits, '.', '_', \"'\", '-' and single "
            "spaces, starting with a letter or digit (e.g. mug_handle, drill grip)"
        )
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def image_sha256(image: np.ndarray) -> str:
    """Hash of an image's shape and pixels (identifies a support image without storing it)."""
    digest = hashlib.sha256(repr(tuple(image.shape)).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def grid_to_dict(grid: ImageGrid) -> dict[str, Any]:
    return {
        "rows": grid.rows,
        "cols": grid.cols,
        "orig_size": list(grid.orig_size),
        "processed_size": list(grid.processed_size),
        "scale": list(grid.scale),
        "offset": list(grid.offset),
    }


def grid_from_dict(data: dict[str, Any]) -> ImageGrid:
    return ImageGrid(
        rows=int(data["rows"]),
        cols=int(data["cols"]),
        orig_size=(int(data["orig_size"][0]), int(data["orig_size"][1])),
        processed_size=(int(data["processed_size"][0]), int(data["processed_size"][1])),
        scale=(float(data["scale"][0]), float(data["scale"][1])),
        offset=(float(data["offset"][0]), float(data["offset"][1])),
    )


def point_cell(grid: ImageGrid, u: float, v: float) -> tuple[int, int]:
    """(row, col) of the feature cell containing original pixel (u, v): POP's i_s, "the patch index
    in the support image containing the annotated point". Clamped onto the grid (a point on the
    image's last pixel edge belongs to the last cell)."""
    gx, gy = grid.pixel_to_grid(u, v)
    row = min(max(int(math.floor(gy)), 0), grid.rows - 1)
    col = min(max(int(math.floor(gx)), 0), grid.cols - 1)
    return row, col


@dataclass
class Support:
    """One support example: its feature map, grid, and the annotated point."""

    features: np.ndarray  # (h, w, C) float32, unit L2 per cell
    grid: ImageGrid
    point: tuple[float, float]  # (u, v) in the support image's original pixels
    image_sha256: str
    image_path: str | None = None
    created: str = ""

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the support cell under the point (i_s)."""
        return point_cell(self.grid, *self.point)

    @property
    def valid(self) -> np.ndarray:
        """(h, w) bool: cells that see the support image (not padding only)."""
        return cells_on_image(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": [float(self.point[0]), float(self.point[1])],
            "image_size": list(self.grid.orig_size),
            "image_sha256": self.image_sha256,
            "image_path": self.image_path,
            "grid": grid_to_dict(self.grid),
            "cell": list(self.cell),
            "created": self.created,
        }


@dataclass
class SupportSet:
    """A named set of supports made with one feature extractor."""

    name: str
    extractor: dict[str, Any]  # DenseFeatureExtractor.describe(): name, key, model, dim
    supports: list[Support] = field(default_factory=list)
    created: str = ""
    updated: str = ""

    def __len__(self) -> int:
        return len(self.supports)

    @property
    def key(self) -> str:
        return str(self.extractor["key"])

    def check_extractor(self, extractor: DenseFeatureExtractor) -> None:
        """One ``InputError`` line if ``extractor`` is not the one the set was made with."""
        if extractor.key != self.key or extractor.dim != int(self.extractor["dim"]):
            raise InputError(
                f"support set {self.name!r} was made with feature extractor {self.key} "
                f"({self.extractor['dim']}-d) but {extractor.key} ({extractor.dim}-d) is loaded: load that "
                "extractor, or teach the set again under a new name with this one"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "extractor": dict(self.extractor),
            "created": self.created,
            "updated": self.updated,
            "supports": [s.to_dict() for s in self.supports],
        }


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` via a temporary file in the same directory, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SupportStore:
    """Support sets under ``root`` (default ``default_root()``): teach, load, list, delete."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self._lock = threading.Lock()

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.json", self.root / f"{name}.safetensors"

    def list(self) -> list[str]:
        """Names of the stored sets, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if NAME_PATTERN.fullmatch(p.stem))

    def exists(self, name: str) -> bool:
        return self._paths(check_name(name))[0].is_file()

    def _unknown(self, name: str) -> InputError:
        known = self.list()
        have = f"the stored sets are: {', '.join(known)}" if known else "no set is stored yet"
        return InputError(
            f"no support set {name!r} in {self.root} ({have}); teach one first (SupportStore.teach)"
        )

    def load(self, name: str, extractor: DenseFeatureExtractor | None = None) -> SupportSet:
        """The set ``name``; with ``extractor``, also check the set was made with it."""
        check_name(name)
        meta_path, tensor_path = self._paths(name)
        if not meta_path.is_file():
            raise self._unknown(name)
        support_set = self._read(name, meta_path, tensor_path)
        if extractor is not None:
            support_set.check_extractor(extractor)
        return support_set

    def _read(self, name: str, meta_path: Path, tensor_path: Path) -> SupportSet:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        def corrupt(why: str) -> CheckpointError:
            return CheckpointError(
                f"support set {name!r} ({meta_path.with_suffix('')}.*) is corrupt: {why}; delete it and "
                "teach it again"
            )

        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise corrupt(f"cannot read {meta_path.name} ({' '.join(str(err).split())[:120]})") from err
        try:
            tensors = load_file(tensor_path)
        except (OSError, SafetensorError, ValueError) as err:
            raise corrupt(f"cannot read {tensor_path.name} ({' '.join(str(err).split())[:120]})") from err
        try:
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            extractor = dict(meta["extractor"])
            dim = int(extractor["dim"])
            str(extractor["key"])
            supports = []
            for k, item in enumerate(meta["supports"]):
                grid = grid_from_dict(item["grid"])
                features = tensors.get(f"support.{k}.features")
                if features is None:
                    raise ValueError(f"support {k} has no tensor support.{k}.features")
                if features.shape != (grid.rows, grid.cols, dim) or features.dtype != np.float32:
                    raise ValueError(
                        f"support {k} features are {features.dtype} {features.shape}, expected float32 "
                        f"{(grid.rows, grid.cols, dim)}"
                    )
                u, v = (float(c) for c in item["point"])
                supports.append(
                    Support(
                        features=features,
                        grid=grid,
                        point=(u, v),
                        image_sha256=str(item["image_sha256"]),
                        image_path=item.get("image_path"),
                        created=str(item.get("created", "")),
                    )
                )
            return SupportSet(
                name=str(meta["name"]),
                extractor=extractor,
                supports=supports,
                created=str(meta.get("created", "")),
                updated=str(meta.get("updated", "")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise corrupt(f"{type(err).__name__}: {' '.join(str(err).split())[:160]}") from err

    def teach(
        self,
        name: str,
        image: np.ndarray,
        point: tuple[float, float],
        extractor: DenseFeatureExtractor,
        *,
        image_path: str | Path | None = None,
    ) -> SupportSet:
        """Add the support (``image``, ``point`` = (u, v) original pixels) to the set ``name``,
        creating it; return the updated set. The set must have been made with ``extractor``."""
        check_name(name)
        image = check_image(image)
        height, width = image.shape[:2]
        try:
            u, v = (float(c) for c in point)
        except (TypeError, ValueError) as err:
            raise InputError(f"support point must be (u, v) pixels, got {point!r}") from err
        if not (math.isfinite(u) and math.isfinite(v) and 0 <= u < width and 0 <= v < height):
            raise InputError(
                f"support point ({u:g}, {v:g}) is outside the {width}x{height} image: u must be in "
                f"[0, {width}) and v in [0, {height})"
            )
        with self._lock:
            meta_path, tensor_path = self._paths(name)
            if meta_path.is_file():
                support_set = self._read(name, meta_path, tensor_path)
                support_set.check_extractor(extractor)
            else:
                support_set = SupportSet(name=name, extractor=extractor.describe(), created=_now())
            feature_map = extractor.extract(image)
            now = _now()
            support = Support(
                features=np.ascontiguousarray(feature_map.features, dtype=np.float32),
                grid=feature_map.grid,
                point=(u, v),
                image_sha256=image_sha256(image),
                image_path=str(image_path) if image_path is not None else None,
                created=now,
            )
            if not support.valid[support.cell]:
                raise InputError(f"support point ({u:g}, {v:g}) falls in the extractor's padding")
            support_set.supports.append(support)
            support_set.updated = now
            self._write(support_set)
            return support_set

    def _write(self, support_set: SupportSet) -> None:
        from safetensors.numpy import save

        meta_path, tensor_path = self._paths(support_set.name)
        self.root.mkdir(parents=True, exist_ok=True)
        tensors = {f"support.{k}.features": s.features for k, s in enumerate(support_set.supports)}
        _write_atomic(tensor_path, save(tensors, metadata={"name": support_set.name, "format": str(FORMAT)}))
        _write_atomic(meta_path, (json.dumps(support_set.to_dict(), indent=2) + "\n").encode())

    def delete(self, name: str) -> None:
        """Remove the set ``name`` (its JSON first: a half-deleted set is simply gone)."""
        check_name(name)
        with self._lock:
            meta_path, tensor_path = self._paths(name)
            if not meta_path.is_file():
                raise self._unknown(name)
            meta_path.unlink()
            tensor_path.unlink(missing_ok=True)


class StoreSupports(Mapping[str, SupportSet]):
    """Every support set of a store, by name, read again when its file changes: a set taught by
    another process (``part-point teach``, the ROS node) is used by the next request."""

    def __init__(self, store: SupportStore, extractor: DenseFeatureExtractor | None = None) -> None:
        self.store = store
        self.extractor = extractor
        self._cache: dict[str, tuple[float, SupportSet]] = {}

    def _sets(self) -> dict[str, SupportSet]:
        sets = {}
        for name in self.store.list():
            meta, _ = self.store._paths(name)
            try:
                stamp = meta.stat().st_mtime_ns
            except FileNotFoundError:  # deleted since list()
                continue
            cached = self._cache.get(name)
            if cached is None or cached[0] != stamp:
                cached = (stamp, self.store.load(name, self.extractor))
                self._cache[name] = cached
            sets[name] = cached[1]
        return sets

    # Mapping's defaults would list the store once per key; each of these lists it once.
    def __getitem__(self, name: str) -> SupportSet:
        return self._sets()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sets())

    def __len__(self) -> int:
        return len(self.store.list())

    def __contains__(self, name: object) -> bool:
        return name in self._sets()

    def items(self):  # noqa: ANN201 - a dict's items view
        return self._sets().items()

    def values(self):  # noqa: ANN201 - a dict's values view
        return self._sets().values()
