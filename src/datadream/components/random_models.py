"""Full-size Stable Diffusion 2.1-base with random weights, for GPU benchmarks on machines
without hub access. Speed and memory do not depend on the weight values; the architecture
(UNet 866M parameters, VAE 84M, OpenCLIP ViT-H text encoder 340M) is SD 2.1-base's."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.tiny import mark_random_weights, tiny_tokenizer

SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, use_linear_projection=True,
)
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD21_BASE_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    projection_dim=512, hidden_act="gelu", max_position_embeddings=77,
)


def build_random_sd21_base(folder: Path, seed: int = 0) -> Path:
    """Save a random-weight SD 2.1-base in the diffusers layout (about 5 GB in fp32). Its
    tokenizer is the tiny byte-level one: prompt lengths match, words do not."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **SD21_BASE_TEXT))
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD21_BASE_VAE), text_encoder=text, tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD21_BASE_UNET),
        scheduler=PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                                steps_offset=1, prediction_type="epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    mark_random_weights(folder)
    return folder
