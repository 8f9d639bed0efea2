"""The shipped synthetic-world A2P head (models/tiny-tabletop-a2p) through the user's API: small fp16,
loads on the backbone its config names, and points better than attention pointing on held-out scenes
(test seeds, never used for training, head selection or tuning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from part_point_ros.data import load_dataset
from part_point_ros.grounding import PartPointer
from part_point_ros.grounding.attention_pointing import cells_on_image
from part_point_ros.heads import PartPointHead
from part_point_ros.training.metrics import patch_hit

MODELS = Path(__file__).resolve().parents[1] / "models"
HEAD_DIR = MODELS / "tiny-tabletop-a2p"
BACKBONE_DIR = MODELS / "tiny-tabletop-llava"
HELD_OUT_SEEDS = list(range(200_000, 200_006))
PATCH_FACTOR, A2P_MIN, OVER_ATTENTION = 20.0, 0.55, 0.05  # under the measured levels (below)
PRESENCE_AUROC_MIN, ABSENT_REJECT_MIN, PRESENT_FOUND_MIN = 0.88, 0.75, 0.75  # under the measured levels


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from part_point_ros.sim.generate import generate_dataset

    root = tmp_path_factory.mktemp("held_out")
    generate_dataset(root, HELD_OUT_SEEDS, "test")
    return load_dataset("synthetic", root=str(root), split="test")


def test_shipped_head_is_small_fp16_and_names_its_backbone():
    with safe_open(str(HEAD_DIR / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert sum(p.stat().st_size for p in HEAD_DIR.iterdir()) < 4 * 2**20
    head = PartPointHead.from_pretrained(HEAD_DIR)
    assert head.config.backbone["name"] == "models/tiny-tabletop-llava" and head.config.k == 5


def test_shipped_head_points_at_the_asked_region_above_chance_on_held_out_scenes(held_out):
    """Through the user's PartPointer: the patch the a2p point falls in overlaps the asked part more
    often than a uniformly random patch would (the head localises *something*; the README table has
    its held-out numbers), and hits the part more often than attention pointing on the same backbone."""
    a2p = PartPointer.from_pretrained(backbone=str(BACKBONE_DIR), head=str(HEAD_DIR), method="a2p")
    hits, point_hits, attention_hits, chance = [], [], [], []
    attention = PartPointer.from_pretrained(backbone=str(BACKBONE_DIR), method="attention",
                                            heads=str(MODELS / "tiny-tabletop-heads.json"))  # fmt: skip
    for sample in held_out.samples:
        image, mask = sample.load_image(), sample.load_mask()
        result = a2p.point(image, sample.query)
        assert result.method == "a2p" and 0 <= result.x < image.shape[1] and 0 <= result.y < image.shape[0]
        hits.append(patch_hit(mask, result.grid, result.x, result.y))
        point_hits.append(bool(mask[int(round(result.y)), int(round(result.x))]))
        base = attention.point(image, sample.query)
        attention_hits.append(bool(mask[int(round(base.y)), int(round(base.x))]))
        on_image = cells_on_image(result.grid)
        chance.append(float((result.grid.resample_mask(mask)[on_image] > 0).mean()))
    measured = (np.mean(hits), np.mean(chance), np.mean(point_hits), np.mean(attention_hits), len(hits))
    print("patch hits {:.3f}, random patch {:.3f}, a2p {:.3f}, attention {:.3f}, n {}".format(*measured))
    assert len(hits) >= 80
    # measured on these seeds (122 queries): patch hits 0.795 vs 0.033 for a random patch; point hits
    # a2p 0.631 vs attention 0.549 (binomial sd ~0.045; the backbone6 models, shipped 2026-12-02, tenth
    # session); the backbone5 models: 0.836, 0.639 vs 0.525 (shipped 2026-12-01,
    # eighth session, whose attention pointing learnt the query phrasings: docs/tiny_tabletop.md);
    # the step-11,000 models: 0.664, 0.566 vs 0.262; the step-6,800 models: 0.598, 0.410 vs 0.246;
    # the step-3,400 ones: 0.393, 0.311 vs 0.164; the 2026-11-30 models: 0.230, 0.172 vs 0.107
    assert np.mean(hits) >= PATCH_FACTOR * np.mean(chance), measured
    assert np.mean(point_hits) >= A2P_MIN, measured
    assert np.mean(point_hits) >= np.mean(attention_hits) + OVER_ATTENTION, measured


def test_shipped_head_says_not_here_to_absent_queries(tmp_path_factory):
    """The head's presence output ("not here"): on the held-out scenes its score ranks present parts
    above questions about absent objects and parts, and its own threshold says found: false to a
    good share of the absent ones while finding most present parts."""
    from part_point_ros.sim.generate import generate_dataset
    from part_point_ros.training.batching import is_present
    from part_point_ros.training.calibration import auroc

    root = tmp_path_factory.mktemp("held_out_absent")
    generate_dataset(root, HELD_OUT_SEEDS, "test")
    samples = load_dataset("synthetic", root=str(root), split="test", absent=True).samples
    a2p = PartPointer.from_pretrained(backbone=str(BACKBONE_DIR), head=str(HEAD_DIR), method="a2p")
    assert a2p.pointing.head.config.presence and a2p.threshold > 0.0
    present, absent = [], []
    for sample in samples:
        result = a2p.point(sample.load_image(), sample.query)
        (present if is_present(sample.meta) else absent).append((result.score, result.found))
    area = auroc([s for s, _ in present], [s for s, _ in absent])
    rejected = 1.0 - float(np.mean([f for _, f in absent]))
    found = float(np.mean([f for _, f in present]))
    print(f"AUROC {area:.3f}, absent found: false {rejected:.3f}, present found {found:.3f}, "
          f"n {len(present)} + {len(absent)}")  # fmt: skip
    assert len(absent) >= 30
    # measured on these seeds (122 present + 46 absent queries): AUROC 0.981, found: false on 1.000 of
    # the absent ones, found on 0.844 of the present ones (the backbone6 head, its threshold 0.8309;
    # the backbone5 head: 0.960, 0.913, 0.836 at 0.753; the
    # step-11,000 head: 0.848, 0.630, 0.861; the step-6,800 head: 0.872, 0.587, 0.934;
    # a head without a presence output: the softmax_near score, AUROC 0.568 on the 40 test seeds,
    # docs/evaluation.md)
    assert area >= PRESENCE_AUROC_MIN and rejected >= ABSENT_REJECT_MIN and found >= PRESENT_FOUND_MIN, (
        area,
        rejected,
        found,
    )


TWIN_TEST_SEEDS = list(range(1_200_000, 1_200_008))  # held-out twin scenes (two or three of a type)
INSTANCE_RECALL_MIN, ALL_INSTANCES_MIN = 0.50, 0.27  # under the measured levels (below)


def test_shipped_head_points_at_every_instance_of_an_ambiguous_or_plural_query():
    """Twin scenes ("the handles of the mugs" with two mugs): the instances that some returned point
    (``PointResult.points``) lands in, at threshold 0, and the share of queries with every instance
    found. A head trained on one point per query (no twin scenes) finds the second instance seldom."""
    from part_point_ros.training.calibration import pointer_factory, run_calibration

    report = run_calibration(pointer_factory(), [], twin_seeds=TWIN_TEST_SEEDS, thresholds=[0.0])
    summary = report["methods"]["a2p"]
    row = summary["table"][0]
    measured = (row["instance_recall"], row["instance_precision"], row["instances_complete"])
    print("instance recall {:.3f}, precision {:.3f}, all instances {:.3f}".format(*measured),
          summary["counts"])  # fmt: skip
    assert summary["counts"]["instances"] >= 40
    # measured on these seeds at threshold 0 (62 queries about 138 instances; binomial sd ~0.04):
    # the shipped backbone6 head (trained with the 200 twin scenes): recall 0.601, precision 0.648, all
    # instances 0.371 (one point per heatmap region, the default since the tenth session; every NMS
    # peak: 0.623, 0.601, 0.371); the backbone5 head trained with them (tenth session, every NMS
    # peak): recall 0.558, precision 0.579, all instances 0.323; the backbone5 head shipped in the
    # eighth session, trained without them: 0.464, 0.571, 0.226 (fails this test)
    assert row["instance_recall"] >= INSTANCE_RECALL_MIN and row["instances_complete"] >= ALL_INSTANCES_MIN, (
        measured
    )
