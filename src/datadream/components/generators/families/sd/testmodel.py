"""SD's test models: the tiny one (tiny.py's, built beside the tiny CLIP every test uses) and
SD 2.1-base with random weights, for GPU benchmarks on machines without hub access. Speed and
memory do not depend on the weight values; the architecture (UNet 866M parameters, VAE 84M,
OpenCLIP ViT-H text encoder 340M) is SD 2.1-base's."""

from __future__ import annotations

import torch

from datadream.components.testmodels.parts import SD21_BASE_VAE, clip_text
from datadream.components.testmodels.tiny import build_tiny_stable_diffusion, tiny_tokenizer

# tiny.py builds it, for tiny.build_tiny_models, which every test and the demo use.
build_tiny = build_tiny_stable_diffusion
FULL_SIZE_NAME = "SD 2.1-base"
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, use_linear_projection=True,
)
SD21_BASE_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    projection_dim=512, hidden_act="gelu", max_position_embeddings=77,
)


def full_size_pipeline(device: str | torch.device):
    import diffusers

    clip = tiny_tokenizer()
    scheduler = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                                        steps_offset=1, prediction_type="epsilon")
    with torch.device(device):
        return diffusers.StableDiffusionPipeline(
            vae=diffusers.AutoencoderKL(**SD21_BASE_VAE), unet=diffusers.UNet2DConditionModel(**SD21_BASE_UNET),
            text_encoder=clip_text(SD21_BASE_TEXT, False, clip), tokenizer=clip, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
