"""Training and evaluation: feature cache, head trainer (DDP), evaluator and reports.

Never imported by ``grounding`` (inference); builds on ``heads``, ``data`` and ``backbones``.
"""

from part_point_ros.training.batching import Batch, FeatureItem, GridBucketBatchSampler, collate
from part_point_ros.training.config import DataSpec, TrainConfig, load_config
from part_point_ros.training.errors import CacheError, CacheMismatchError, ConfigError, ResumeError
from part_point_ros.training.feature_cache import FeatureCache, write_cache
from part_point_ros.training.metrics import PredictionRecord, patch_hit, point_hit, summarize
from part_point_ros.training.targets import MaskTargets, heatmap_targets, mask_targets

__all__ = [
    "Batch",
    "CacheError",
    "CacheMismatchError",
    "ConfigError",
    "DataSpec",
    "FeatureCache",
    "FeatureItem",
    "GridBucketBatchSampler",
    "MaskTargets",
    "PredictionRecord",
    "ResumeError",
    "TrainConfig",
    "collate",
    "heatmap_targets",
    "load_config",
    "mask_targets",
    "patch_hit",
    "point_hit",
    "summarize",
    "write_cache",
]
