"""What the families' test models (components/generators/families/<name>/testmodel.py) are built
from: the tiny T5 tokenizer and the tiny CLIP, T5 and VAE of the tiny models (the shapes of
diffusers' own pipeline tests), and the published text towers and VAEs the full-size random
models share. The tokenizers are tiny in both: prompt lengths match, words do not."""

from __future__ import annotations

from pathlib import Path

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


def tiny_clip(with_projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=hidden, hidden_act="gelu",
                            **text_config_kwargs(tiny_tokenizer()))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def tiny_vae(latent_channels: int, flow: bool):
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


def save_marked(pipeline, folder: Path) -> Path:
    pipeline.save_pretrained(folder)
    mark_random_weights(folder)
    return folder


# SD 2.1-base's VAE: SDXL's and the flow families' keep its layout (parameter counts are checked in
# tests/test_latents.py and tests/test_families.py).
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
FLOW_VAE = dict(SD21_BASE_VAE, latent_channels=16, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False)
# OpenAI CLIP ViT-L/14's text tower (SDXL, SD 3 and FLUX) and OpenCLIP ViT-bigG/14's (SDXL, SD 3).
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77)
CLIP_G_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu", max_position_embeddings=77)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)


def clip_text(config: dict, projection: bool, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    kind = CLIPTextModelWithProjection if projection else CLIPTextModel
    return kind(CLIPTextConfig(vocab_size=49408, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config))


def t5_xxl(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                   decoder_start_token_id=tokenizer.pad_token_id))
