"""What one sample costs on a GPU: FLOPs, memory and disk, as ESTIMATES for `datadream plan`.

Torch-free. The generator families' FLOPs (each family record's `costs`, in
components/generators/families/) are counted through the very code adapt and synthesize run, on
each family's full-size published architecture, by torch's FlopCounterMode on the meta device
(`python benchmarks/cost_constants.py --families`; tests/test_costs.py counts again and
compares). The other figures (MEASURED) were counted once
with `python benchmarks/cost_constants.py` on full-size random-weight models on a CPU. A GPU's time
is FLOPs / (its dense bf16/fp16 tensor peak x an assumed utilisation). No figure here was measured
on a GPU: docs/benchmarks.md holds no GPU measurement yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from datadream.components.generators.families import FAMILIES

# Printed by benchmarks/cost_constants.py (CPU, torch 2.13.0, diffusers 0.42.1, transformers 5.23.0).
# FLOPs per sample (one image, one prompt); bytes per sample in bf16.
MEASURED: dict[str, int] = {
    "clip_image_fwd_flops": 33696251904,
    "clip_image_lora_train_flops": 67151609856,
    "clip_image_train_activation_bytes": 72825104,
    "clip_lora_params": 983040,
    "clip_params": 149620737,
    "clip_text_fwd_flops": 1510473728,
    "clip_text_lora_train_flops": 3036020736,
    "clip_text_train_activation_bytes": 5611920,
    "sd_text_train_activation_bytes": 57063336,
    "sd_unet_infer_peak_bytes": 68351104,
    "sd_unet_train_activation_bytes": 861468416,
    "sd_vae_decode_flops": 2480159195136,
    "sd_vae_decode_peak_bytes": 402685952,
    "sd_vae_encode_flops": 1082298728448,
    "sd_vae_params": 83653863,
}

CLIP_FP32_BYTES = 4  # the classifier keeps CLIP's weights in fp32 and autocasts
LORA_STATE_BYTES = 16  # fp32 weight, gradient, and AdamW's two moments per trainable parameter
CUDA_OVERHEAD_GB = 1.5  # CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation: assumed
USABLE_FRACTION = 0.85  # the batched engine sizes its groups to 85% of free memory, so we do too
# One natural photograph (matplotlib's sample grace_hopper.jpg) resized and centre-cropped to
# 512 px, saved as PNG with PIL's defaults as stage 2 does: 394 KiB. Synthetic images have
# photo-like content; we budget 400 KiB per 512 px image and scale with the pixel count.
PNG_BYTES_512 = 400 * 1024
UTILISATION = 0.35  # assumed fraction of the tensor-core peak a LoRA step or a sampler step reaches
PNDM_EXTRA_STEP = 1  # SD 2.1-base's PNDM (PLMS, skip_prk_steps) evaluates the UNet steps + 1 times


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_gb: float
    tflops: float  # dense bf16 (or fp16 where there is no bf16) tensor-core peak, vendor datasheet
    bf16: bool

    @property
    def precision(self) -> str:
        """What runtime.precision=auto picks on it."""
        return "bf16" if self.bf16 else "fp16"

    def seconds(self, flops: float) -> float:
        return flops / (self.tflops * 1e12 * UTILISATION)


GPUS: dict[str, Gpu] = {g.key: g for g in (
    Gpu("t4", "NVIDIA T4", 16, 65, bf16=False),
    Gpu("v100", "NVIDIA V100 16 GB", 16, 125, bf16=False),
    Gpu("a10", "NVIDIA A10", 24, 125, bf16=True),
    Gpu("l4", "NVIDIA L4", 24, 121, bf16=True),
    Gpu("rtx3090", "NVIDIA RTX 3090", 24, 71, bf16=True),
    Gpu("rtx4090", "NVIDIA RTX 4090", 24, 165, bf16=True),
    Gpu("a100-40gb", "NVIDIA A100 40 GB", 40, 312, bf16=True),
    Gpu("l40s", "NVIDIA L40S", 48, 362, bf16=True),
    Gpu("a100-80gb", "NVIDIA A100 80 GB", 80, 312, bf16=True),
    Gpu("h100", "NVIDIA H100 SXM 80 GB", 80, 989, bf16=True),
)}
BY_MEMORY = {"16": "t4", "24": "a10", "40": "a100-40gb", "80": "a100-80gb"}
DEFAULT_GPU = "a10"


def find_gpu(name: str | None) -> Gpu:
    """A GPU class by memory (16, 24, 40, 80) or by name (a10, h100, ...)."""
    from datadream.errors import UserError

    key = (name or DEFAULT_GPU).strip().lower().removesuffix("gb").removeprefix("nvidia-").replace(" ", "")
    key = BY_MEMORY.get(key, key)
    if key not in GPUS:
        raise UserError(f"--gpu {name!r}: unknown GPU; give 16, 24, 40 or 80 (GB) or one of {', '.join(GPUS)}")
    return GPUS[key]


def value(name: str) -> float:
    return float(MEASURED[name])


def dtype_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


GB = 1024 ** 3


def family_value(family: str, name: str) -> float:
    """A figure of the family record's `costs`; an unknown family ("" when the model could not be
    read) is priced as SD 2.1-base (plan says so)."""
    return float(FAMILIES.get(family, FAMILIES["sd"]).costs[name])


def native_resolution(family: str) -> int:
    """Where the family's costs were counted (an unknown family is priced as SD 2.1-base)."""
    return FAMILIES.get(family, FAMILIES["sd"]).resolution


def pixels(family: str, resolution: int) -> float:
    """`resolution`'s pixel count relative to the family's native one (where its costs were
    counted). Costs scale linearly with it: exact for convolutions and MLPs, an underestimate above
    the native size where attention, which grows with its square, is a large share."""
    return (resolution / native_resolution(family)) ** 2


