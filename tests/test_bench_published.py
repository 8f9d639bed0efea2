"""part-point bench-published: 7B-shaped random-weight backbones from the published configs.

The GPU run is a benchmark (docs/performance.md); here: the configs are the published models' (their
parameter counts), the heads and layers each method loads, and the whole run on tiny shapes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from part_point_ros.backbones.published import PUBLISHED, build_random_backbone, text_config
from part_point_ros.cli.bench_published import bench_heads, run_published_bench
from part_point_ros.cli.main import main
from part_point_ros.errors import InputError
from part_point_ros.types import HeadRef

# total parameters of the published checkpoints (the model cards: 7.06 B and 8.29 B)
PUBLISHED_PARAMS = {"llava-1.5-7b": 7.06e9, "qwen2.5-vl-7b": 8.29e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_shapes_have_the_published_parameter_count(name):
    backbone = build_random_backbone(name, device="meta", dtype=torch.bfloat16)  # no memory used
    total = sum(p.numel() for p in backbone.model.parameters())
    assert total == pytest.approx(PUBLISHED_PARAMS[name], rel=0.005), total
    text = text_config(name)
    assert len(backbone.decoder_layers) == text["num_hidden_layers"] == backbone.info.num_layers
    assert backbone.info.head_dim == 128 and backbone.info.family == PUBLISHED[name].family


def test_max_layer_builds_only_the_layers_a_method_reads():
    backbone = build_random_backbone("qwen2.5-vl-7b", device="meta", max_layer=19)
    assert len(backbone.decoder_layers) == 20 and backbone.info.num_layers == 28
    with pytest.raises(InputError, match="max_layer must be in 0..27"):
        build_random_backbone("qwen2.5-vl-7b", device="meta", max_layer=28)
    with pytest.raises(InputError, match="unknown published config 'llava-13b'"):
        build_random_backbone("llava-13b", device="meta")


def test_bench_heads_are_the_shipped_ones_padded_in_their_deepest_layer():
    llava = bench_heads("llava-1.5-7b", "published", 32, 32)
    assert llava[:2] == [HeadRef(14, 24), HeadRef(14, 13)] and len(set(llava)) == 5
    assert {h.layer for h in llava} == {14}
    qwen = bench_heads("qwen2.5-vl-7b", "published", 28, 28)
    assert qwen == [HeadRef(16, 1), HeadRef(18, 15), HeadRef(19, 23), HeadRef(16, 7), HeadRef(19, 17)]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_tiny_run_times_every_method_and_loads_only_what_each_reads(name):
    report = run_published_bench(
        name, device="cpu", dtype="float32", scale="tiny", reps=1, warmup=0, max_new_tokens=2
    )
    deepest = max(h.layer for h in bench_heads(name, "tiny", 4, 4))
    assert report["layers_loaded"] == {"a2p": deepest + 1, "attention": deepest + 1, "text": 4}
    assert report["full_layers"] == 4 and report["peak_gb"] == {"a2p": None, "attention": None, "text": None}
    assert set(report["ms"]["a2p"]) == {"1_query", "5_queries", "same_frame"}
    assert set(report["ms"]["text"]) == {"1_query"}
    values = [v for ms in report["ms"].values() for v in ms.values()] + list(report["ratios"].values())
    assert all(math.isfinite(v) and v > 0 for v in values)


def test_cli_writes_json_and_refuses_a_missing_gpu_in_one_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench-published", "--config", "llava-1.5-7b", "--device", "cpu", "--dtype", "float32",
            "--scale", "tiny", "--reps", "1", "--warmup", "0", "--max-new-tokens", "1",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "llava-1.5-7b (llava-hf/llava-1.5-7b-hf shapes, RANDOM weights, tiny) on cpu" in printed
    assert "text / a2p" in printed
    (report,) = json.loads(out.read_text())
    assert report["config"] == "llava-1.5-7b" and report["layers_loaded"]["text"] == 4
    if not torch.cuda.is_available():
        assert main(["bench-published", "--device", "cuda"]) != 0
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "torch sees no CUDA GPU here" in err


def test_a_subset_of_methods_runs_alone_and_a2p_is_required():
    report = run_published_bench(
        "llava-1.5-7b", device="cpu", dtype="float32", scale="tiny", reps=1, warmup=0, methods=("a2p",)
    )
    assert set(report["ms"]) == {"a2p"} and math.isnan(report["ratios"]["text_over_a2p"])
    with pytest.raises(InputError, match="methods must include a2p"):
        run_published_bench("llava-1.5-7b", device="cpu", scale="tiny", methods=("attention",))
