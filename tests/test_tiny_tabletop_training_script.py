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


def test_init_from_at_a_larger_image_size_resamples_the_position_grid(script, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    old_dir = build_tiny_llava(tmp_path / "old", seed=5, vocab_words=["mug"], **script.MODEL_CONFIG)
    new_dir = script.build_initial(tmp_path / "new", seed=0, init_from=str(old_dir), image_size=160)
    old = LlavaForConditionalGeneration.from_pretrained(old_dir).state_dict()
    model = LlavaForConditionalGeneration.from_pretrained(new_dir)
    new = model.state_dict()
    pos = "model.vision_tower.embeddings.position_embedding.weight"
    assert old[pos].shape[0] == 1 + 14 * 14 and new[pos].shape[0] == 1 + 20 * 20
    assert torch.equal(new[pos][0], old[pos][0])  # the class token's row is kept
    # the grid is resampled, not re-initialised: corners stay near the old corners
    old_grid, new_grid = old[pos][1:].reshape(14, 14, -1), new[pos][1:].reshape(20, 20, -1)
    for (oi, oj), (ni, nj) in (((0, 0), (0, 0)), ((13, 13), (19, 19)), ((0, 13), (0, 19))):
        near = torch.nn.functional.cosine_similarity(new_grid[ni, nj], old_grid[oi, oj], dim=0)
        far = torch.nn.functional.cosine_similarity(new_grid[ni, nj], old_grid[13 - oi, 13 - oj], dim=0)
        assert near > 0.5 and near > far
    # and the model runs on the 20 x 20 grid it now has
    assert model.config.image_seq_length == 400
    processor = AutoProcessor.from_pretrained(new_dir)
    from PIL import Image

    inputs = processor(
        images=[Image.new("RGB", (160, 120))], text=["USER: <image>\nmug ASSISTANT:"], return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[-2:] == (160, 160)
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_resample_positions_rejects_tables_that_are_not_square_grids(script):
    with pytest.raises(SystemExit, match="not 1 \\+ square grids"):
        script.resample_positions(torch.zeros(1 + 12, 4), 1 + 16)


def test_token_probe_reads_the_part_under_image_tokens_of_the_shipped_backbone(script):
    """The evaluation probe runs on the shipped model through the adapter and scores above chance:
    its vision features name the part under a token (measured with 300/100 scenes: 0.44 of part
    tokens; here, 100/20 scenes)."""
    import numpy as np

    from part_point_ros.sim import render_scene
    from part_point_ros.sim.vqa import SceneFacts

    def scenes(seeds):
        rendered = [render_scene(s, width=160, height=120) for s in seeds]
        rgb = np.stack([s.rgb for s in rendered])
        return rgb, np.stack([s.part_ids for s in rendered]), [SceneFacts.from_scene(s) for s in rendered]

    report = script.token_probe(
        str(ROOT / "models" / "tiny-tabletop-llava"),
        scenes(range(100)),
        scenes(range(200_000, 200_020)),
        steps=150,
    )
    vision, keys = report["vision tower"], report["keys, last two layers"]
    assert report["train_tokens"] > 100 * 200 and vision["pairs_scored"] >= 3
    assert 0.0 <= keys["accuracy_on_part_tokens"] <= 1.0
    assert vision["accuracy_on_part_tokens"] > 3 * vision["chance_mean_recall"], report


def test_init_from_keeps_the_image_size_of_the_model_it_goes_on_from(script, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    old_dir = build_tiny_llava(
        tmp_path / "old", seed=5, vocab_words=["mug"], **{**script.MODEL_CONFIG, "image_size": 160}
    )
    new_dir = script.build_initial(tmp_path / "new", seed=0, init_from=str(old_dir))  # no image_size given
    old = LlavaForConditionalGeneration.from_pretrained(old_dir).state_dict()
    new = LlavaForConditionalGeneration.from_pretrained(new_dir).state_dict()
    pos = "model.vision_tower.embeddings.position_embedding.weight"
    assert new[pos].shape[0] == 1 + 20 * 20 and torch.equal(new[pos], old[pos])
