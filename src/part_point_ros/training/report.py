"""Evaluation report: Markdown + JSON + predictions.jsonl + a bar plot (matplotlib, if installed).

The paper's accuracy (``paper_numbers``) is printed beside ours when the backbone and the dataset
are ones the paper evaluated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from part_point_ros.training.metrics import PredictionRecord
from part_point_ros.training.paper_numbers import paper_accuracy


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


def markdown_report(summary: dict[str, Any], *, backbone_name: str, plot: str | None, note: str = "") -> str:
    lines = [f"# Evaluation: {backbone_name or 'backbone ?'}", ""]
    lines += [
        "Accuracy: the point lies inside the GT mask. Patch Accuracy: the model-grid patch containing the",
        "point overlaps the GT mask (see docs/evaluation.md). Paper: seed 000 §4 (method.md §5).",
        "",
        "| method | dataset | n | accuracy | paper accuracy | patch accuracy | found rate | latency ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, result in summary.items():
        for dataset, block in result["datasets"].items():
            s = block["overall"]
            paper = paper_accuracy(backbone_name, dataset, method)
            lines.append(
                f"| {method} | {dataset} | {s['n']} | {_fmt(s['accuracy'])} | {_fmt(paper)} | "
                f"{_fmt(s['patch_accuracy'])} | {_fmt(s['found_rate'])} | {_fmt(s['latency_ms_mean'])} |"
            )
    for method, result in summary.items():
        for dataset, block in result["datasets"].items():
            for key, groups in block["by"].items():
                lines += [
                    "",
                    f"## {method} / {dataset} by {key}",
                    "",
                    "| value | n | accuracy | patch accuracy |",
                ]
                lines.append("| --- | --- | --- | --- |")
                for value, s in groups.items():
                    lines.append(
                        f"| {value} | {s['n']} | {_fmt(s['accuracy'])} | {_fmt(s['patch_accuracy'])} |"
                    )
    if plot:
        lines += ["", f"![accuracy]({plot})"]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict[str, Any], path: Path, *, backbone_name: str) -> bool:
    """Bar plot of accuracy and patch accuracy per method and dataset; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, acc, patch, paper = [], [], [], []
    for method, result in summary.items():
        for dataset, block in result["datasets"].items():
            labels.append(f"{method}\n{dataset}")
            acc.append(block["overall"]["accuracy"])
            patch.append(block["overall"]["patch_accuracy"])
            p = paper_accuracy(backbone_name, dataset, method)
            paper.append(p if p is not None else float("nan"))
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(labels)), 3.2))
    width = 0.27
    ax.bar([x - width for x in xs], acc, width, label="accuracy")
    ax.bar(list(xs), patch, width, label="patch accuracy")
    ax.bar([x + width for x in xs], paper, width, label="paper accuracy")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(backbone_name or "evaluation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(
    summary: dict[str, Any], records: Sequence[PredictionRecord], out_dir: str | Path, *, backbone_name: str
) -> dict[str, Path]:
    """Write report.md, report.json, predictions.jsonl and accuracy.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "predictions": out / "predictions.jsonl",
    }
    plot_path = out / "accuracy.png"
    plotted = plot_accuracy(summary, plot_path, backbone_name=backbone_name)
    note = "" if plotted else "(no plot: install matplotlib to get accuracy.png)"
    if plotted:
        files["plot"] = plot_path
    paper = {
        method: {ds: paper_accuracy(backbone_name, ds, method) for ds in result["datasets"]}
        for method, result in summary.items()
    }
    payload = {"backbone": backbone_name, "summary": summary, "paper_accuracy": paper}
    files["json"].write_text(json.dumps(_safe(payload), indent=2, sort_keys=True) + "\n")
    files["markdown"].write_text(
        markdown_report(
            summary, backbone_name=backbone_name, plot=plot_path.name if plotted else None, note=note
        )
    )
    with files["predictions"].open("w") as fh:
        for record in records:
            fh.write(json.dumps(_safe(record.to_dict()), sort_keys=True) + "\n")
    return files
