"""SD 1.x/2.x: one CLIP text encoder (its last hidden state); ε or v prediction, t uniform over the
DDPM steps. Its tiny test model is components/testmodels/tiny.py's, built beside the tiny CLIP
every test uses."""

from __future__ import annotations

from datadream.components.generators.families.record import Family, TextEncoder, UNET_TARGETS

FAMILY = Family(
    name="sd", title="SD 1.x/2.x", pipeline="StableDiffusionPipeline", denoiser="unet",
    denoiser_targets=UNET_TARGETS,
    text_encoders=(TextEncoder("text_encoder", "clip", True),),
    objective="epsilon or v_prediction", timestep_sampling="uniform over the 1000 DDPM steps",
    resolution=512, guidance=7.5, steps=50, model="SDModel",
    costs={
        "denoiser_params": 865910724,
        "text_params": 340387840,
        "lora_params": 6334464,
        "denoiser_lora_train_flops": 1725552676864,
        "text_lora_train_flops": 91713785856,
        "denoiser_fwd_flops": 808835182592,
    },
)
