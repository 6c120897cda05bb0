"""SDXL's test models: a tiny one with random weights (the shapes of diffusers' own pipeline
tests; 32 px images, noise, in about a second on a CPU) and SDXL base 1.0's architecture with
random weights, for speed and memory benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.testmodels.parts import (CLIP_G_TEXT, CLIP_L_TEXT, SD21_BASE_VAE, clip_text, save_marked,
                                                   tiny_clip, tiny_vae)
from datadream.components.testmodels.tiny import TINY_RESOLUTION, tiny_tokenizer

FULL_SIZE_NAME = "SDXL base 1.0"
# Its config.json files; parameter counts are checked in tests/test_families.py.
SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(SD21_BASE_VAE, sample_size=1024, scaling_factor=0.13025)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL base's scheduler settings.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


def build_tiny(folder: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    text_dim, time_dim = 32, 8
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        # Both encoders' hidden states side by side, and the pooled embedding beside the six
        # size/crop numbers: SDXL's "text_time" conditioning.
        cross_attention_dim=2 * text_dim, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_dim, transformer_layers_per_block=(1, 2),
    )
    pipeline = StableDiffusionXLPipeline(
        vae=tiny_vae(4, flow=False), text_encoder=tiny_clip(False, text_dim), text_encoder_2=tiny_clip(True, text_dim),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=_scheduler(),
    )
    return save_marked(pipeline, folder)


def full_size_pipeline(device: str | torch.device):
    import diffusers

    clip = tiny_tokenizer()
    scheduler = _scheduler()
    with torch.device(device):
        return diffusers.StableDiffusionXLPipeline(
            vae=diffusers.AutoencoderKL(**SDXL_VAE), unet=diffusers.UNet2DConditionModel(**SDXL_BASE_UNET),
            text_encoder=clip_text(CLIP_L_TEXT, False, clip), tokenizer=clip,
            text_encoder_2=clip_text(CLIP_G_TEXT, True, clip), tokenizer_2=clip, scheduler=scheduler)
