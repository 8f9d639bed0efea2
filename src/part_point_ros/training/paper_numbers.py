"""The paper's reported numbers (method.md §4-5, seed 000), to print beside ours when they match.

Accuracy = hit-or-miss (point inside the GT mask). Keys: normalised backbone name, dataset kind
(as in ``Sample.meta["dataset"]``), method.
"""

from __future__ import annotations

PAPER_ACCURACY: dict[str, dict[str, dict[str, float]]] = {
    "molmo-7b": {
        "paco_lvis": {"text": 0.487, "attention": 0.428, "a2p": 0.510},
        "instructpart": {"text": 0.710, "attention": 0.378, "a2p": 0.868},
    },
    "qwen2.5-vl-7b": {
        "paco_lvis": {"text": 0.407, "attention": 0.309, "a2p": 0.479},
        "instructpart": {"text": 0.708, "attention": 0.283, "a2p": 0.818},
    },
    "llava-1.5-7b": {
        "paco_lvis": {"text": 0.068, "attention": 0.183, "a2p": 0.463},
        "instructpart": {"text": 0.033, "attention": 0.194, "a2p": 0.783},
    },
}

# Ablations on LLaVA-1.5-7B + PACO-LVIS (accuracy), method.md §4.
PAPER_ABLATIONS_LLAVA_PACO: dict[str, float] = {
    "full": 0.463,
    "no image V": 0.453,
    "no A2P": 0.429,
    "no Q-Synth": 0.336,
    "avg-pool query": 0.305,
    "max-pool query": 0.266,
    "EOS query": 0.290,
    "L2 supervision": 0.433,
    "Gaussian supervision": 0.436,
    "symmetric SDF": 0.454,
    "k=1": 0.427,
    "k=3": 0.451,
    "k=5": 0.463,
}

# Latency on one A6000 over 100 samples, ms: text pointing vs A2P (method.md §5).
PAPER_LATENCY_MS: dict[str, dict[str, float]] = {
    "llava-1.5-7b": {"text": 588.22, "a2p": 118.59},
    "qwen2.5-vl-7b": {"text": 1351.19, "a2p": 407.78},
}


def backbone_key(name: str) -> str | None:
    """``"llava-hf/llava-1.5-7b-hf"`` -> ``"llava-1.5-7b"``; None for a backbone the paper did not run."""
    lowered = name.lower().replace("_", ".")
    for key in PAPER_ACCURACY:
        if key in lowered:
            return key
    if "qwen2.5-vl-7b" in lowered.replace("qwen2-5", "qwen2.5"):
        return "qwen2.5-vl-7b"
    return None


def paper_accuracy(backbone_name: str, dataset: str, method: str) -> float | None:
    """The paper's accuracy for this backbone, dataset kind and method, or None."""
    key = backbone_key(backbone_name)
    if key is None:
        return None
    return PAPER_ACCURACY[key].get(dataset, {}).get(method)
