"""LoRA on Stable Diffusion: the published targets and init, and the diffusers file layout.

UNet attention projections (to_q, to_k, to_v, to_out.0) and text-encoder attention projections
(q_proj, k_proj, v_proj, out_proj); gaussian init with B = 0; no dropout. Files are written by
diffusers' own `save_lora_weights`, with the adapter metadata, so that stock
`StableDiffusionPipeline.load_lora_weights` restores alpha exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"


def lora_config(rank: int, alpha: float, targets: tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def add_lora(unet, text_encoder, rank: int, alpha: float, train_text_encoder: bool) -> list[torch.nn.Parameter]:
    """Freeze the base weights, add the adapters, and return the trainable (fp32) parameters."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, UNET_TARGETS), adapter_name=ADAPTER)
    modules = [unet]
    if train_text_encoder:
        text_encoder.add_adapter(lora_config(rank, alpha, TEXT_ENCODER_TARGETS), adapter_name=ADAPTER)
        modules.append(text_encoder)
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    for param in params:
        # The frozen base may be bf16; the trained LoRA weights and their optimiser state stay fp32.
        param.data = param.data.float()
    return params


def reset_lora(modules: list[torch.nn.Module], seed: int) -> None:
    """Fresh LoRA weights, gaussian A (std 1/r, as peft's "gaussian" init) and zero B, from `seed`
    alone, without touching the global RNG."""
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                # Drawn on the CPU so that a seed gives the same weights on any device.
                down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                std = 1.0 / layer.r[ADAPTER]
                down.data.copy_(torch.randn(down.shape, generator=generator) * std)
                up.data.zero_()


def save_sd_lora(directory: Path, unet, text_encoder, train_text_encoder: bool, index: int | None = None) -> Path:
    """Write the adapter (adapter `index` of a grouped model, see grouped_lora) in the diffusers
    layout, with its metadata."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from datadream.components.grouped_lora import adapter_state

    def collect(module):
        state = get_peft_model_state_dict(module) if index is None else adapter_state(module, index)
        return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}

    def metadata(module):
        # peft keeps target_modules as a set: sorted, the file's bytes do not depend on hashing.
        config = module.peft_config[ADAPTER].to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        config.pop("base_model_name_or_path", None)
        return config

    kwargs = {"unet_lora_layers": collect(unet), "unet_lora_adapter_metadata": metadata(unet)}
    if train_text_encoder:
        kwargs["text_encoder_lora_layers"] = collect(text_encoder)
        kwargs["text_encoder_lora_adapter_metadata"] = metadata(text_encoder)
    StableDiffusionPipeline.save_lora_weights(directory, safe_serialization=True, **kwargs)
    sort_safetensors_metadata(directory / "pytorch_lora_weights.safetensors")
    return directory


def sort_safetensors_metadata(path: Path) -> None:
    """safetensors writes its metadata map in hash order, which differs from process to process,
    so two identical trainings would give files that differ in their header. Rewritten with sorted
    keys, identical runs give identical bytes. The header is the format's length-prefixed JSON;
    only the order inside `__metadata__` changes, so its padded length and every offset stay."""
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        if not metadata:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > length:  # another serialiser's escaping: leave the file as it is
            return
        handle.seek(8)
        handle.write(text + b" " * (length - len(text)))
