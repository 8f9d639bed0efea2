"""``HeadConfig``: every hyper-parameter of the trainable head, validated, JSON round-trippable.

The backbone is described by a plain dict (the fields of ``backbones.base.BackboneInfo``) so that
``heads`` never imports ``backbones``. Choices the paper does not state are fields marked
**unverified** below; their defaults are written down in ``method.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from part_point_ros.types import HeadRef

CONFIG_VERSION = 1
BACKBONE_KEYS = ("name", "family", "num_layers", "num_heads", "num_kv_heads", "head_dim")
QUERY_POOLINGS = ("qsynth", "eos", "mean", "max")
SUPERVISIONS = ("sdf", "l2", "gaussian", "symmetric_sdf")
SDF_UNITS = ("heatmap_px", "grid_px")
ATTN_SCALES = ("num_patches", "none")
PATCH_LOSSES = ("bce", "softmax_ce", "bce+softmax_ce")


@dataclass
class HeadConfig:
    """Hyper-parameters of Q-Synth + A2P decoder + losses for one backbone and one set of heads.

    Errors raised by ``__post_init__`` are ``ValueError`` naming the field and the fix.
    """

    backbone: dict[str, Any]  # BackboneInfo as a dict: name, family, num_layers, num_heads, ...
    heads: list[tuple[int, int]]  # the k localization heads as (layer, head), 0-indexed
    d_head: int = 128  # d_h: size of one attention head of the backbone
    # Q-Synth (method.md §2)
    n_latents: int = 4  # N
    n_rounds: int = 3  # T
    qsynth_prenorm: bool = True  # unverified: pre-LayerNorm on latents and text queries
    qsynth_ffn: bool = True  # unverified: feed-forward sublayer after each cross-attention
    qsynth_ffn_ratio: int = 2  # unverified: FFN hidden = ratio * d_head (2 is closest to 2.3 M)
    qsynth_attn_heads: int = 1  # one head: q_s must live in the single head's query space
    query_pooling: str = "qsynth"  # ablations: "eos" (last text token), "mean", "max"
    # A2P decoder (method.md §3)
    use_values: bool = True  # ablation "no image V": F_i = A_s,i (one channel per head)
    use_decoder: bool = True  # ablation "no A2P": heatmap = log of the mean A_s, upsampled
    attn_scale: str = "num_patches"  # F_i = (P * A_s,i) * V_v,i; "none": F_i = A_s,i * V_v,i
    d_fused: int = 256
    n_blocks: int = 4
    n_upsample: int = 2  # each x2 bilinear; heatmap is 2**n_upsample times the grid
    norm_groups: int = 32  # GroupNorm groups (gcd with the channel count is used)
    # Losses (method.md §4)
    supervision: str = "sdf"  # ablations: "l2", "gaussian", "symmetric_sdf"
    # the patch term on q_s·K_vᵀ: "bce" (the paper's L_bce, per patch), "softmax_ce" (not the
    # paper's: cross-entropy of the softmax over the P patches against the coverage share, one
    # distribution per head; for parts of 1-3 of 400 patches, where the mean BCE is all negatives),
    # or "bce+softmax_ce" (their sum). The a2p score reads sigmoid(q_s·K_v) only for "bce": with a
    # softmax term it is ~0.9 everywhere (measured, even with the BCE added), see a2p.score_rule
    patch_loss: str = "bce"
    sdf_tau: float = 1.5
    sdf_gamma: float = 1.0
    sdf_lambda: float = 0.001
    sdf_units: str = "heatmap_px"  # unverified: distances in heatmap pixels or grid cells
    gaussian_sigma: float = 2.0  # ablation "gaussian": sigma in heatmap pixels
    # "gaussian" only, not the paper's: one peak per connected piece of the mask (one per instance of
    # an ambiguous or plural query) instead of one at the union's innermost point (losses.py)
    gaussian_instances: bool = False
    # Presence output (not the paper's; heads/presence.py): a logit "the target is in the image",
    # trained by BCE on present and absent queries, weight presence_weight; the a2p score then is
    # its probability (a2p.score_rule "presence")
    presence: bool = False
    presence_hidden: int = 64
    presence_weight: float = 1.0
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (dataset, seed, ...)

    def __post_init__(self) -> None:
        self._check_backbone()
        self._check_heads()
        _positive_ints(
            self,
            (
                "d_head",
                "n_latents",
                "n_rounds",
                "qsynth_ffn_ratio",
                "qsynth_attn_heads",
                "d_fused",
                "presence_hidden",
            ),
        )
        _choice(self, "query_pooling", QUERY_POOLINGS)
        _choice(self, "supervision", SUPERVISIONS)
        _choice(self, "sdf_units", SDF_UNITS)
        _choice(self, "attn_scale", ATTN_SCALES)
        _choice(self, "patch_loss", PATCH_LOSSES)
        bools = (
            "qsynth_prenorm",
            "qsynth_ffn",
            "use_values",
            "use_decoder",
            "presence",
            "gaussian_instances",
        )
        for name in bools:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"HeadConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.d_head % self.qsynth_attn_heads:
            raise ValueError(
                f"HeadConfig.qsynth_attn_heads={self.qsynth_attn_heads} must divide d_head={self.d_head}"
            )
        if not isinstance(self.n_blocks, int) or self.n_blocks < 0:
            raise ValueError(f"HeadConfig.n_blocks must be an int >= 0, got {self.n_blocks!r}")
        if not isinstance(self.n_upsample, int) or self.n_upsample < 0:
            raise ValueError(f"HeadConfig.n_upsample must be an int >= 0, got {self.n_upsample!r}")
        if self.d_fused % (2**self.n_upsample):
            raise ValueError(
                f"HeadConfig.d_fused={self.d_fused} must be divisible by 2**n_upsample="
                f"{2**self.n_upsample} (channels halve at each upsampling stage)"
            )
        if not isinstance(self.norm_groups, int) or self.norm_groups < 1:
            raise ValueError(f"HeadConfig.norm_groups must be an int >= 1, got {self.norm_groups!r}")
        for name in ("sdf_tau", "gaussian_sigma"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"HeadConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("sdf_gamma", "sdf_lambda", "presence_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"HeadConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.version != CONFIG_VERSION:
            raise ValueError(
                f"HeadConfig.version is {self.version!r} but this code reads version {CONFIG_VERSION}: "
                "retrain the head or use the part_point_ros release that wrote it"
            )
        if not isinstance(self.extra, dict):
            raise ValueError(f"HeadConfig.extra must be a dict, got {type(self.extra).__name__}")

    def _check_backbone(self) -> None:
        if not isinstance(self.backbone, dict):
            raise ValueError(
                f"HeadConfig.backbone must be a dict with keys {', '.join(BACKBONE_KEYS)} "
                f"(dataclasses.asdict(BackboneInfo)), got {type(self.backbone).__name__}"
            )
        missing = [k for k in BACKBONE_KEYS if k not in self.backbone]
        unknown = sorted(set(self.backbone) - set(BACKBONE_KEYS))
        if missing or unknown:
            raise ValueError(
                f"HeadConfig.backbone: missing keys {missing}, unknown keys {unknown}; "
                f"give exactly {', '.join(BACKBONE_KEYS)}"
            )
        for key in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
            value = self.backbone[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HeadConfig.backbone[{key!r}] must be an int >= 1, got {value!r}")
        if self.backbone["head_dim"] != self.d_head:
            raise ValueError(
                f"HeadConfig.d_head={self.d_head} but backbone head_dim={self.backbone['head_dim']}: "
                "set d_head to the backbone's head size"
            )

    def _check_heads(self) -> None:
        if not isinstance(self.heads, (list, tuple)) or not self.heads:
            raise ValueError("HeadConfig.heads must list at least one [layer, head] pair, e.g. [[14, 24]]")
        normalised: list[tuple[int, int]] = []
        for item in self.heads:
            pair = (item.layer, item.head) if isinstance(item, HeadRef) else item
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            ):
                raise ValueError(f"HeadConfig.heads: {item!r} is not a [layer, head] pair of ints")
            layer, head = pair
            if not 0 <= layer < self.backbone["num_layers"]:
                raise ValueError(
                    f"HeadConfig.heads: layer {layer} is outside 0..{self.backbone['num_layers'] - 1} "
                    f"of backbone {self.backbone['name']!r}"
                )
            if not 0 <= head < self.backbone["num_heads"]:
                raise ValueError(
                    f"HeadConfig.heads: head {head} is outside 0..{self.backbone['num_heads'] - 1} "
                    f"of backbone {self.backbone['name']!r}"
                )
            normalised.append((layer, head))
        if len(set(normalised)) != len(normalised):
            raise ValueError(f"HeadConfig.heads lists a head twice: {normalised}; remove the duplicate")
        self.heads = normalised

    @property
    def k(self) -> int:
        """Number of localization heads."""
        return len(self.heads)

    @property
    def upscale(self) -> int:
        """Heatmap size / attention-grid size (4 with the paper's two x2 stages)."""
        return 2**self.n_upsample

    @property
    def head_refs(self) -> tuple[HeadRef, ...]:
        return tuple(HeadRef(layer, head) for layer, head in self.heads)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (heads as lists)."""
        out = asdict(self)
        out["heads"] = [list(pair) for pair in self.heads]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        """Inverse of ``to_dict``; rejects unknown keys and other versions, naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"head config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"head config has unknown keys {unknown}: written by another version of part_point_ros?"
            )
        if "version" in data and data["version"] != CONFIG_VERSION:
            raise ValueError(
                f"head config version is {data['version']!r} but this code reads version "
                f"{CONFIG_VERSION}: retrain the head or use the release that wrote it"
            )
        missing = [name for name in ("backbone", "heads") if name not in data]
        if missing:
            raise ValueError(f"head config is missing the required keys {missing}")
        return cls(**data)


def _positive_ints(config: HeadConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"HeadConfig.{name} must be an int >= 1, got {value!r}")


def _choice(config: HeadConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"HeadConfig.{name}={value!r} is not one of {', '.join(choices)}")
