"""Tiny random-weight SDXL, SD 3 and FLUX models in the standard diffusers folder layouts, built
in code (the shapes of diffusers' own pipeline tests), so that every generator family is proven
end to end on a CPU through the same `from_pretrained(folder)` its real weights go through. The
SD one stays in tiny.py. Each samples a 32 px image in about a second; what they generate is
noise."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.testmodels.tiny import (TINY_RESOLUTION, mark_random_weights, text_config_kwargs,
                                                 tiny_tokenizer)

T5_LENGTH = 32  # tokens per prompt the tiny T5 encoders take (real ones: 256 or 512)


def tiny_t5_tokenizer():
    """A character-level T5 tokenizer built in code: a Unigram vocabulary of the printable ASCII
    characters, each alone and after the word-start marker, since T5's sentencepiece model cannot
    be fetched offline."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=T5_LENGTH)


def _clip(with_projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=hidden, hidden_act="gelu",
                            **text_config_kwargs(tiny_tokenizer()))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def _vae(latent_channels: int, flow: bool):
    from diffusers import AutoencoderKL

    extra = {}
    if flow:
        # SD 3 and FLUX VAEs shift latents before scaling and drop the 1x1 quant convolutions.
        extra = dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels, norm_num_groups=8,
        sample_size=TINY_RESOLUTION, **extra,
    )


def _save(pipeline, folder: Path) -> Path:
    pipeline.save_pretrained(folder)
    mark_random_weights(folder)
    return folder


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

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
    # SDXL base's scheduler settings.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=_vae(4, flow=False), text_encoder=_clip(False, text_dim), text_encoder_2=_clip(True, text_dim),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
    )
    return _save(pipeline, folder)


def build_tiny_sd3(folder: Path, seed: int = 0) -> Path:
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
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4, flow=True),
        text_encoder=_clip(True, clip_dim), tokenizer=tiny_tokenizer(),
        text_encoder_2=_clip(True, clip_dim), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=_t5(joint_dim), tokenizer_3=tiny_t5_tokenizer(),
    )
    return _save(pipeline, folder)


def build_tiny_flux(folder: Path, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    latent_channels, text_dim = 4, 32
    transformer = FluxTransformer2DModel(
        # FLUX packs 2x2 latent patches into one token.
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim, axes_dims_rope=(4, 4, 8), guidance_embeds=True,  # as FLUX.1-dev
    )
    # FLUX.1-dev's scheduler settings: sigmas shifted by a mu that grows with the token count.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipeline = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_vae(latent_channels, flow=True),
        text_encoder=_clip(False, text_dim), tokenizer=tiny_tokenizer(),
        text_encoder_2=_t5(text_dim), tokenizer_2=tiny_t5_tokenizer(),
    )
    return _save(pipeline, folder)


BUILDERS = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux}
