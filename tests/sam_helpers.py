"""Tiny random SAM / SAM 2 checkpoints from transformers' real config classes (tests only)."""

from __future__ import annotations

import torch

SIDE = 64  # the tiny model's input side (SAM: 1024)  # the processor's input side, pixels


def build_tiny_sam(path, *, seed: int = 0):
    """A tiny random SamModel (64 px input, 8 px patches, 2 layers) + SamProcessor in ``path``."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": SIDE,
            "patch_size": 8,
            "window_size": 4,
            "global_attn_indexes": [1],
            "num_pos_feats": 16,  # 2 x 16 = the prompt / decoder width
            "mlp_dim": 64,
        },
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": SIDE,
            "patch_size": 8,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )
    SamModel(config).save_pretrained(path)
    image_processor = SamImageProcessor(size={"longest_edge": SIDE}, pad_size={"height": SIDE, "width": SIDE})
    SamProcessor(image_processor).save_pretrained(path)
    return path


def build_tiny_sam2(path, *, seed: int = 0, with_processor: bool = True):
    """A tiny random Sam2Model (64 px input, 5 Hiera blocks) [+ Sam2Processor] in ``path``."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(seed)
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=SIDE,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],  # not the first block of a stage: those pool with a window
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],  # stride 4, 8, 16 of the 64 px input
        fpn_hidden_size=32,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=SIDE, patch_size=16, mask_input_channels=8
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    Sam2Model(config).save_pretrained(path)
    if with_processor:
        from transformers import Sam2ImageProcessor, Sam2Processor

        Sam2Processor(Sam2ImageProcessor(size={"height": SIDE, "width": SIDE})).save_pretrained(path)
    return path
