"""SDXL: both CLIP encoders' penultimate hidden states side by side, the second one's pooled
embedding, and the size/crop "time ids" (original size, crop top-left, target size), as the UNet
was trained with; ε or v prediction."""

from __future__ import annotations

from datadream.components.generators.families.record import Family, TextEncoder, UNET_TARGETS

FAMILY = Family(
    name="sdxl", title="SDXL", pipeline="StableDiffusionXLPipeline", denoiser="unet",
    denoiser_targets=UNET_TARGETS,
    text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "clip", True)),
    objective="epsilon or v_prediction", timestep_sampling="uniform over the 1000 DDPM steps",
    resolution=1024, guidance=5.0, steps=50, model="SDXLModel",
    costs={
        "denoiser_params": 2567463684,
        "text_params": 817720320,
        "lora_params": 29646848,
        "denoiser_lora_train_flops": 14187923292160,
        "text_lora_train_flops": 224279123968,
        "denoiser_fwd_flops": 6802618204160,
    },
    conditioning="pooled text embeddings and add_time_ids (original size, crop top-left, target size)",
)
