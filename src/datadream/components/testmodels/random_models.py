"""Full-size Stable Diffusion 2.1-base with random weights, for GPU benchmarks on machines
without hub access. Speed and memory do not depend on the weight values; the architecture
(UNet 866M parameters, VAE 84M, OpenCLIP ViT-H text encoder 340M) is SD 2.1-base's."""

from __future__ import annotations

from pathlib import Path

import torch

from datadream.components.testmodels.tiny import mark_random_weights, tiny_tokenizer

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
    torch.manual_seed(seed)
    random_family_pipeline("sd").save_pretrained(folder)
    mark_random_weights(folder)
    return folder


# What each family's full-size random model reproduces, by family.
FULL_SIZE_NAMES = {"sd": "SD 2.1-base", "sdxl": "SDXL base 1.0", "sd3": "SD 3.5 Medium", "flux": "FLUX.1-dev"}

# The published architectures of the other families (their config.json files), for speed and
# memory benchmarks with random weights. Parameter counts are checked in tests/test_families.py.
SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(SD21_BASE_VAE, sample_size=1024, scaling_factor=0.13025)
# OpenAI CLIP ViT-L/14's text tower (SDXL, SD 3 and FLUX) and OpenCLIP ViT-bigG/14's (SDXL, SD 3).
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77)
CLIP_G_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu", max_position_embeddings=77)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLOW_VAE = dict(SD21_BASE_VAE, latent_channels=16, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False)
SD3_VAE = dict(FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = dict(FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159)


def _clip_text(config: dict, projection: bool, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    kind = CLIPTextModelWithProjection if projection else CLIPTextModel
    return kind(CLIPTextConfig(vocab_size=49408, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config))


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                   decoder_start_token_id=tokenizer.pad_token_id))


def random_family_pipeline(family: str, device: str | torch.device = "cpu"):
    """A full-size random-weight pipeline of `family` (sd: SD 2.1-base; sdxl: SDXL base 1.0; sd3:
    SD 3.5 Medium; flux: FLUX.1-dev), its models built on `device` in the default dtype (set it first: FLUX is
    12 B parameters). The tokenizers are the tiny ones: prompt lengths match, words do not."""
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    from datadream.components.testmodels.tiny_families import tiny_t5_tokenizer

    clip, t5 = tiny_tokenizer(), tiny_t5_tokenizer()
    if family == "sd":
        scheduler = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                                            steps_offset=1, prediction_type="epsilon")
        with torch.device(device):
            return diffusers.StableDiffusionPipeline(
                vae=AutoencoderKL(**SD21_BASE_VAE), unet=diffusers.UNet2DConditionModel(**SD21_BASE_UNET),
                text_encoder=_clip_text(SD21_BASE_TEXT, False, clip), tokenizer=clip, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":
        scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                           prediction_type="epsilon")
        with torch.device(device):
            return diffusers.StableDiffusionXLPipeline(
                vae=AutoencoderKL(**SDXL_VAE), unet=diffusers.UNet2DConditionModel(**SDXL_BASE_UNET),
                text_encoder=_clip_text(CLIP_L_TEXT, False, clip), tokenizer=clip,
                text_encoder_2=_clip_text(CLIP_G_TEXT, True, clip), tokenizer_2=clip, scheduler=scheduler)
    if family == "sd3":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        with torch.device(device):
            return diffusers.StableDiffusion3Pipeline(
                transformer=diffusers.SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER), vae=AutoencoderKL(**SD3_VAE),
                scheduler=scheduler, text_encoder=_clip_text(CLIP_L_TEXT, True, clip), tokenizer=clip,
                text_encoder_2=_clip_text(CLIP_G_TEXT, True, clip), tokenizer_2=clip,
                text_encoder_3=_t5(t5), tokenizer_3=t5)
    if family == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        with torch.device(device):
            return diffusers.FluxPipeline(
                transformer=diffusers.FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), vae=AutoencoderKL(**FLUX_VAE),
                scheduler=scheduler, text_encoder=_clip_text(CLIP_L_TEXT, False, clip), tokenizer=clip,
                text_encoder_2=_t5(t5), tokenizer_2=t5)
    raise ValueError(f"no full-size random {family} model")


def build_random_family(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a full-size random `family` model (sd: SD 2.1-base) in the diffusers layout, in bf16
    and built on the GPU when there is one (FLUX in fp32 would take 48 GB of host memory)."""
    if family == "sd":
        return build_random_sd21_base(folder, seed)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        pipeline = random_family_pipeline(family, device)
    finally:
        torch.set_default_dtype(default)
    pipeline.save_pretrained(folder)
    mark_random_weights(folder)
    return folder


def count_family_flops(family: str) -> dict[str, int]:
    """Per sample, for `family`'s full-size published model at its native resolution, counted by
    torch's FlopCounterMode on the meta device (shapes only: no weights, no GPU, seconds) through
    the very code adapt and synthesize run (components/generators/family_models.py), with LoRA rank 16 on
    every published target:
        denoiser_lora_train_flops  one training step of the denoiser (forward and backward, base frozen)
        denoiser_fwd_flops         one evaluation of the denoiser (a sampling step, one image, no CFG pair)
        text_lora_train_flops      one prompt through the LoRA-trained CLIP encoders, forward and backward
        denoiser_params, text_params (every text encoder, T5 included), lora_params
    FLOPs do not depend on the dtype, so the models are built in fp32 (meta tensors have no
    autocast)."""
    import contextlib
    from types import SimpleNamespace

    from torch.utils.flop_counter import FlopCounterMode

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.family_models import family_model

    from datadream.costs import NATIVE_RESOLUTION

    spec, size, meta = FAMILIES[family], NATIVE_RESOLUTION[family], torch.device("meta")
    pipeline = random_family_pipeline(family, meta)
    model = family_model(pipeline, spec, meta, torch.float32, resolution=size)
    model.autocast = contextlib.nullcontext
    out = {"denoiser_params": _count(model.denoiser), "text_params": sum(map(_count, model.encoders().values()))}
    model.add_lora(rank=16, alpha=16, train_text_encoder=True)
    out["lora_params"] = sum(_count(m, trainable=True) for m in model.lora_components(True).values())

    def counted(run) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        return counter.get_total_flops()

    prompts = model.prompts(["a photo of a cat"])
    with torch.no_grad():
        text = model.encode(prompts)
    latents = torch.zeros(1, pipeline.vae.config.latent_channels, size // 8, size // 8, device=meta)
    timesteps = torch.full((1,), 0.5 if spec.objective == "flow_matching" else 500, device=meta)
    shot = [SimpleNamespace(original_size=(size, size))]

    def train_step():
        model.denoising_loss(model.denoiser, latents, torch.zeros_like(latents), timesteps, text, shot,
                             [(0, 0)]).sum().backward()

    def text_step():
        encoded = model.encode(prompts)
        sum(value.float().pow(2).mean() for value in encoded.tensors.values() if value.requires_grad).backward()

    out["denoiser_lora_train_flops"] = counted(train_step)
    out["text_lora_train_flops"] = counted(text_step)
    with torch.no_grad():
        out["denoiser_fwd_flops"] = counted(lambda: model.denoising_loss(
            model.denoiser, latents, torch.zeros_like(latents), timesteps, text, shot, [(0, 0)]))
    return out


def _count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
