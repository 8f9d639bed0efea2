"""``load_backbone``: pick the adapter from the checkpoint's ``model_type``.

Adding a family: write its adapter file and add it to ``ADAPTERS``.
"""

from __future__ import annotations

import torch

from part_point_ros.backbones.base import BackboneAdapter
from part_point_ros.backbones.gemma3 import Gemma3Adapter
from part_point_ros.backbones.hf_adapter import read_config
from part_point_ros.backbones.internvl import InternVLAdapter
from part_point_ros.backbones.llava import LlavaAdapter
from part_point_ros.backbones.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from part_point_ros.backbones.molmo2 import Molmo2Adapter
from part_point_ros.backbones.qwen2_5_vl import Qwen25VLAdapter
from part_point_ros.backbones.qwen2_vl import Qwen2VLAdapter
from part_point_ros.backbones.qwen3_vl import Qwen3VLAdapter
from part_point_ros.backbones.smolvlm import SmolVLMAdapter
from part_point_ros.errors import InputError, UnknownBackboneError

ADAPTERS: tuple[type[BackboneAdapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen25VLAdapter,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
    Gemma3Adapter,
    SmolVLMAdapter,
    InternVLAdapter,
    Molmo2Adapter,
)
REGISTRY: dict[str, type[BackboneAdapter]] = {mt: a for a in ADAPTERS for mt in a.model_types}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def check_device(device: str | torch.device) -> torch.device:
    """The torch device, or one InputError line when it cannot be used on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(
                f"device {str(device)!r}: torch sees no CUDA GPU here (torch {torch.__version__}, {build}); "
                "use device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type not in ("cpu", "mps"):
        raise InputError(f"device {str(device)!r} is not supported: use cpu, cuda or cuda:N")
    return dev


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a torch.dtype) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return _DTYPES[key]


def adapter_for(name_or_path: str) -> type[BackboneAdapter]:
    """The adapter class of a checkpoint (its config.json only), or one UnknownBackboneError line
    naming its model type and the supported ones: the first check a load makes."""
    config = read_config(name_or_path)
    model_type = getattr(config, "model_type", None)
    if model_type not in REGISTRY:
        supported = ", ".join(sorted(REGISTRY))
        raise UnknownBackboneError(
            f"{name_or_path!r} is a {model_type!r} model, which is not supported; "
            f"supported model types: {supported}"
        )
    return REGISTRY[model_type]


def load_backbone(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    max_layer: int | None = None,
    attn_implementation: str = "sdpa",
    allow_pickle: bool = False,
    crop: bool = False,
    lm_head: bool = True,
    quantization: str | None = None,
) -> BackboneAdapter:
    """Load a supported MLLM (hub id or local directory) behind its family's adapter.

    Only safetensors weights are read unless ``allow_pickle`` (UNSAFE: unpickling can run code).
    ``crop``: let the processor crop the frame as the checkpoint ships it (default: the whole frame is
    seen); ``lm_head=False``: the language-model head is neither allocated nor read (a2p and attention
    never use it; text pointing needs it); ``quantization``: ``"int8"`` / ``"int4"`` (torchao),
    ``"nf4"`` / ``"bnb-int8"`` (bitsandbytes) of the decoder's linear layers, for small-memory GPUs.
    See ``BackboneAdapter.from_pretrained``.
    """
    return adapter_for(name_or_path).from_pretrained(
        name_or_path,
        device=device,
        dtype=parse_dtype(dtype),
        max_layer=max_layer,
        attn_implementation=attn_implementation,
        allow_pickle=allow_pickle,
        crop=crop,
        lm_head=lm_head,
        quantization=quantization,
    )
