"""Stage ``evaluate``: the model-card numbers of a backbone (docs/tiny_tabletop.md), on test scenes.

- answers: accuracy per question kind (``language.answer_accuracy``), against the blind majority
  answer per kind learnt from the train scenes;
- attention: for part-colour questions, per (layer, head), the last input token's attention on the
  image tokens, its mass on the asked part and on the part's whole object against their share of the
  tokens ("lift"), and whether its argmax token touches the part;
- token probe: how well a linear classifier reads the object:part under an image token from the
  vision tower's output, and from the keys (RoPE applied, as the heads see them) of the layers the
  localization heads sit in: the tensors the A2P head reads. The probe reads masks; the model never does.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from part_point_ros.sim.vqa import make_questions
from part_point_ros.tabletop import scenes
from part_point_ros.tabletop.targets import GROUPS, dense_targets


def blind_majority(train_facts, test_facts) -> dict[str, float]:
    """Accuracy of answering every question of a kind with that kind's most common train answer."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for f in train_facts:
        for q in make_questions(f):
            by_kind[q.kind][q.answer] += 1
    hits = defaultdict(list)
    for f in test_facts:
        for q in make_questions(f):
            hits[q.kind].append(by_kind[q.kind].most_common(1)[0][0] == q.answer)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def attention_localisation(adapter, scene_set, max_questions: int) -> dict:
    """Where the last input token looks when a part-colour question is asked, per (layer, head)."""
    from part_point_ros.types import HeadRef

    info = adapter.info
    heads = [HeadRef(layer, h) for layer in range(info.num_layers) for h in range(info.num_heads)]
    maps, part_cover, object_cover, image_share = [], [], [], []
    for i, f in enumerate(scene_set.facts):
        owner = {p.part_id: p.object_id for p in f.parts}
        own_parts = {o.object_id: o.part_ids for o in f.objects}
        for q in make_questions(f):
            if q.kind != "part_colour" or len(maps) >= max_questions:
                continue
            cap = adapter.capture(scene_set.rgb[i], q.question, heads, truncate=False)
            att = cap.last_token_attention()  # (k, P)
            image_share.append(att.sum(-1).numpy())
            maps.append((att / att.sum(-1, keepdim=True)).numpy())
            ids = scene_set.part_ids[i]
            part_cover.append(cap.grid.resample_mask(np.isin(ids, q.part_ids)).reshape(-1))
            object_cover.append(
                cap.grid.resample_mask(np.isin(ids, own_parts[owner[q.part_ids[0]]])).reshape(-1)
            )
    att_a = np.stack(maps)  # (Q, k, P)
    part_a, obj_a = np.stack(part_cover), np.stack(object_cover)  # (Q, P)
    mass = np.einsum("qkp,qp->qk", att_a, part_a)
    mass_obj = np.einsum("qkp,qp->qk", att_a, obj_a)
    hit = np.take_along_axis(part_a > 0, att_a.argmax(-1), axis=1)  # (Q, k)
    share, share_obj = part_a.mean(-1), obj_a.mean(-1)  # (Q,)
    rows = [
        {
            "head": str(ref),
            "image_attention": float(np.mean(image_share, axis=0)[j]),
            "mass_in_part": float(mass[:, j].mean()),
            "lift_part": float(mass[:, j].mean() / share.mean()),
            "mass_in_object": float(mass_obj[:, j].mean()),
            "lift_object": float(mass_obj[:, j].mean() / share_obj.mean()),
            "argmax_hit": float(hit[:, j].mean()),
        }
        for j, ref in enumerate(heads)
    ]
    return {
        "questions": len(att_a),
        "part_share_of_tokens": float(share.mean()),
        "object_share_of_tokens": float(share_obj.mean()),
        "argmax_hit_chance": float((part_a > 0).mean()),
        "heads": sorted(rows, key=lambda r: -r["lift_part"]),
    }


