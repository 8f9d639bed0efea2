"""Only the head trains: one step on a FROZEN tiny backbone (live capture, not the cache)."""

from __future__ import annotations

import numpy as np
import torch
from training_helpers import TINY_HEAD, TINY_HEADS

from part_point_ros.backbones import load_backbone
from part_point_ros.heads import HeadConfig, PartPointHead
from part_point_ros.heads.losses import head_loss
from part_point_ros.training.batching import FeatureItem, collate
from part_point_ros.training.targets import mask_targets
from part_point_ros.types import HeadRef


def test_one_step_changes_the_head_and_leaves_the_backbone_bit_identical(tiny_llava_dir):
    from dataclasses import asdict

    backbone = load_backbone(str(tiny_llava_dir))
    before = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
    heads = [HeadRef.parse(h) for h in TINY_HEADS]
    config = HeadConfig(
        backbone=asdict(backbone.info), heads=[(h.layer, h.head) for h in heads],
        d_head=backbone.info.head_dim, **TINY_HEAD,
    )  # fmt: skip
    head = PartPointHead(config).train()
    head_before = {k: v.detach().clone() for k, v in head.state_dict().items()}
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    items = []
    for i, query in enumerate(["the handle of the mug", "the blade of the knife"]):
        image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        mask = np.zeros((40, 60), dtype=bool)
        mask[10:25, 20 + 10 * i : 40 + 10 * i] = True
        capture = backbone.capture(image, query, heads, truncate=True)
        targets = mask_targets(mask, capture.grid, config.upscale)
        items.append(
            FeatureItem(
                sample_id=str(i),
                queries=capture.queries,
                keys=capture.image_keys,
                values=capture.image_values,
                grid=capture.grid,
                patch_target=torch.from_numpy(targets.patch),
                heatmap_mask=targets.heatmap_mask,
            )  # fmt: skip
        )
    batch = collate(items, config)
    out = head(batch.queries, batch.query_mask, batch.keys, batch.values, batch.grid_shape)
    loss = head_loss(
        out, patch_targets=batch.patch_targets, heatmap_targets=batch.heatmap_targets, config=config
    )
    optimizer.zero_grad()
    loss["total"].backward()
    optimizer.step()

    changed = [k for k, v in head.state_dict().items() if not torch.equal(v, head_before[k])]
    assert len(changed) > 0.5 * len(head_before)
    for name, param in backbone.model.named_parameters():
        assert not param.requires_grad, name
        assert param.grad is None, name
    after = backbone.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not backbone.model.training  # kept in eval mode
