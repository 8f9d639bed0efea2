"""Training of the tiny-tabletop backbone (part_point_ros.tabletop, ``part-point backbone``): dense
targets on the processor's own grid, packing that computes every question exactly as its own prompt,
object-level pointing in Molmo's format, weights carried over by word, and the stages run, resume
and ship through the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from part_point_ros.sim.catalog import OBJECT_TYPES
from part_point_ros.sim.vqa import SceneFacts, make_questions, pointing_items, vocabulary
from part_point_ros.tabletop.model import MODEL_CONFIG, build_initial, resample_positions
from part_point_ros.tabletop.targets import GROUPS, PAIR_INDEX, dense_targets

SMALL = {**MODEL_CONFIG, "image_size": 32, "init_std": 0.2}  # 4x4 tokens: fast, same classes


@pytest.fixture(scope="module")
def scene():
    from part_point_ros.sim import render_scene

    return render_scene(200_000, width=320, height=240)


def test_dense_targets_are_the_part_shares_of_the_processors_token_grid(scene, tmp_path):
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.backbones.tiny import build_tiny_llava

    adapter = load_backbone(str(build_tiny_llava(tmp_path / "m", vocab_words=["mug"], **MODEL_CONFIG)))
    _, grid = adapter.prepare(scene.rgb, adapter.build_prompt("mug"))
    facts = SceneFacts.from_scene(scene)
    targets = dense_targets(scene.part_ids, facts, grid.rows)
    assert targets["pair"].shape == (400, 4, GROUPS["pair"]) and targets["colour"].shape == (400, 13)
    for group in targets.values():
        assert np.allclose(group.sum(-1), 1.0, atol=1e-5)
    per_token = targets["pair"].mean(1)  # (P, C)
    assert (per_token[:40, -1] == 1.0).all()  # rows 0-1: wholly padding (40 px of 320), "none"
    for part in scene.parts:
        if part.pixel_count:
            expected = grid.resample_mask(scene.part_ids == part.part_id).reshape(-1)
            mine = per_token[:, PAIR_INDEX[(part.object_type, part.part)]]
            same_type = sum(p.pixel_count > 0 for p in scene.parts if p.object_type == part.object_type
                            and p.part == part.part)  # fmt: skip
            if same_type == 1:  # the grid's warp interpolates one pixel at mask edges
                assert np.abs(mine - expected).max() < 0.1 and np.abs(mine - expected).mean() < 0.005, part


def test_mirrored_targets_are_the_targets_of_the_mirrored_frame(scene, tmp_path):
    """The vision stage's --flip: mirroring a batch's targets gives exactly the targets of the
    mirrored frame, and flipping its pixel tensor gives the processor's tensor of the mirrored frame."""
    from transformers import AutoProcessor

    from part_point_ros.backbones.tiny import build_tiny_llava
    from part_point_ros.tabletop.model import pixel_tensor
    from part_point_ros.tabletop.targets import mirror, stacked_targets

    facts = SceneFacts.from_scene(scene)
    ids = np.stack([scene.part_ids, scene.part_ids])
    mirrored = mirror(stacked_targets(ids, [facts, facts], 20), 20, np.array([True, False]))
    direct = stacked_targets(ids[:, :, ::-1].copy(), [facts, facts], 20)
    as_torch = mirror(
        {k: torch.as_tensor(v) for k, v in stacked_targets(ids, [facts, facts], 20).items()},
        20,
        np.array([True, False]),
    )
    for name in GROUPS:
        assert np.array_equal(mirrored[name][0], direct[name][0]), name
        assert np.array_equal(as_torch[name].numpy(), mirrored[name]), name
        assert np.array_equal(mirrored[name][1], stacked_targets(ids[:1], [facts], 20)[name][0]), name  # kept
        assert not np.array_equal(mirrored[name][0], mirrored[name][1]), name
    processor = AutoProcessor.from_pretrained(
        build_tiny_llava(tmp_path / "m", vocab_words=["mug"], **MODEL_CONFIG)
    )
    pixels = pixel_tensor(processor, np.stack([scene.rgb, scene.rgb[:, ::-1].copy()])).float()
    assert (pixels[0].flip(-1) - pixels[1]).abs().max() < 0.02


