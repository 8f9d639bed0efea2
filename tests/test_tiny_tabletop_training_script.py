"""scripts/train_tiny_tabletop.py: going on from a trained model with a grown vocabulary carries
every weight over (token rows by word), and the vision stage's labels say what, never where."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "train_tiny_tabletop", ROOT / "scripts" / "train_tiny_tabletop.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_from_carries_weights_and_token_rows_by_word(script, tmp_path):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    # an "old" model that knows fewer words, with its own random weights
    old_dir = build_tiny_llava(
        tmp_path / "old", seed=5, vocab_words=["what", "colour", "mug", "handle"], **script.MODEL_CONFIG
    )
    new_dir = script.build_initial(tmp_path / "new", seed=0, init_from=str(old_dir))
    old = LlavaForConditionalGeneration.from_pretrained(old_dir).state_dict()
    new = LlavaForConditionalGeneration.from_pretrained(new_dir).state_dict()
    fresh = LlavaForConditionalGeneration.from_pretrained(script.build_initial(tmp_path / "fresh", seed=0))
    old_vocab = AutoTokenizer.from_pretrained(old_dir).get_vocab()
    new_vocab = AutoTokenizer.from_pretrained(new_dir).get_vocab()
    assert len(new_vocab) > len(old_vocab)
    embed = "model.language_model.embed_tokens.weight"
    for word in ("mug", "handle", "<image>", "</s>"):
        assert torch.equal(new[embed][new_vocab[word]], old[embed][old_vocab[word]]), word
        assert torch.equal(new["lm_head.weight"][new_vocab[word]], old["lm_head.weight"][old_vocab[word]])
    grab = new_vocab["grab"]  # unknown to the old model: keeps its fresh row
    assert "grab" not in old_vocab
    assert torch.equal(new[embed][grab], fresh.state_dict()[embed][grab])
    for name, tensor in new.items():
        if name not in (embed, "lm_head.weight"):
            assert torch.equal(tensor, old[name]), name


def test_presence_labels_name_pairs_and_colours_of_visible_parts_only(script):
    from part_point_ros.sim.catalog import PALETTE, object_part_pairs
    from part_point_ros.sim.vqa import ObjectFact, PartFact, SceneFacts

    parts = (
        PartFact(1, 1, "mug", "body", "red", 500, 10.0),
        PartFact(2, 1, "mug", "handle", "blue", 3, 12.0),  # below 0.2 % of 160x120: not visible
    )
    facts = SceneFacts(0, 160, 120, (ObjectFact(1, "mug", "red", (1, 2)),), parts)
    labels = script.presence_labels([facts])[0]
    pairs = object_part_pairs()
    n = len(pairs)
    on = set(torch.nonzero(labels).flatten().tolist())
    body = pairs.index(("mug", "body"))
    assert labels.shape == (n * (1 + len(PALETTE)),)
    assert on == {body, n + body * len(PALETTE) + list(PALETTE).index("red")}
