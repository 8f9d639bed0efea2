"""cache -> train -> eval through the CLI verbs on the synthetic world with the tiny LLaVA, and configs."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from training_helpers import synthetic_root, tiny_cache_config  # noqa: F401

from part_point_ros.cli.main import main
from part_point_ros.data import load_dataset
from part_point_ros.heads import HeadConfig
from part_point_ros.training.config import TrainConfig, load_config
from part_point_ros.training.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "config" / "train_synthetic_tiny.yaml"
TABLETOP_YAML = ROOT / "config" / "train_synthetic_tabletop.yaml"


def test_full_pipeline_through_the_cli(tiny_llava_dir, synthetic_root, tmp_path, capsys):  # noqa: F811
    overrides = [
        f"backbone={tiny_llava_dir}",
        f"train_data.args.root={synthetic_root}",
        f"eval_data.args.root={synthetic_root}",
        f"cache_dir={tmp_path / 'cache'}",
        f"out_dir={tmp_path / 'run'}",
        "epochs=2",
        "progress=false",
    ]
    assert main(["cache", "--config", str(TINY_YAML), "--no-progress", *overrides]) == 0
    assert (tmp_path / "cache" / "train" / "index.json").is_file()
    assert (tmp_path / "cache" / "eval" / "index.json").is_file()
    assert main(["train", "--config", str(TINY_YAML), *overrides]) == 0
    assert (tmp_path / "run" / "head" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "epoch 2: loss" in out
    assert main(["eval", "--config", str(TINY_YAML), "--method", "a2p,attention", "--json", *overrides]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_test = len(load_dataset("synthetic", root=str(synthetic_root), split="test"))
    live = report["summary"]["a2p"]["datasets"]["synthetic"]
    assert live["overall"]["n"] == n_test and 0.0 <= live["overall"]["accuracy"] <= 1.0
    assert set(live["by"]) >= {"category", "part", "query_kind"}
    assert report["summary"]["attention"]["overall"]["n"] == n_test
    # a2p from the eval cache gives the same points as the live PartPointer (fp16 features: ~1 px)
    cached_dir = tmp_path / "from_cache"
    assert (
        main(
            [
                "eval",
                "--config",
                str(TINY_YAML),
                "--method",
                "a2p",
                "--from-cache",
                "--out",
                str(cached_dir),
                *overrides,
            ]
        )
        == 0
    )
    lines = (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()
    live_points = {(p := json.loads(x))["sample_id"]: p for x in lines if '"method": "a2p"' in x}
    cached_points = [json.loads(x) for x in (cached_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(cached_points) == len(live_points) == n_test
    distances = [
        max(abs(c["x"] - live_points[c["sample_id"]]["x"]), abs(c["y"] - live_points[c["sample_id"]]["y"]))
        for c in cached_points
    ]
    close = [d < 2.0 for d in distances]
    assert sum(close) >= n_test - 1
    assert (cached_dir / "report.md").is_file() and (cached_dir / "accuracy.png").is_file()


def test_tiny_tabletop_head_trains_and_evaluates_through_the_shipped_config(
    synthetic_root,  # noqa: F811
    tmp_path,
    capsys,
):
    """The shipped synthetic-world config on the shipped backbone and heads: cache -> train -> eval
    (CI-sized: two train scenes, 8 epochs). The losses must fall and every held-out query be scored
    by a2p (from the live backbone) and attention; the README table is the full-size run."""
    overrides = [
        f"backbone={ROOT / 'models' / 'tiny-tabletop-llava'}",
        f"heads={ROOT / 'models' / 'tiny-tabletop-heads.json'}",
        f"train_data.args.root={synthetic_root}",
        f"eval_data.args.root={synthetic_root}",
        f"cache_dir={tmp_path / 'cache'}",
        f"out_dir={tmp_path / 'run'}",
        "epochs=8",
        "progress=false",
    ]
    assert (
        main(["cache", "--config", str(TABLETOP_YAML), "--no-progress", "--split", "train", *overrides]) == 0
    )
    assert main(["train", "--config", str(TABLETOP_YAML), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "epoch 8: loss" in printed and ", presence " in printed  # the config trains "not here" too
    epochs = [
        m
        for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "epoch" in m
    ]
    assert [m["epoch"] for m in epochs] == list(range(1, 9))
    # the patch term (the config's softmax CE: ~ln 400 = 6.0 untrained, its floor the entropy of the
    # target shares, not 0): 5.61 -> 4.25 measured; a head that does not learn stays at ~1.0x
    assert epochs[-1]["epoch/bce"] < 0.85 * epochs[0]["epoch/bce"]
    assert epochs[-1]["epoch/point"] < epochs[0]["epoch/point"]
    assert epochs[-1]["epoch/presence"] < epochs[0]["epoch/presence"]  # absent queries of the 3 scenes
    cached = json.loads((tmp_path / "cache" / "train" / "index.json").read_text())
    n_train = len(load_dataset("synthetic", root=str(synthetic_root), split="train", absent=True))
    n_twins = len(load_dataset("synthetic", root=str(synthetic_root), split="train_twins", absent=True))
    assert cached["n_samples"] == n_train + n_twins  # the config's two splits: train, then the twin scenes
    args = ["eval", "--config", str(TABLETOP_YAML), "--method", "a2p,attention", "--json", *overrides]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    n_test = len(load_dataset("synthetic", root=str(synthetic_root), split="test"))
    assert report["a2p"]["overall"]["n"] == report["attention"]["overall"]["n"] == n_test
    assert (tmp_path / "run" / "eval" / "report.md").is_file()


def test_cli_user_mistakes_are_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("part-point: error:") and "no such config file" in err and "\n" not in err
    assert main(["train", "--config", str(TINY_YAML), "epochs=zero"]) == 1
    assert "epochs must be an int >= 1" in capsys.readouterr().err
    assert main(["train", "--config", str(TINY_YAML), f"cache_dir={tmp_path}"]) == 1
    assert "run part-point cache" in capsys.readouterr().err
    assert main(["eval", "--config", str(TINY_YAML), "--method", "magic"]) == 1
    assert "--method 'magic'" in capsys.readouterr().err


def test_cli_train_refuses_a_mismatching_cache(tiny_cache_config, tmp_path, capsys):  # noqa: F811
    overrides = [
        f"backbone={tiny_cache_config.backbone}",
        f"cache_dir={tiny_cache_config.cache_dir}",
        f"out_dir={tmp_path}",
        "heads=[L1H0, L3H3]",
    ]
    assert main(["train", "--config", str(TINY_YAML), *overrides]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "heads are L1H0,L2H1 in the cache but L1H0,L3H3 requested" in err
    assert err.endswith("re-run part-point cache")


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "config" / "train_*7b*.yaml"))))
def test_paper_configs_mirror_the_defaults(path):
    config = load_config(path)
    defaults = TrainConfig()
    for name in ("lr", "weight_decay", "batch_size", "epochs", "betas"):
        assert getattr(config, name) == getattr(defaults, name), name
    head_defaults = HeadConfig.__dataclass_fields__
    for name, value in config.head.items():
        assert value == head_defaults[name].default, name
    assert (
        config.head["sdf_lambda"] == 0.001
        and config.head["sdf_tau"] == 1.5
        and config.head["sdf_gamma"] == 1.0
    )
    assert config.k == 5 and config.train_data.kind in ("paco_lvis", "instructpart")
    if "qwen" in path:
        assert [str(h) for h in config.head_refs()] == ["L16H1", "L18H15", "L19H23", "L16H7", "L19H17"]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys \\['epoch'\\]"):
        load_config(TINY_YAML, ["epoch=3"])
    with pytest.raises(ConfigError, match="amp='fp8' is not one of"):
        load_config(TINY_YAML, ["amp=fp8"])
    with pytest.raises(ConfigError, match="head.heads is set from the cache"):
        load_config(TINY_YAML, ["head.heads=[[1, 0]]"])
    with pytest.raises(ConfigError, match="heads lists 2 heads but k=5"):
        load_config(TINY_YAML, ["k=5"]).head_refs()
