"""Quantized backbones on tiny real LLaVA / Qwen2.5-VL checkpoints: the weights really are quantized
(and smaller), the capture is exact to the QUANTIZED model's own attention, pointing works on it, and
what cannot run here is refused in one line."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from part_point_ros.backbones.llava import LlavaAdapter
from part_point_ros.backbones.quantization import (
    QUANTIZATIONS,
    is_quantized,
    quantization_for,
    weight_bytes,
)
from part_point_ros.backbones.registry import load_backbone
from part_point_ros.backbones.tiny import build_tiny_llava, build_tiny_qwen2_5_vl
from part_point_ros.errors import InputError, MissingDependencyError
from part_point_ros.types import HeadRef

BUILDERS = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl}
HEADS = (HeadRef(0, 0), HeadRef(1, 3), HeadRef(2, 1), HeadRef(3, 2))
INSTRUCTION = "point to the handle of the red mug"
HAVE_BNB = all(importlib.util.find_spec(p) is not None for p in ("bitsandbytes", "accelerate"))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {family: build(tmp_path_factory.mktemp(family), seed=3) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def backbone_dir(request, dirs):
    return dirs[request.param]


@pytest.fixture(scope="module")
def int8(backbone_dir):
    return load_backbone(str(backbone_dir), quantization="int8", attn_implementation="eager")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(150, 260, 3), dtype=np.uint8)  # not square


def test_int8_holds_int8_weights_in_the_decoder_only_and_takes_less_memory(backbone_dir, int8):
    full = load_backbone(str(backbone_dir))
    assert int8.quantization == "int8" and full.quantization is None
    assert int8.info == full.info  # what a head checks is unchanged
    linears = {n: m for n, m in int8.decoder_layers.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 7 * len(int8.decoder_layers)  # q, k, v, o, gate, up, down per layer
    for name, module in linears.items():
        assert is_quantized(module.weight) and module.weight.qdata.dtype == torch.int8, name
    q = int8.decoder_layers[0].self_attn.q_proj.weight
    assert type(q).__name__ == "Int8Tensor"
    # the checkpoint's own weights, rounded per output channel: |w - deq| <= scale / 2
    reference = full.decoder_layers[0].self_attn.q_proj.weight
    error = (q.dequantize() - reference).abs()
    assert (error <= q.scale.reshape(-1, 1) / 2 + 1e-6).all() and error.max() > 0
    # everything outside the decoder keeps its precision: embeddings, vision tower, projector, lm_head
    decoder = {id(p) for p in int8.decoder_layers.parameters()}
    others = [(n, p) for n, p in int8.model.named_parameters() if id(p) not in decoder]
    assert others and not [n for n, p in others if is_quantized(p)]
    assert not is_quantized(int8.model.lm_head.weight)
    small, large = weight_bytes(int8.decoder_layers), weight_bytes(full.decoder_layers)
    assert small < 0.3 * large  # 1 byte a weight instead of 4, plus one fp32 scale per output row
    assert weight_bytes(int8.model) < weight_bytes(full.model)


def captured_and_eager(adapter, image):
    """The adapter's capture of HEADS, and the model's own eager attention of those heads at the
    capture's query rows (k, L, S): what the capture must equal."""
    cap = adapter.capture(image, INSTRUCTION, HEADS)
    inputs, _ = adapter.prepare(image, adapter.build_prompt(INSTRUCTION))
    with torch.inference_mode():
        out = adapter.model.model(**inputs, output_attentions=True, use_cache=False)
    rows = cap.text_positions.to(inputs["input_ids"].device)
    return cap, torch.stack([out.attentions[h.layer][0, h.head][rows] for h in HEADS]).float().cpu()


def test_capture_equals_the_quantized_models_own_eager_attention(backbone_dir, int8, image):
    cap, expected = captured_and_eager(int8, image)
    torch.testing.assert_close(cap.model_attention(), expected, atol=1e-4, rtol=0)  # (k, L, S): every row
    last = expected[:, -1, cap.image_positions]
    torch.testing.assert_close(cap.last_token_attention(), last, atol=1e-4, rtol=0)
    assert (last.max(dim=-1).values / last.min(dim=-1).values).min() > 2  # far from uniform
    # ... and it is the quantized model's attention, not the full-precision one's
    full = load_backbone(str(backbone_dir), attn_implementation="eager").capture(image, INSTRUCTION, HEADS)
    assert (full.last_token_attention() - cap.last_token_attention()).abs().max() > 1e-4


