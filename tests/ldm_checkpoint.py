"""Test helper: write a diffusers Stable Diffusion 2.x pipeline as one original-layout (LDM)
checkpoint file, the way `v2-1_512-ema-pruned.safetensors` is laid out, so that the single-file
loading path can be tested on tiny models. diffusers converts only *from* this layout; this is
the inverse for the blocks the tiny model has (SD 2.x: OpenCLIP text encoder, linear projections)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(state: dict, config) -> dict:
    n = config.layers_per_block
    up_has_attn = ["CrossAttn" in t for t in config.up_block_types]
    out = {}
    for key, value in state.items():
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            block = (n + 1) * i + j + 1
            new = f"input_blocks.{block}.0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(n + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            block = (n + 1) * i + j
            new = f"output_blocks.{block}.0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            new = f"output_blocks.{(n + 1) * i + n}.{2 if up_has_attn[i] else 1}.conv.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        else:
            new = _rename(key, {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"})
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, config) -> dict:
    blocks = len(config.block_out_channels)
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
            if value.ndim == 2:  # LDM keeps these projections as 1x1 convolutions
                value = value[:, :, None, None]
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + new] = value
    return out


def open_clip_to_ldm(state: dict) -> dict:
    prefix = "cond_stage_model.model."
    out = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        # transformers >= 5.6 dropped the `text_model.` level of CLIPTextModel's keys.
        key = key if key.startswith("text_model.") else "text_model." + key
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault(f"{m[1]}.{m[3]}", {})[m[2]] = value
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{_rename(m[2], _OPENCLIP)}"] = value
    for layer_kind, parts in qkv.items():
        layer, kind = layer_kind.split(".")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def write_ldm_checkpoint(pipeline, path: Path) -> Path:
    """One .safetensors file with the pipeline's UNet, VAE and text encoder in the LDM layout."""
    from safetensors.torch import save_file

    state = {}
    state.update(unet_to_ldm(pipeline.unet.state_dict(), pipeline.unet.config))
    state.update(vae_to_ldm(pipeline.vae.state_dict(), pipeline.vae.config))
    state.update(open_clip_to_ldm(pipeline.text_encoder.state_dict()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
