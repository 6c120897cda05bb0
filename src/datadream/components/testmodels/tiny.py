"""Tiny random-weight models in the standard folder layouts, for tests, the offline demo and CPU
benchmarks. They go through exactly the `from_pretrained(folder)` code that hub ids use. Their
outputs are noise: no number computed with them says anything about model quality."""

from __future__ import annotations

from pathlib import Path

import torch

SD_FOLDER = "sd"
CLIP_FOLDER = "clip"
# Pixels per side the tiny generator is meant for (its VAE downsamples by 2).
TINY_RESOLUTION = 32


def tiny_tokenizer():
    """A byte-level CLIP tokenizer with no merges, built in code: every character is a token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def text_config_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77,
    )


def build_tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=True,  # as in SD 2.x
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            projection_dim=32, hidden_act="gelu", **text_config_kwargs(tokenizer),
        )
    )
    # Stable Diffusion 2.1-base's scheduler settings.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    mark_random_weights(folder)
    return folder


# Written beside the weights of every model built in code (here, parts.py, toy_pretrain.py),
# saying what the model is, so that what a run made from it (its report) can say what its numbers
# do not mean.
TINY_MODEL_MARKER = "datadream-tiny-model.txt"
RANDOM_WEIGHTS_NOTE = ("random weights built by datadream for tests, demos and speed benchmarks: what they"
                       " generate or predict says nothing about model quality")


def mark_tiny_model(folder: Path, note: str) -> None:
    (Path(folder) / TINY_MODEL_MARKER).write_text(note + "\n", encoding="utf-8")


def mark_random_weights(folder: Path) -> None:
    mark_tiny_model(folder, RANDOM_WEIGHTS_NOTE)


def tiny_model_note(model: str | None) -> str | None:
    """What `model` (a hub id or a local folder) is, when datadream built it in code; else None."""
    marker = Path(model) / TINY_MODEL_MARKER if model else None
    return marker.read_text(encoding="utf-8").strip() if marker and marker.is_file() else None


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, **text_config_kwargs(tokenizer)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=TINY_RESOLUTION, patch_size=8),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_RESOLUTION},
        crop_size={"height": TINY_RESOLUTION, "width": TINY_RESOLUTION},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    mark_random_weights(folder)
    return folder


def build_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """A random SiglipModel with its image processor (mean = std = 0.5) and, since SigLIP's own
    sentencepiece tokenizer cannot be built offline, the byte-level tiny tokenizer: AutoTokenizer
    loads it from the folder like any other."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    from datadream.components.classifiers.backbones import SiglipClassifier

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = length = SiglipClassifier.text_length
    config = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         **{**text_config_kwargs(tokenizer), "max_position_embeddings": length}),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=TINY_RESOLUTION, patch_size=8),
    )
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": TINY_RESOLUTION, "width": TINY_RESOLUTION}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mark_random_weights(folder)
    return folder


def build_tiny_models(folder: Path) -> dict[str, Path]:
    """Write DIR/sd (diffusers Stable Diffusion) and DIR/clip (transformers CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "sd": build_tiny_stable_diffusion(folder / SD_FOLDER),
        "clip": build_tiny_clip(folder / CLIP_FOLDER),
    }
