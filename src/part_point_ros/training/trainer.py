"""``train(config)``: the head on a feature cache, AdamW, checkpoints every epoch, resume, DDP.

The backbone is never loaded: batches come from ``FeatureCache``. The trainable parameters are the
head's only. Defaults are those of ``TrainConfig`` / ``HeadConfig`` (method.md §4).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from part_point_ros.heads import HeadConfig, PartPointHead
from part_point_ros.heads.losses import head_loss
from part_point_ros.training.batching import Batch, GridBucketBatchSampler, collate, is_present
from part_point_ros.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from part_point_ros.training.config import TrainConfig
from part_point_ros.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from part_point_ros.training.errors import ConfigError, ResumeError
from part_point_ros.training.feature_cache import FeatureCache
from part_point_ros.training.scalars import ScalarLogger

# Fields that may change between a run and its resumption (they do not change the maths).
RESUMABLE_CHANGES = (
    "epochs", "progress", "tensorboard", "log_every", "num_workers", "device",
    "eval_methods", "eval_max_samples", "eval_data", "cache_dir",
)  # fmt: skip
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainResult:
    head_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch run here
    start_epoch: int = 1  # first epoch run by this call (> 1 after --resume)
    world_size: int = 1
    head: Any = None  # the trained PartPointHead (this process's copy)


def head_config_for(cache: FeatureCache, config: TrainConfig) -> HeadConfig:
    """The head's config: backbone and heads from the cache manifest, overrides from ``config.head``."""
    backbone = cache.backbone
    extra = {
        "train": {"seed": config.seed, "epochs": config.epochs, "dataset": cache.manifest["dataset"]["name"]}
    }
    try:
        return HeadConfig(
            backbone=backbone,
            heads=[(h.layer, h.head) for h in cache.heads],
            d_head=int(backbone["head_dim"]),
            **{**config.head, "extra": {**extra, **config.head.get("extra", {})}},
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"head: {err}") from err


def open_train_cache(config: TrainConfig, split: str = "train") -> FeatureCache:
    """The cache of ``split``, checked against the config's backbone, heads and heatmap upscale."""
    cache = FeatureCache(config.cache_path(split))
    n_upsample = config.head.get("n_upsample", _default("n_upsample"))
    cache.check_matches(backbone=config.backbone or None, upscale=2 ** int(n_upsample))
    if config.heads:
        cache.use_heads(config.head_refs())  # checks them: the first k cached heads
    return cache


def _default(name: str) -> Any:
    return next(f.default for f in fields(HeadConfig) if f.name == name)


def _lr_lambda(step: int, *, warmup: int, total: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _check_resume(config: TrainConfig, out_dir: Path) -> None:
    saved_path = out_dir / "train_config.json"
    if not saved_path.is_file():
        return
    saved = TrainConfig.from_dict(json.loads(saved_path.read_text()), where=str(saved_path))
    now, before = config.to_dict(), saved.to_dict()
    for key in sorted(now):
        if key not in RESUMABLE_CHANGES and now[key] != before[key]:
            raise ResumeError(
                f"cannot resume {out_dir}: {key} was {before[key]!r} and is now {now[key]!r}; "
                "keep the config or start a new out_dir"
            )


def _step_loss(model: Any, batch: Batch, head_cfg: HeadConfig, autocast: Any) -> dict[str, torch.Tensor]:
    with autocast():
        out = model(batch.queries, batch.query_mask, batch.keys, batch.values, batch.grid_shape)
    return head_loss(
        out,
        patch_targets=batch.patch_targets,
        heatmap_targets=batch.heatmap_targets,
        config=head_cfg,
        present=batch.present,
    )


def training_indices(cache: FeatureCache, head_cfg: HeadConfig) -> list[int]:
    """The cache samples a head trains on: all of them for a head with a presence output; without
    one, only those whose target is in the image (absent queries teach nothing else)."""
    if head_cfg.presence:
        return list(range(len(cache)))
    return [i for i, record in enumerate(cache.records) if is_present(record["meta"])]


def init_from_head(head: PartPointHead, directory: str | Path) -> list[str]:
    """Copy a trained head's weights into ``head`` (same backbone shape, same localization heads);
    returns the names of ``head``'s parameters it did not hold (they keep their fresh values).
    Raises ``ConfigError`` naming what does not fit."""
    source = PartPointHead.from_pretrained(directory)
    mine, theirs = head.config, source.config
    shape = [
        key
        for key in ("family", "num_layers", "num_heads", "head_dim")
        if mine.backbone[key] != theirs.backbone[key]
    ]
    if shape or list(mine.heads) != list(theirs.heads):
        what = f"backbone {shape}" if shape else f"heads {theirs.heads} != {mine.heads}"
        raise ConfigError(
            f"init_head {directory}: made for other features ({what}); use a head of this cache's backbone"
        )
    state, own = source.state_dict(), head.state_dict()
    wrong = [name for name, t in state.items() if name not in own or own[name].shape != t.shape]
    if wrong:
        raise ConfigError(
            f"init_head {directory}: {', '.join(wrong[:3])} do not fit this config's head (another "
            "architecture: keep the head section of the config that trained it)"
        )
    head.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})
    return sorted(set(own) - set(state))


