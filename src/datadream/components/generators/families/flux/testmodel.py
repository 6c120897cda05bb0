"""FLUX's test models: a tiny one with random weights (the shapes of diffusers' own pipeline
tests; 32 px images, noise, in about a second on a CPU) and FLUX.1-dev's architecture with
random weights, for speed and memory benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.testmodels.parts import (CLIP_L_TEXT, FLOW_VAE, clip_text, save_marked, t5_xxl, tiny_clip,
                                                   tiny_t5, tiny_t5_tokenizer, tiny_vae)
from datadream.components.testmodels.tiny import tiny_tokenizer

FULL_SIZE_NAME = "FLUX.1-dev"
# Its config.json files; parameter counts are checked in tests/test_families.py.
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159)


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.1-dev's scheduler settings: sigmas shifted by a mu that grows with the token count.
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def build_tiny(folder: Path, seed: int = 0) -> Path:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    latent_channels, text_dim = 4, 32
    transformer = FluxTransformer2DModel(
        # FLUX packs 2x2 latent patches into one token.
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim, axes_dims_rope=(4, 4, 8), guidance_embeds=True,  # as FLUX.1-dev
    )
    pipeline = FluxPipeline(
        transformer=transformer, scheduler=_scheduler(), vae=tiny_vae(latent_channels, flow=True),
        text_encoder=tiny_clip(False, text_dim), tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_t5(text_dim), tokenizer_2=tiny_t5_tokenizer(),
    )
    return save_marked(pipeline, folder)


def full_size_pipeline(device: str | torch.device):
    import diffusers

    clip, t5 = tiny_tokenizer(), tiny_t5_tokenizer()
    scheduler = _scheduler()
    with torch.device(device):
        return diffusers.FluxPipeline(
            transformer=diffusers.FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER),
            vae=diffusers.AutoencoderKL(**FLUX_VAE), scheduler=scheduler,
            text_encoder=clip_text(CLIP_L_TEXT, False, clip), tokenizer=clip, text_encoder_2=t5_xxl(t5), tokenizer_2=t5)