def test_sdpa_capture_on_the_quantized_model_matches_eager(backbone_dir, int8, image):
    sdpa = load_backbone(str(backbone_dir), quantization="int8").capture(image, INSTRUCTION, HEADS)
    eager = int8.capture(image, INSTRUCTION, HEADS)
    torch.testing.assert_close(sdpa.queries, eager.queries)
    torch.testing.assert_close(sdpa.keys, eager.keys)
    torch.testing.assert_close(sdpa.last_token_attention(), eager.last_token_attention(), atol=1e-5, rtol=0)


def test_attention_pointing_on_the_quantized_backbone_points_on_the_image(backbone_dir, image):
    from part_point_ros.grounding import PartPointer

    pointer = PartPointer.from_pretrained(
        str(backbone_dir), method="attention", heads=[(2, 1), (3, 2)], quantization="int8"
    )
    assert pointer.backbone.quantization == "int8"
    assert is_quantized(pointer.backbone.decoder_layers[0].self_attn.q_proj.weight)
    result = pointer.point(image, "the handle of the mug")
    h, w = image.shape[:2]
    assert np.isfinite([result.x, result.y, result.score]).all()
    assert 0 <= result.x <= w - 1 and 0 <= result.y <= h - 1


@pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes and accelerate are not installed")
@pytest.mark.parametrize("name", ["nf4", "bnb-int8"])
def test_bitsandbytes_capture_equals_its_own_eager_attention(backbone_dir, image, name):
    """Runs where bitsandbytes is installed (not a requirement): on the CPU with its CPU backend."""
    adapter = load_backbone(str(backbone_dir), quantization=name, attn_implementation="eager")
    assert adapter.quantization == name
    assert is_quantized(adapter.decoder_layers[0].self_attn.q_proj.weight)
    assert not is_quantized(adapter.model.lm_head.weight)
    cap, expected = captured_and_eager(adapter, image)
    torch.testing.assert_close(cap.model_attention(), expected, atol=1e-4, rtol=0)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_unknown_quantization_is_one_line_naming_the_choices(backbone_dir):
    with pytest.raises(InputError) as err:
        load_backbone(str(backbone_dir), quantization="int3")
    message = _one_line(err)
    assert "'int3'" in message and all(name in message for name in QUANTIZATIONS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="int4 runs on a CUDA device")
def test_int4_on_the_cpu_is_one_line_pointing_at_int8(backbone_dir):
    with pytest.raises(InputError) as err:
        load_backbone(str(backbone_dir), quantization="int4")
    message = _one_line(err)
    assert "CUDA" in message and "int8" in message


@pytest.mark.skipif(HAVE_BNB, reason="bitsandbytes and accelerate are installed here")
@pytest.mark.parametrize("name", ["nf4", "bnb-int8"])
def test_bitsandbytes_missing_is_one_line_naming_the_install(backbone_dir, name):
    with pytest.raises(MissingDependencyError) as err:
        load_backbone(str(backbone_dir), quantization=name)
    message = _one_line(err)
    assert "pip install bitsandbytes accelerate" in message and "not installed" in message


def test_quantization_that_matches_no_decoder_weight_fails_loudly(dirs):
    """The safety net for a family whose decoder path is wrong: it must not run unquantized silently."""

    class Misplaced(LlavaAdapter):
        language_model_path = "model.no_such_module"

    with pytest.raises(RuntimeError, match="quantized none of the decoder's weights"):
        Misplaced.from_pretrained(str(dirs["llava"]), quantization="int8")


def test_none_is_no_quantization_and_the_cli_offers_the_same_names():
    from part_point_ros.cli.main import QUANTIZATIONS as CLI_NAMES

    assert quantization_for(None, device="cpu", dtype=torch.float32, language_model="m") is None
    assert CLI_NAMES == QUANTIZATIONS


def test_torchao_import_noise_is_dropped_and_nothing_else(caplog):
    from part_point_ros.backbones import quantization

    log = logging.getLogger("torchao")
    assert quantization._NOISE in log.filters  # installed when the package is imported
    with caplog.at_level(logging.WARNING, logger="torchao"):
        log.warning("Failed to load /x/_C_cutlass_90a.abi3.so: Could not load this library")
        log.warning("something else")
    kept = [r.getMessage() for r in caplog.records]
    assert "something else" in kept
    assert any("Failed to load" in m for m in kept) == (torch.version.cuda is not None)