def select_trainable(head: PartPointHead, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """The parameters to optimise: all, or those whose names start with one of ``prefixes`` (the
    rest are frozen: ``requires_grad`` False). Raises ``ConfigError`` when a prefix matches none."""
    if not prefixes:
        return list(head.parameters())
    chosen = []
    for name, param in head.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in prefixes))
        if param.requires_grad:
            chosen.append(param)
    unused = [p for p in prefixes if not any(n.startswith(p) for n, _ in head.named_parameters())]
    if unused or not chosen:
        names = sorted({n.split(".")[0] for n, _ in head.named_parameters()})
        raise ConfigError(
            f"train_only {unused or prefixes} matches no parameter of the head; its modules: {names}"
        )
    return chosen


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train a head on ``<cache_dir>/train``; write checkpoints and ``<out_dir>/head``."""
    dist_info, device = init_distributed(config.resolved_device())
    try:
        return _train(config, resume=resume, dist_info=dist_info, device=device)
    finally:
        shutdown_distributed()


def _train(config: TrainConfig, *, resume: bool, dist_info: DistInfo, device: str) -> TrainResult:
    out_dir = Path(config.out_dir)
    cache = open_train_cache(config)
    head_cfg = head_config_for(cache, config)
    previous = latest_checkpoint(out_dir)
    if previous is not None and not resume:
        raise ResumeError(
            f"{out_dir} already holds checkpoints: pass --resume to continue, or choose another out_dir"
        )
    if resume:
        if previous is None:
            raise ResumeError(
                f"nothing to resume in {out_dir}: no complete checkpoint under {out_dir}/checkpoints"
            )
        _check_resume(config, out_dir)

    torch.manual_seed(config.seed)
    head = PartPointHead(head_cfg).to(device)
    fresh = init_from_head(head, config.init_head) if config.init_head else []
    trainable = select_trainable(head, config.train_only)
    params = dict(head.named_parameters())  # state-dict names may be buffers too: those train nothing
    left_random = [name for name in fresh if name in params and not params[name].requires_grad]
    if left_random:
        raise ConfigError(
            f"init_head {config.init_head} has no {', '.join(left_random[:3])}, and train_only "
            f"{config.train_only} freezes them at random values; add their module to train_only"
        )
    indices = training_indices(cache, head_cfg)
    if not indices:
        raise ConfigError(f"{cache.root}: no sample has its target in the image; nothing to train on")
    if head_cfg.presence and all(is_present(cache.records[i]["meta"]) for i in indices):
        raise ConfigError(
            f"{cache.root}: head.presence is on but the cache holds no absent query to learn 'not here' "
            "from; cache a data set with them (synthetic: train_data.args.absent: true) or set "
            "head.presence: false"
        )
    data = cache if len(indices) == len(cache) else torch.utils.data.Subset(cache, indices)
    shapes = cache.grid_shapes()
    sampler = GridBucketBatchSampler(
        [shapes[i] for i in indices], config.batch_size, shuffle=True, seed=config.seed,
        num_replicas=dist_info.world_size, rank=dist_info.rank,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=partial(collate, config=head_cfg),
        num_workers=config.num_workers,
    )
    optimizer = torch.optim.AdamW(
        trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    total_steps = config.epochs * len(sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(_lr_lambda, warmup=config.warmup_steps, total=total_steps, schedule=config.lr_schedule),
    )
    on_gpu = torch.device(device).type == "cuda"
    amp = config.amp if on_gpu else "none"  # autocast on GPU only
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    autocast = (
        partial(torch.autocast, device_type="cuda", dtype=AMP_DTYPES[amp])
        if amp != "none"
        else contextlib.nullcontext
    )

    start_epoch, step = 1, 0
    if resume:
        state = load_checkpoint(previous, head=head, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "train_config.json")
    model: Any = head
    if dist_info.enabled:
        model = DistributedDataParallel(head, device_ids=[torch.device(device).index] if on_gpu else None)

    logger = ScalarLogger(out_dir, tensorboard=config.tensorboard) if dist_info.is_main else None
    history: list[dict[str, float]] = []
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            sampler.set_epoch(epoch)
            model.train()
            sums = torch.zeros(5, dtype=torch.float64)  # loss, bce, point, presence sums (x batch), samples
            bar = _progress(loader, config.progress and dist_info.is_main, f"epoch {epoch}/{config.epochs}")
            for batch in bar:
                batch = batch.to(device)
                losses = _step_loss(model, batch, head_cfg, autocast)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["total"]).backward()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                n = len(batch)
                values = [float(losses[k].detach()) for k in ("total", "bce", "point", "presence")]
                sums += torch.tensor([v * n for v in values] + [n], dtype=torch.float64)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{values[0]:.4f}")
                if logger is not None and step % config.log_every == 0:
                    logger.log(step, {"train/loss_step": values[0], "train/lr": scheduler.get_last_lr()[0]})
            sums = all_reduce_sum(sums, dist_info)
            metrics = {
                "loss": float(sums[0] / sums[4]),
                "bce": float(sums[1] / sums[4]),
                "point": float(sums[2] / sums[4]),
                **({"presence": float(sums[3] / sums[4])} if head_cfg.presence else {}),
                "lr": float(scheduler.get_last_lr()[0]),
            }
            history.append({"epoch": epoch, **metrics})
            if dist_info.is_main:
                save_checkpoint(
                    out_dir, epoch=epoch, step=step, head=head, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, metrics=metrics,
                )  # fmt: skip
                logger.log(step, {f"epoch/{k}": v for k, v in metrics.items()}, epoch=epoch)
            barrier(dist_info)
    finally:
        if logger is not None:
            logger.close()
    head_dir = out_dir / "head"
    if dist_info.is_main:
        final = latest_checkpoint(out_dir)
        if head_dir.exists():
            shutil.rmtree(head_dir)
        shutil.copytree(final / "head", head_dir)
    barrier(dist_info)
    return TrainResult(
        head_dir=head_dir,
        history=history,
        start_epoch=start_epoch,
        world_size=dist_info.world_size,
        head=head,
    )


def _progress(loader: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