def denoiser_evaluations(family: str, steps: int, guidance: float, sampler: str = "default") -> int:
    """Denoiser calls per image: SD 2.1's PNDM (its default sampler) takes one more than `steps`
    (the other families' Euler samplers take `steps`), and classifier-free guidance (scale > 1, as
    diffusers decides) doubles each call's batch, except for FLUX, whose guidance is an input."""
    extra = PNDM_EXTRA_STEP if sampler == "default" and family in ("", "sd") else 0
    return (steps + extra) * guidance_pair(family, guidance)


def guidance_pair(family: str, guidance: float) -> int:
    return 2 if guidance > 1 and family != "flux" else 1


def adapt_sample_flops(family: str, resolution: int) -> float:
    """One training sample of stage 1: the denoiser's LoRA step and the crop's VAE encode (the
    VAE's cost counted at 512 px, scaled by pixels)."""
    return (family_value(family, "denoiser_lora_train_flops") * pixels(family, resolution)
            + value("sd_vae_encode_flops") * (resolution / 512) ** 2)


def image_flops(family: str, resolution: int, evaluations: int) -> float:
    """One synthetic image: `evaluations` denoiser calls and the VAE decode."""
    return (evaluations * family_value(family, "denoiser_fwd_flops") * pixels(family, resolution)
            + value("sd_vae_decode_flops") * (resolution / 512) ** 2)


def _activation_scale(family: str, flops_name: str) -> float:
    """Activations were measured on SD 2.1-base only: another family's are assumed to grow with
    its FLOPs (an assumption, not a measurement)."""
    return family_value(family, flops_name) / family_value("sd", flops_name)


def _generator_weights(family: str, precision: str) -> float:
    weights = (family_value(family, "denoiser_params") + family_value(family, "text_params")) * dtype_bytes(precision)
    return weights + value("sd_vae_params") * (4 if precision == "fp16" else dtype_bytes(precision))  # fp16: VAE in fp32


def adapt_memory(precision: str, group: int, batch: int, prompts_per_step: int, text_lora: bool,
                 gradient_checkpointing: bool = False, pixels: float = 1.0, family: str = "sd") -> float:
    """Peak bytes of stage 1 training `group` adapters at once (1: the sequential engine)."""
    return _generator_weights(family, precision) + CUDA_OVERHEAD_GB * GB + group * adapt_memory_per_adapter(
        precision, batch, prompts_per_step, text_lora, gradient_checkpointing, pixels, family)


def adapt_memory_per_adapter(precision: str, batch: int, prompts_per_step: int, text_lora: bool,
                              gradient_checkpointing: bool = False, pixels: float = 1.0, family: str = "sd") -> float:
    """`pixels`: the crop's pixel count relative to the family's native size (see `pixels`)."""
    scale = dtype_bytes(precision) / 2  # the activations were measured in bf16
    denoiser = (value("sd_unet_train_activation_bytes") * _activation_scale(family, "denoiser_lora_train_flops")
                * batch * scale * pixels)
    if gradient_checkpointing:
        denoiser *= CHECKPOINTED_FRACTION
    text = (value("sd_text_train_activation_bytes") * _activation_scale(family, "text_lora_train_flops")
            * prompts_per_step * scale if text_lora else 0.0)
    return denoiser + text + family_value(family, "lora_params") * LORA_STATE_BYTES


# Recomputing each UNet block in the backward keeps roughly its inputs only: a common rule of
# thumb, not a measurement.
CHECKPOINTED_FRACTION = 0.3


def largest_group(gpu: Gpu, precision: str, batch: int, prompts_per_step: int, text_lora: bool,
                  gradient_checkpointing: bool = False, pixels: float = 1.0, family: str = "sd") -> int:
    """Classes per batched group that fit in the usable part of the GPU (0: not even one)."""
    base = adapt_memory(precision, 0, batch, prompts_per_step, text_lora, gradient_checkpointing, family=family)
    per = adapt_memory_per_adapter(precision, batch, prompts_per_step, text_lora, gradient_checkpointing, pixels,
                                   family)
    return max(0, int((USABLE_FRACTION * gpu.memory_gb * GB - base) // per))


def synthesize_memory(precision: str, batch: int, cfg_factor: int, pixels: float = 1.0, family: str = "sd") -> float:
    scale = dtype_bytes(precision) / 2
    sampling = (value("sd_unet_infer_peak_bytes") * _activation_scale(family, "denoiser_fwd_flops")
                * batch * cfg_factor * scale * pixels)
    # The VAE decodes at the image's pixel count, whatever the family's native size.
    decoding = value("sd_vae_decode_peak_bytes") * batch * scale * pixels * (native_resolution(family) / 512) ** 2
    return _generator_weights(family, precision) + CUDA_OVERHEAD_GB * GB + max(sampling, decoding)


def classifier_memory(batch: int, prompts: int, precision: str) -> float:
    """Stage 3 training: every class prompt goes through the (trained) text tower each step."""
    scale = dtype_bytes(precision) / 2
    activations = (value("clip_image_train_activation_bytes") * batch
                   + value("clip_text_train_activation_bytes") * prompts) * scale
    return (value("clip_params") * CLIP_FP32_BYTES + value("clip_lora_params") * LORA_STATE_BYTES
            + activations + CUDA_OVERHEAD_GB * GB)


def evaluate_memory(batch: int) -> float:
    # No gradients: a small fraction of the training activations of one batch (rule of thumb).
    return (value("clip_params") * CLIP_FP32_BYTES + 0.25 * value("clip_image_train_activation_bytes") * batch
            + CUDA_OVERHEAD_GB * GB)
