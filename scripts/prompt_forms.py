"""Where does the backbone look when a query is asked in another form? (docs/tiny_tabletop.md,
"Where the part is found: the prompt's last token")

For each synthetic query of the first test scenes and each prompt form, the last input token's
attention of the heads file's heads, summed, and whether its argmax image token overlaps the part's
mask (the token-level hit of attention pointing, before smoothing). Direct and reasoning queries are
counted apart.

    python scripts/prompt_forms.py --model models/tiny-tabletop-llava --heads models/tiny-tabletop-heads.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

FORMS = {
    "the query as it is": "{q}",
    '"what colour is {query}?"': "what colour is {q}?",
    '"{query}?"': "{q}?",
    '"{query} what colour is it?"': "{q} what colour is it?",
}


def main() -> None:
    from part_point_ros.backbones.registry import load_backbone
    from part_point_ros.data.synthetic import load_synthetic
    from part_point_ros.grounding.localization_heads import load_heads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/tiny-tabletop-llava")
    parser.add_argument("--heads", default="models/tiny-tabletop-heads.json")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--scenes", type=int, default=12, help="the first N test scenes (default 12)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adapter = load_backbone(args.model)
    heads = [ref for ref, _ in load_heads(args.heads).heads]
    samples = load_synthetic(args.data, "test").samples
    scenes = sorted({s.meta["scene_dir"] for s in samples})[: args.scenes]
    hits: dict[str, dict[str, list[bool]]] = {form: defaultdict(list) for form in FORMS}
    for sample in (s for s in samples if s.meta["scene_dir"] in scenes):
        image, mask = sample.load_image(), sample.load_mask()
        query = sample.query.rstrip("?.")
        for name, form in FORMS.items():
            capture = adapter.capture(image, form.format(q=query), heads, truncate=False)
            attention = capture.last_token_attention().float().sum(0)  # (k, P) -> (P,)
            on_part = capture.grid.resample_mask(mask).reshape(-1) > 0
            hits[name][sample.meta["query_kind"]].append(bool(on_part[int(attention.argmax())]))
    print(f"{args.model}, heads {', '.join(map(str, heads))}, {len(scenes)} test scenes")
    print("| the same query asked as | direct queries | reasoning queries |\n| --- | ---: | ---: |")
    for name, by_kind in hits.items():
        cells = [f"{np.mean(by_kind[k]):.3f} (n={len(by_kind[k])})" for k in ("direct", "reasoning")]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