def token_probe(adapter, layers, train_set, test_set, *, steps: int = 400, min_cover: float = 0.4) -> dict:
    """Linear read-out of the object:part under each image token (27 pairs + "none", tokens that one
    class covers >= ``min_cover`` of), fitted on ``train_set``, scored on ``test_set`` as the mean
    recall over the pairs seen >= 3 times and the accuracy on part tokens. Sources: the vision
    tower's output tokens, and the keys of every head of ``layers``."""
    from part_point_ros.types import HeadRef

    info = adapter.info
    heads = [HeadRef(layer, h) for layer in layers for h in range(info.num_heads)]
    n_classes = GROUPS["pair"]
    keys_name = f"keys of layers {', '.join(map(str, layers))}"

    def features(scene_set):
        feats: dict[str, list[torch.Tensor]] = {"vision tower": [], keys_name: []}
        labels, seen = [], {}
        layer = adapter.model.config.vision_feature_layer  # the layer LLaVA passes on (CLS dropped below)
        hook = adapter.model.model.vision_tower.register_forward_hook(
            lambda _m, _i, out: seen.update(tokens=out.hidden_states[layer][0, 1:])
        )
        try:
            for i, f in enumerate(scene_set.facts):
                cap = adapter.capture(scene_set.rgb[i], "what colour is the mug?", heads)
                feats["vision tower"].append(seen["tokens"].detach())
                keys = cap.image_keys  # (k, P, d)
                feats[keys_name].append(keys.permute(1, 0, 2).reshape(keys.shape[1], -1))  # (P, k*d)
                cover = dense_targets(scene_set.part_ids[i], f, cap.grid.rows)["pair"].mean(1)  # (P, C)
                labels.append(torch.as_tensor(np.where(cover.max(1) >= min_cover, cover.argmax(1), -1)))
        finally:
            hook.remove()
        return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)

    x_train, y_train = features(train_set)
    x_test, y_test = features(test_set)
    keep, keep_test = y_train >= 0, y_test >= 0
    y, yt = y_train[keep], y_test[keep_test]
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = (counts.sum() / (counts + 1.0)).sqrt()  # rare parts count more than the table
    report: dict = {"train_tokens": int(keep.sum()), "test_tokens": int(keep_test.sum())}
    gen = torch.Generator().manual_seed(0)
    for name in x_train:
        x = x_train[name][keep].float()
        mean, std = x.mean(0), x.std(0) + 1e-5
        x, xt = (x - mean) / std, (x_test[name][keep_test].float() - mean) / std
        probe = torch.nn.Linear(x.shape[1], n_classes)
        torch.nn.init.normal_(probe.weight, std=0.01, generator=gen)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):  # full batch
            loss = torch.nn.functional.cross_entropy(probe(x), y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = probe(xt).argmax(1)
        on_part = yt < n_classes - 1
        recalls = [
            float((pred[yt == c] == c).float().mean()) for c in range(n_classes - 1) if (yt == c).sum() >= 3
        ]
        report[name] = {
            "mean_recall_over_pairs": float(np.mean(recalls)),
            "pairs_scored": len(recalls),
            "accuracy_on_part_tokens": float((pred[on_part] == yt[on_part]).float().mean()),
            "chance_mean_recall": 1.0 / n_classes,
        }
    return report


def evaluate(args) -> dict:
    """``part-point backbone evaluate``: the report of ``args.model`` as JSON at ``args.report``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.grounding.localization_heads import load_heads
    from part_point_ros.tabletop.language import Packer, answer_accuracy
    from part_point_ros.tabletop.model import pixel_tensor

    test_set = scenes.load(args.cache, "test", args.test)
    train_set = scenes.load(args.cache, "train", args.train)
    report: dict = {"model": str(args.model), "test_scenes": len(test_set)}
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    packer = Packer(processor)
    prefix = packer.prefix(model.config.image_seq_length)
    report["answers"] = answer_accuracy(
        model, packer, prefix, pixel_tensor(processor, test_set.rgb), test_set
    )
    report["blind_majority"] = blind_majority(train_set.facts, test_set.facts)
    scenes.log("answers: " + json.dumps({k: round(v, 3) for k, v in report["answers"]["per_kind"].items()}))
    adapter = load_backbone(str(args.model), dtype="float32")
    report["attention"] = attention_localisation(adapter, test_set, args.attn_questions)
    scenes.log("attention: " + json.dumps(report["attention"]["heads"][:3]))
    if args.heads:
        layers = sorted({h.layer for h in load_heads(args.heads).top()})
    else:
        layers = list(range(adapter.info.num_layers - 2, adapter.info.num_layers))
    report["token_probe"] = token_probe(adapter, layers, train_set, test_set.head(100))
    scenes.log("token probe: " + json.dumps(report["token_probe"]))
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2))
    scenes.log(f"report -> {args.report}")
    return report
