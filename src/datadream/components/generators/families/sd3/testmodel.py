"""SD 3's test models: a tiny one with random weights (the shapes of diffusers' own pipeline
tests; 32 px images, noise, in about a second on a CPU) and SD 3.5 Medium's architecture with
random weights, for speed and memory benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.testmodels.parts import (CLIP_G_TEXT, CLIP_L_TEXT, FLOW_VAE, clip_text, save_marked,
                                                   t5_xxl, tiny_clip, tiny_t5, tiny_t5_tokenizer, tiny_vae)
from datadream.components.testmodels.tiny import TINY_RESOLUTION, tiny_tokenizer

FULL_SIZE_NAME = "SD 3.5 Medium"
# Its config.json files; parameter counts are checked in tests/test_families.py.
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD3_VAE = dict(FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609)


def build_tiny(folder: Path, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    clip_dim = 32
    # The two CLIP encoders' hidden states, side by side, are padded to T5's width: a T5 as wide
    # as both keeps every CLIP feature.
    joint_dim = 2 * clip_dim
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 2, patch_size=1, in_channels=4, out_channels=4,
        # The last block's text stream has no output projection: two blocks hold every LoRA target.
        num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=joint_dim,
        caption_projection_dim=32, pooled_projection_dim=2 * clip_dim, pos_embed_max_size=TINY_RESOLUTION,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(4, flow=True),
        text_encoder=tiny_clip(True, clip_dim), tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_clip(True, clip_dim), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(joint_dim), tokenizer_3=tiny_t5_tokenizer(),
    )
    return save_marked(pipeline, folder)


def full_size_pipeline(device: str | torch.device):
    import diffusers

    clip, t5 = tiny_tokenizer(), tiny_t5_tokenizer()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    with torch.device(device):
        return diffusers.StableDiffusion3Pipeline(
            transformer=diffusers.SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER),
            vae=diffusers.AutoencoderKL(**SD3_VAE), scheduler=scheduler,
            text_encoder=clip_text(CLIP_L_TEXT, True, clip), tokenizer=clip,
            text_encoder_2=clip_text(CLIP_G_TEXT, True, clip), tokenizer_2=clip,
            text_encoder_3=t5_xxl(t5), tokenizer_3=t5)
