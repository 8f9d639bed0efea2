"""The trainable head: Q-Synth + A2P decoder and their losses. Tensors in, tensors out.

Never imports ``backbones``: the backbone is described by a plain dict in ``HeadConfig``.
"""

from part_point_ros.heads.attention_to_point import AttentionToPoint
from part_point_ros.heads.config import HeadConfig
from part_point_ros.heads.head import HeadOutput, PartPointHead
from part_point_ros.heads.query_synthesis import QuerySynthesis

__all__ = ["AttentionToPoint", "HeadConfig", "HeadOutput", "PartPointHead", "QuerySynthesis"]
