"""Feature cache: one frozen-backbone TRUNCATED prefill per (image, query), stored for training.

Layout of a cache directory::

    manifest.json          what the features were made with: backbone (BackboneInfo), heads,
                           processor fingerprint, dtype, heatmap upscale, dataset source
    chunk_00000.safetensors  per sample j of the chunk: "j.queries" (k, L, d), "j.keys" (k, P, d),
                           "j.values" (k, P, d) in the cache dtype; "j.patch_target" (P,) float32;
                           "j.heatmap_mask" (s·rows, s·cols) uint8; "j.mask_bits" packed GT mask
    chunk_00000.json       per sample: index, sample_id, query, image path, ImageGrid, mask shape, meta
    index.json             written last: chunk list and sample count (the cache is complete)

Chunk i holds dataset samples ``[i * chunk_size, (i + 1) * chunk_size)``; its JSON is written
after its tensors (both atomically), so a chunk is done when its JSON exists. An interrupted
``write_cache`` continues at the first missing chunk. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from part_point_ros.training.batching import FeatureItem
from part_point_ros.training.errors import CacheError, CacheMismatchError
from part_point_ros.training.targets import mask_targets
from part_point_ros.types import HeadRef, ImageGrid

CACHE_FORMAT = "part_point_ros.feature_cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
RERUN = "re-run part-point cache"


# ----------------------------------------------------------------------------- small helpers
def json_safe(value: Any) -> Any:
    """Plain JSON data from metadata (numpy arrays/scalars -> lists/numbers, paths -> str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: missing; {RERUN}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path}: not valid JSON ({err}); {RERUN}") from err


def processor_fingerprint(processor: Any) -> dict[str, str]:
    """Class names and a SHA-256 of the image processor's ``to_dict()``: resize/crop/normalise settings."""
    image_processor = getattr(processor, "image_processor", processor)
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else {}
    blob = json.dumps(json_safe(settings), sort_keys=True).encode()
    return {
        "processor": type(processor).__name__,
        "image_processor": type(image_processor).__name__,
        "image_processor_sha256": hashlib.sha256(blob).hexdigest(),
    }


def dataset_fingerprint(dataset: Sequence[Any], spec: dict[str, Any] | None, count: int) -> dict[str, Any]:
    """Which samples the cache holds: loader spec, dataset name/source and a hash of the sample ids."""
    ids = "\n".join(dataset[i].sample_id for i in range(count)).encode()
    return {
        "spec": json_safe(spec or {}),
        "name": getattr(dataset, "name", ""),
        "source": getattr(dataset, "source", ""),
        "n_samples": count,
        "sample_ids_sha256": hashlib.sha256(ids).hexdigest(),
    }


def build_manifest(
    adapter: Any,
    dataset: Sequence[Any],
    *,
    heads: Sequence[HeadRef],
    upscale: int,
    dtype: str,
    chunk_size: int,
    data_spec: dict[str, Any] | None = None,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """The manifest a cache of ``dataset`` made with ``adapter`` and these settings must carry."""
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "backbone": asdict(adapter.info),
        "heads": [[h.layer, h.head] for h in heads],
        "processor": processor_fingerprint(adapter.processor),
        "dtype": dtype,
        "upscale": int(upscale),
        "chunk_size": int(chunk_size),
        "dataset": dataset_fingerprint(dataset, data_spec, count),
    }


def manifest_difference(have: dict[str, Any], want: dict[str, Any], prefix: str = "") -> str | None:
    """First field where two manifests differ, as 'field is A in the cache but B requested'."""
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = manifest_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{prefix}{key} is {a!r} in the cache but {b!r} was requested"
    return None


# ----------------------------------------------------------------------------- writing
def _chunk_paths(root: Path, chunk: int) -> tuple[Path, Path]:
    stem = f"chunk_{chunk:05d}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _grid_dict(grid: ImageGrid) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(grid).items()}


def _grid_from_dict(data: dict[str, Any]) -> ImageGrid:
    return ImageGrid(
        rows=int(data["rows"]),
        cols=int(data["cols"]),
        orig_size=tuple(data["orig_size"]),
        processed_size=tuple(data["processed_size"]),
        scale=tuple(data["scale"]),
        offset=tuple(data["offset"]),
    )


