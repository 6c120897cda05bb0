"""Every family's test models, found in its folder (components/generators/families/<name>/
testmodel.py): the tiny random ones, for tests and CPU benchmarks, and the full-size random ones,
for GPU speed and memory benchmarks on machines without hub access (speed and memory do not
depend on the weight values), and the FLOP count of a family's full-size model."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from datadream.components.generators import families
from datadream.components.testmodels.tiny import mark_random_weights


def testmodel(family: str) -> ModuleType:
    """The testmodel module of `family`'s folder, imported by name: adding a family adds no line here."""
    return import_module(f"{families.__name__}.{family}.testmodel")


def tiny_builders() -> dict[str, Callable[..., Path]]:
    """family -> build_tiny(folder, seed=0), which saves the family's tiny random model in folder."""
    return {name: testmodel(name).build_tiny for name in families.FAMILIES}


def full_size_name(family: str) -> str:
    """The published model `family`'s full-size random model reproduces."""
    return testmodel(family).FULL_SIZE_NAME


def build_random_sd21_base(folder: Path, seed: int = 0) -> Path:
    """Save a random-weight SD 2.1-base in the diffusers layout (about 5 GB in fp32). Its
    tokenizer is the tiny byte-level one: prompt lengths match, words do not."""
    torch.manual_seed(seed)
    random_family_pipeline("sd").save_pretrained(folder)
    mark_random_weights(folder)
    return folder


def random_family_pipeline(family: str, device: str | torch.device = "cpu"):
    """A full-size random-weight pipeline of `family` (sd: SD 2.1-base; sdxl: SDXL base 1.0; sd3:
    SD 3.5 Medium; flux: FLUX.1-dev), its models built on `device` in the default dtype (set it first: FLUX is
    12 B parameters). The tokenizers are the tiny ones: prompt lengths match, words do not."""
    return testmodel(family).full_size_pipeline(device)


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
    the very code adapt and synthesize run (components/generators/families/), with LoRA rank 16 on
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

    from datadream.components.generators.families.model import family_model

    spec, meta = families.FAMILIES[family], torch.device("meta")
    size = spec.resolution
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