def test_packed_questions_compute_exactly_their_single_prompts(scene, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava
    from part_point_ros.tabletop.language import Packer, check_packing, forward_logits, pack

    path = build_tiny_llava(tmp_path / "m", vocab_words=vocabulary(), **SMALL)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    packer = Packer(processor)
    prefix = packer.prefix(model.config.image_seq_length)
    check_packing(processor, packer, prefix, (320, 240))
    facts = SceneFacts.from_scene(scene)
    items = (make_questions(facts)[:3] + pointing_items(facts)[:1], make_questions(facts)[3:5])
    batch = pack(packer, prefix, list(items))
    pixels = processor.image_processor(images=[scene.rgb, scene.rgb[:, ::-1].copy()], return_tensors="pt")
    with torch.no_grad():
        logits = forward_logits(model, pixels["pixel_values"], batch)
    firsts = torch.nonzero(batch["targets"][:, 4]).flatten().tolist()
    flat = [(0, q) for q in items[0]] + [(1, q) for q in items[1]]
    assert len(firsts) == len(flat) == 6
    for (row, q), at in zip(flat, firsts, strict=True):
        image = scene.rgb if row == 0 else scene.rgb[:, ::-1].copy()
        alone = processor(
            images=[image], text=[f"USER: <image>\n{q.question} ASSISTANT:"], return_tensors="pt"
        )
        with torch.no_grad():
            expected = model(**alone).logits[0, -1]
        assert torch.allclose(logits[at], expected, atol=1e-4), q.question
        answer = packer.answer(q.answer)
        assert batch["targets"][at : at + len(answer) + 1, 2].tolist() == [*answer, packer.eos]


def test_pointing_items_name_objects_only_and_parse_as_molmo_points(scene):
    from part_point_ros.grounding.text_pointing import parse_molmo
    from part_point_ros.sim import render_scene
    from part_point_ros.sim.vqa import POINT_PROMPTS

    facts = SceneFacts.from_scene(scene)
    items = pointing_items(facts)
    parts = {p for spec in OBJECT_TYPES.values() for p in spec.parts}
    assert items and {q.kind for q in items} == {"point_object"}
    asked = [q.question for s in range(6) for q in pointing_items(SceneFacts.from_scene(render_scene(s)))]
    for template in POINT_PROMPTS:  # every form is asked; none names a part
        pattern = re.escape(template).replace(r"\{obj\}", r"the (\w+ )?\w+")
        assert any(re.fullmatch(pattern, q) for q in asked), template
        assert not set(re.findall(r"\w+", template)) & parts
    known = set(vocabulary())  # the word-level tokenizer knows every word asked
    assert all(w in known for q in asked for w in re.findall(r"\w+|[^\w\s]+", q))
    for q in items:
        words = set(re.findall(r"\w+", q.question))
        assert not words & parts, q.question
        assert q.object_type in words
        spaced = " ".join(re.findall(r"\w+|[^\w\s]+", q.answer))  # how the word-level tokenizer decodes
        parsed = parse_molmo(spaced)
        assert parsed.parsed_ok, spaced
        (x, y) = parsed.point
        u, v = x / 100 * facts.width, y / 100 * facts.height
        obj = next(o for o in facts.objects if o.part_ids == q.part_ids)
        assert abs(u - obj.point_u) <= 0.01 * facts.width and abs(v - obj.point_v) <= 0.01 * facts.height
        assert np.isin(scene.part_ids[int(v), int(u)], q.part_ids)  # the point lands on the object


def test_init_from_carries_weights_and_token_rows_by_word(tmp_path):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    old_dir = build_tiny_llava(tmp_path / "old", seed=5, vocab_words=["what", "colour", "mug"], **SMALL)
    new_dir = build_initial(tmp_path / "new", 0, vocabulary(), init_from=str(old_dir))
    old = LlavaForConditionalGeneration.from_pretrained(old_dir).state_dict()
    new = LlavaForConditionalGeneration.from_pretrained(new_dir).state_dict()
    fresh = LlavaForConditionalGeneration.from_pretrained(build_initial(tmp_path / "fresh", 0, vocabulary(),
                                                                        image_size=32))  # fmt: skip
    old_vocab = AutoTokenizer.from_pretrained(old_dir).get_vocab()
    new_vocab = AutoTokenizer.from_pretrained(new_dir).get_vocab()
    embed = "model.language_model.embed_tokens.weight"
    for word in ("mug", "<image>", "</s>"):
        assert torch.equal(new[embed][new_vocab[word]], old[embed][old_vocab[word]]), word
    assert "grab" not in old_vocab
    assert torch.equal(new[embed][new_vocab["grab"]], fresh.state_dict()[embed][new_vocab["grab"]])
    for name, tensor in new.items():
        if name not in (embed, "lm_head.weight"):
            assert torch.equal(tensor, old[name]), name


def test_tower_from_takes_the_tower_of_one_model_and_the_rest_of_another(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from part_point_ros.backbones.tiny import build_tiny_llava

    words = ["what", "colour", "mug"]
    lm_dir = build_tiny_llava(tmp_path / "lm", seed=5, vocab_words=words, **SMALL)
    tower_dir = build_tiny_llava(tmp_path / "tower", seed=6, vocab_words=words, **SMALL)
    new_dir = build_initial(
        tmp_path / "new", 0, vocabulary(), init_from=str(lm_dir), tower_from=str(tower_dir)
    )
    new = LlavaForConditionalGeneration.from_pretrained(new_dir).state_dict()
    lm = LlavaForConditionalGeneration.from_pretrained(lm_dir).state_dict()
    tower = LlavaForConditionalGeneration.from_pretrained(tower_dir).state_dict()
    tower_names = [n for n in new if n.startswith("model.vision_tower.")]
    assert any(not torch.equal(tower[n], lm[n]) for n in tower_names)  # the seeds differ
    for name in tower_names:
        assert torch.equal(new[name], tower[name]), name
    for name in (
        "model.multi_modal_projector.linear_1.weight",
        "model.language_model.layers.0.self_attn.k_proj.weight",
    ):
        assert torch.equal(new[name], lm[name]), name
    other = build_tiny_llava(tmp_path / "other", seed=6, vocab_words=words, **{**SMALL, "image_size": 64})
    with pytest.raises(ValueError, match="--tower-from"):
        build_initial(tmp_path / "bad", 0, vocabulary(), init_from=str(lm_dir), tower_from=str(other))
    with pytest.raises(ValueError, match="give --init-from"):
        build_initial(tmp_path / "alone", 0, vocabulary(), tower_from=str(tower_dir))


def test_resample_positions_keeps_the_class_row_and_rejects_non_grids():
    table = torch.randn(1 + 14 * 14, 8)
    out = resample_positions(table, 1 + 20 * 20)
    assert out.shape == (401, 8) and torch.equal(out[0], table[0])
    with pytest.raises(ValueError, match="not 1 \\+ square grids"):
        resample_positions(torch.zeros(1 + 12, 4), 1 + 16)


@pytest.mark.slow
def test_stages_run_resume_and_ship_through_the_cli(tmp_path):
    """scenes -> vision -> language -> ship -> a model that loads through the registry and says it
    points in Molmo's format; rerunning a stage with a longer schedule resumes it."""
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.backbones.tiny import build_tiny_llava
    from part_point_ros.cli.main import main

    cache = str(tmp_path / "scenes")
    assert main(["backbone", "scenes", "--cache", cache, "--train", "4", "--val", "2", "--test", "2",
                 "--jobs", "1"]) == 0  # fmt: skip
    start = build_tiny_llava(tmp_path / "start", vocab_words=["mug"], **SMALL)
    common = [
        "--cache",
        cache,
        "--train",
        "4",
        "--val",
        "2",
        "--batch",
        "2",
        "--threads",
        "1",
        "--eval-every",
        "2",
    ]
    vision = tmp_path / "vision"
    assert (
        main(["backbone", "vision", "--run", str(vision), "--init-from", str(start), "--steps", "2", *common])
        == 0
    )
    assert (
        main(
            [
                "backbone",
                "vision",
                "--run",
                str(vision),
                "--init-from",
                str(start),
                "--steps",
                "3",
                "--flip",
                *common,
            ]
        )  # fmt: skip
        == 0
    )
    steps = [json.loads(line)["step"] for line in (vision / "history.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # the second command went on from step 2
    again = ["backbone", "vision", "--run", str(vision), "--steps", "10", "--time-limit", "0.001", *common]
    assert main(again) == 0
    steps = [json.loads(line)["step"] for line in (vision / "history.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4]  # out of time after one step: evaluated and checkpointed there
    language = tmp_path / "language"
    args = [
        "backbone",
        "language",
        "--run",
        str(language),
        "--init-from",
        str(vision / "vision"),
        "--steps",
        "2",
    ]
    assert main([*args, *common]) == 0
    out = tmp_path / "shipped"
    assert main(["backbone", "ship", "--run", str(language), "--out", str(out)]) == 0
    adapter = load_backbone(str(out))
    assert adapter.pointing_format == "molmo"
    from transformers import LlavaForConditionalGeneration

    def tower(path):
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        return dict(model.model.vision_tower.named_parameters())

    shipped, trained, untrained = tower(out), tower(vision / "vision"), tower(start)
    assert all(torch.allclose(shipped[k], trained[k], atol=1e-3) for k in trained)  # frozen (fp16 on disk)
    assert not all(torch.equal(untrained[k], trained[k]) for k in trained)  # the vision stage trained it
    # the language stage grows the vocabulary of a model that lacks words of the prompts it trains on
    from transformers import AutoTokenizer

    small = build_tiny_llava(tmp_path / "small", vocab_words=["mug"], **SMALL)
    assert "provide" not in AutoTokenizer.from_pretrained(small).get_vocab()
    grown = tmp_path / "grown"
    assert (
        main(
            ["backbone", "language", "--run", str(grown), "--init-from", str(small), "--steps", "1", *common]
        )
        == 0
    )
    vocab = AutoTokenizer.from_pretrained(grown / "init").get_vocab()
    assert set(vocabulary()) <= set(vocab)
    old = AutoTokenizer.from_pretrained(small).get_vocab()["mug"]
    embed = "model.language_model.embed_tokens.weight"
    rows = {
        p: LlavaForConditionalGeneration.from_pretrained(p).state_dict()[embed]
        for p in (small, grown / "init")
    }
    assert torch.equal(rows[small][old], rows[grown / "init"][vocab["mug"]])  # carried over by word
