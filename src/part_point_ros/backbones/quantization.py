"""Optional weight quantization of the language model, for Jetson-class memory.

``load_backbone(..., quantization=...)`` hands transformers a ``quantization_config``; the weights are
quantized one by one as they are read, so the full-precision model never sits in memory:

- ``"int8"``: torchao int8 weight-only (per-channel scales; activations stay in ``dtype``). CPU and CUDA.
- ``"int4"``: torchao int4 weight-only (group size 128, tinygemm's tile-packed layout). CUDA and
  bfloat16 only: torchao has no CPU kernel for int4 weights (its other int4 layouts need the mslk GPU
  library or are not implemented on the CPU).
- ``"nf4"`` / ``"bnb-int8"``: bitsandbytes 4-bit NormalFloat / LLM.int8(). Wherever the installed
  bitsandbytes has a backend for the device (recent releases: CUDA and the CPU); they also need accelerate.

Only the language model's ``nn.Linear`` layers are quantized: the vision tower, the projector, the
embeddings and the language-model head keep ``dtype``. The capture reads Q/K/V inside the attention
call (``capture.py``), after the quantized projections, so it is exact to the quantized model's own
attention; the points differ from the full-precision model's by what quantization changes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import metadata, util
from typing import Any

import torch
from torch import nn

from part_point_ros.errors import InputError, MissingDependencyError

QUANTIZATIONS: tuple[str, ...] = ("int8", "int4", "nf4", "bnb-int8")
TORCHAO = ("int8", "int4")
INT4_GROUP_SIZE = 128  # torchao's default; a weight whose input size it does not divide stays unquantized


@dataclass(frozen=True)
class Quantization:
    """What ``from_pretrained`` gets for one quantization: its config and where to load the weights."""

    name: str  # one of QUANTIZATIONS
    config: Any  # transformers ``TorchAoConfig`` / ``BitsAndBytesConfig``
    device_map: dict[str, str] | None  # {"": device}: quantize on the device as loaded; None: on the CPU


def only_under(prefix: str) -> str:
    """A ``modules_to_not_convert`` pattern that skips every module NOT under ``prefix``.

    transformers matches each pattern from the start of a parameter / module name (``re.match``),
    so a negative lookahead keeps ``prefix.*`` (the language model) and skips the rest.
    """
    return rf"(?!{re.escape(prefix)}\.).*"


def quantization_for(
    name: str | None, *, device: str | torch.device, dtype: torch.dtype, language_model: str
) -> Quantization | None:
    """The ``Quantization`` for ``name`` (None: none), or one line saying why it cannot run here.

    ``language_model``: the module path of the decoder in the model (``model.language_model``); only
    the ``nn.Linear`` layers under it are quantized. Checked before any weight is read.
    """
    if name is None:
        return None
    key = str(name).strip().lower()
    if key not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {name!r}: use one of {', '.join(QUANTIZATIONS)} (or none)")
    dev = torch.device(device)
    if key in TORCHAO:
        return _torchao(key, dev, dtype, only_under(language_model))
    return _bitsandbytes(key, dev, dtype, only_under(language_model))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _require(package: str, minimum: str, what: str) -> str:
    """The installed version of ``package``, or one MissingDependencyError line naming the install."""
    from packaging.version import Version

    found = _version(package)
    if found is None or util.find_spec(package) is None:
        raise MissingDependencyError(f"{what} needs {package}, which is not installed: pip install {package}")
    if Version(found) < Version(minimum):
        raise MissingDependencyError(
            f"{what} needs {package} >= {minimum} (transformers' minimum), found {found}: "
            f"pip install -U {package}"
        )
    return found


def _device_map(dev: torch.device, what: str) -> dict[str, str]:
    """``{"": device}``: transformers then quantizes each weight on the device; that needs accelerate."""
    from transformers.utils.import_utils import ACCELERATE_MIN_VERSION

    _require("accelerate", ACCELERATE_MIN_VERSION, f"{what} on {dev}")
    return {"": str(dev)}


def _torchao(key: str, dev: torch.device, dtype: torch.dtype, skip: str) -> Quantization:
    from transformers.utils.import_utils import TORCHAO_MIN_VERSION

    what = f"quantization {key!r}"
    version = _require("torchao", TORCHAO_MIN_VERSION, what)
    if key == "int4":
        if dev.type != "cuda":
            raise InputError(
                f"{what} needs a CUDA device: torchao {version} has no CPU kernel for int4 weights; "
                f"on {dev.type} use quantization int8"
            )
        if dtype != torch.bfloat16:
            raise InputError(f"{what} needs dtype bfloat16 (torchao's int4 CUDA kernel), got {dtype}")
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    if key == "int8":
        method = Int8WeightOnlyConfig()
    else:
        method = Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
    config = TorchAoConfig(method, modules_to_not_convert=[skip])
    # on the CPU the weights load there anyway (no accelerate needed); on a GPU they are quantized on it
    device_map = None if dev.type == "cpu" else _device_map(dev, what)
    return Quantization(name=key, config=config, device_map=device_map)


def _bitsandbytes(key: str, dev: torch.device, dtype: torch.dtype, skip: str) -> Quantization:
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    what = f"quantization {key!r}"
    missing = [p for p in ("bitsandbytes", "accelerate") if _version(p) is None or util.find_spec(p) is None]
    if missing:  # both at once: transformers' bitsandbytes loading needs the two
        raise MissingDependencyError(
            f"{what} needs bitsandbytes and accelerate ({' and '.join(missing)} not installed): "
            "pip install bitsandbytes accelerate"
        )
    version = _require("bitsandbytes", BITSANDBYTES_MIN_VERSION, what)
    device_map = _device_map(dev, what)
    import bitsandbytes

    supported = getattr(bitsandbytes, "supported_torch_devices", {"cuda"})
    if dev.type not in supported:
        raise InputError(
            f"{what}: bitsandbytes {version} has no {dev.type} backend (it runs on "
            f"{', '.join(sorted(supported))}); on the CPU use quantization int8"
        )
    from transformers import BitsAndBytesConfig

    if key == "nf4":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=[skip],
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[skip])
    return Quantization(name=key, config=config, device_map=device_map)


class _TorchaoImportNoise(logging.Filter):
    """Drops what importing torchao logs that says nothing to a user of this package: on a CPU-only
    torch build, one "Failed to load ..." warning per CUDA-only kernel library it ships
    (``_C_cutlass_90a``, ``_C_mxfp8``, which cannot load there), and torch's deprecation notice for
    each torchao Enum registered as a pytree constant. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "torchao":
            return not (torch.version.cuda is None and str(record.msg).startswith("Failed to load"))
        args = record.args if isinstance(record.args, tuple) else ()
        registered = args[0] if args else None
        return not str(getattr(registered, "__module__", "")).startswith("torchao")


_NOISE = _TorchaoImportNoise()


def quiet_torchao_import_noise() -> None:
    """Install ``_TorchaoImportNoise`` (once). Called when this module is imported, before any
    transformers model module: transformers imports torchao with ``modeling_utils`` once torchao is
    installed, quantized or not, so every process that loads a backbone would print them."""
    for name in ("torchao", "torch.utils._pytree"):
        log = logging.getLogger(name)
        if _NOISE not in log.filters:
            log.addFilter(_NOISE)


quiet_torchao_import_noise()


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a quantized weight: a torchao tensor subclass (``Int8Tensor``, ...) or a bitsandbytes
    parameter (``Params4bit``, ``Int8Params``); a plain tensor or ``nn.Parameter`` is not."""
    return type(weight) not in (torch.Tensor, nn.Parameter)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds: a quantized tensor subclass counts its inner tensors (int8 data, scales)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = (getattr(tensor, n) for n in names)
        return sum(tensor_bytes(t) for t in inner if isinstance(t, torch.Tensor))
    return tensor.numel() * tensor.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers as they are stored (quantized ones included; a
    bitsandbytes 4-bit weight counts its packed data, not its small quantization state)."""
    return sum(tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))