def _encode_sample(adapter: Any, sample: Any, heads: Sequence[HeadRef], upscale: int, dtype: torch.dtype):
    capture = adapter.capture(sample.load_image(), sample.query, heads, truncate=True)
    mask = np.asarray(sample.load_mask(), dtype=bool)
    targets = mask_targets(mask, capture.grid, upscale)
    tensors = {
        "queries": capture.queries.to(dtype).contiguous(),  # (k, L, d)
        "keys": capture.image_keys.to(dtype).contiguous(),  # (k, P, d)
        "values": capture.image_values.to(dtype).contiguous(),  # (k, P, d)
        "patch_target": torch.from_numpy(targets.patch),  # (P,)
        "heatmap_mask": torch.from_numpy(targets.heatmap_mask.astype(np.uint8)),  # (s·rows, s·cols)
        "mask_bits": torch.from_numpy(np.packbits(mask.reshape(-1))),  # (ceil(H·W / 8),)
    }
    for name in ("queries", "keys", "values"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise CacheError(
                f"sample {sample.sample_id}: captured {name} overflow {dtype}: set cache_dtype to "
                "bfloat16 or float32"
            )
    record = {
        "sample_id": sample.sample_id,
        "query": sample.query,
        "image_path": str(sample.image_path),
        "grid": _grid_dict(capture.grid),
        "mask_shape": list(mask.shape),
        "text_length": int(capture.queries.shape[1]),
        "meta": json_safe(sample.meta),
    }
    return tensors, record


def write_cache(
    adapter: Any,
    dataset: Sequence[Any],
    out_dir: str | Path,
    *,
    heads: Sequence[HeadRef],
    upscale: int = 4,
    dtype: str = "float16",
    chunk_size: int = 256,
    data_spec: dict[str, Any] | None = None,
    max_samples: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Capture every sample of ``dataset`` into ``out_dir``; resumes an interrupted run.

    An existing cache made with other settings raises ``CacheMismatchError`` (nothing is
    overwritten). ``progress(done, total)`` is called after each sample.
    """
    if dtype not in DTYPES:
        raise CacheError(f"cache dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    heads = tuple(heads)
    manifest = build_manifest(
        adapter, dataset, heads=heads, upscale=upscale, dtype=dtype, chunk_size=chunk_size,
        data_spec=data_spec, max_samples=max_samples,
    )  # fmt: skip
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        diff = manifest_difference(_read_json(manifest_path), manifest)
        if diff:
            raise CacheMismatchError(
                f"{root} holds another cache ({diff}): choose another cache directory or delete this one"
            )
    else:
        _write_json(manifest_path, manifest)
    total = manifest["dataset"]["n_samples"]
    n_chunks = -(-total // chunk_size)
    torch_dtype = DTYPES[dtype]
    chunks = []
    for chunk in range(n_chunks):
        start, stop = chunk * chunk_size, min(total, (chunk + 1) * chunk_size)
        tensor_path, json_path = _chunk_paths(root, chunk)
        chunks.append(
            {"tensors": tensor_path.name, "records": json_path.name, "start": start, "count": stop - start}
        )
        if json_path.is_file():  # finished in an earlier run
            if progress:
                progress(stop, total)
            continue
        tensors: dict[str, torch.Tensor] = {}
        records = []
        for j, index in enumerate(range(start, stop)):
            sample_tensors, record = _encode_sample(adapter, dataset[index], heads, upscale, torch_dtype)
            tensors.update({f"{j}.{name}": t for name, t in sample_tensors.items()})
            records.append({"index": index, **record})
            if progress:
                progress(index + 1, total)
        tmp = tensor_path.with_name(tensor_path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "chunk": str(chunk)})
        os.replace(tmp, tensor_path)
        _write_json(json_path, {"chunk": chunk, "start": start, "samples": records})
    _write_json(root / INDEX_NAME, {"n_samples": total, "chunks": chunks})
    return root


# ----------------------------------------------------------------------------- reading
class FeatureCache(torch.utils.data.Dataset):
    """A complete cache directory as a map-style dataset of ``FeatureItem`` (features as stored)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / MANIFEST_NAME).is_file():
            raise CacheError(f"{self.root}: no feature cache here (no {MANIFEST_NAME}); run part-point cache")
        self.manifest = _read_json(self.root / MANIFEST_NAME)
        if self.manifest.get("format") != CACHE_FORMAT or self.manifest.get("version") != CACHE_VERSION:
            raise CacheError(
                f"{self.root}: format {self.manifest.get('format')!r} v{self.manifest.get('version')} is not "
                f"{CACHE_FORMAT} v{CACHE_VERSION}; {RERUN}"
            )
        if not (self.root / INDEX_NAME).is_file():
            done = len(list(self.root.glob("chunk_*.json")))
            raise CacheError(
                f"{self.root}: the cache is incomplete ({done} chunks written); {RERUN} to finish it"
            )
        self.index = _read_json(self.root / INDEX_NAME)
        self.records: list[dict[str, Any]] = []
        self._where: list[tuple[str, int]] = []  # (tensor file, position in chunk)
        for chunk in self.index["chunks"]:
            data = _read_json(self.root / chunk["records"])
            for j, record in enumerate(data["samples"]):
                self.records.append(record)
                self._where.append((chunk["tensors"], j))
        if len(self.records) != self.index["n_samples"]:
            raise CacheError(f"{self.root}: index lists {self.index['n_samples']} samples, chunks hold "
                             f"{len(self.records)}; {RERUN}")  # fmt: skip
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()
        self._k = len(self.manifest["heads"])  # heads served: the first _k of the cached ones

    # --- what the cache was made with
    @property
    def cached_heads(self) -> list[HeadRef]:
        """Every head the cache holds features of, in the order of its heads file."""
        return [HeadRef(int(layer), int(head)) for layer, head in self.manifest["heads"]]

    @property
    def heads(self) -> list[HeadRef]:
        """The heads this cache serves: all cached ones, or the first k after ``use_heads``."""
        return self.cached_heads[: self._k]

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.manifest["backbone"])

    @property
    def upscale(self) -> int:
        return int(self.manifest["upscale"])

    def check_matches(
        self,
        *,
        backbone: str | None = None,
        heads: Sequence[HeadRef] | None = None,
        upscale: int | None = None,
    ) -> None:
        """Raise ``CacheMismatchError`` (one line: what differs) unless the cache fits the request.

        ``heads`` may be the first k of the cached heads (a k = 1 / 3 ablation on a k = 5 cache);
        ``use_heads`` then makes the cache serve those k only.
        """
        problems = []
        if backbone and backbone != self.manifest["backbone"]["name"]:
            problems.append(
                f"backbone is {self.manifest['backbone']['name']!r} in the cache but {backbone!r} requested"
            )
        cached = self.cached_heads
        if heads is not None and (not heads or list(heads) != cached[: len(heads)]):
            have = ",".join(map(str, cached))
            problems.append(
                f"heads are {have} in the cache but {','.join(map(str, heads))} requested "
                "(a config may use the first k of the cached heads, in order)"
            )
        if upscale is not None and upscale != self.upscale:
            problems.append(f"heatmap upscale is {self.upscale} in the cache but the head needs {upscale}")
        if problems:
            raise CacheMismatchError(
                f"feature cache {self.root} does not match the config: {problems[0]}; {RERUN}"
            )

    def use_heads(self, heads: Sequence[HeadRef]) -> None:
        """Serve the features of ``heads`` only: the first k cached heads (``check_matches`` rules)."""
        self.check_matches(heads=heads)
        self._k = len(heads)

    # --- samples
    def __len__(self) -> int:
        return len(self.records)

    def grid(self, index: int) -> ImageGrid:
        return _grid_from_dict(self.records[index]["grid"])

    def grid_shapes(self) -> list[tuple[int, int]]:
        return [(int(r["grid"]["rows"]), int(r["grid"]["cols"])) for r in self.records]

    def _tensor(self, index: int, name: str) -> torch.Tensor:
        if os.getpid() != self._pid:  # a DataLoader worker: open its own handles
            self._handles, self._pid = {}, os.getpid()
        file, j = self._where[index]
        if file not in self._handles:
            if len(self._handles) >= 4:
                self._handles.clear()
            try:
                self._handles[file] = safe_open(str(self.root / file), framework="pt")
            except (OSError, Exception) as err:  # noqa: BLE001 - safetensors raises its own error type
                raise CacheError(f"{self.root / file}: cannot be read ({err}); {RERUN}") from err
        return self._handles[file].get_tensor(f"{j}.{name}")

    def mask(self, index: int) -> np.ndarray:
        """The ground-truth mask (H, W) bool in original-image pixels."""
        h, w = self.records[index]["mask_shape"]
        bits = self._tensor(index, "mask_bits").numpy()
        return np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)  # (H·W,) -> (H, W)

    def __getitem__(self, index: int) -> FeatureItem:
        record = self.records[index]
        return FeatureItem(
            sample_id=record["sample_id"],
            queries=self._tensor(index, "queries")[: self._k],
            keys=self._tensor(index, "keys")[: self._k],
            values=self._tensor(index, "values")[: self._k],
            grid=self.grid(index),
            patch_target=self._tensor(index, "patch_target"),
            heatmap_mask=self._tensor(index, "heatmap_mask").numpy().astype(bool),
            index=index,
            meta=record["meta"],
        )
