"""FLUX.1: CLIP's pooled embedding and T5's tokens; latents packed into 2x2 patches with position
ids; embedded guidance (dev); rectified flow (families/model.py's FlowModel)."""

from __future__ import annotations

from datadream.components.generators.families.record import Family, MMDIT_ATTENTION_TARGETS, TextEncoder

FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")

FAMILY = Family(
    name="flux", title="FLUX.1", pipeline="FluxPipeline", denoiser="transformer",
    denoiser_targets=MMDIT_ATTENTION_TARGETS + FEED_FORWARD_TARGETS,
    text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "t5", False)),
    objective="flow_matching",
    # FLUX.1-dev samples with sigmas shifted towards noise by a resolution-dependent mu
    # (scheduler use_dynamic_shifting, base_shift/max_shift), schnell unshifted; training
    # draws t the same way: a sigmoid of a normal, shifted as the scheduler shifts.
    timestep_sampling="logit-normal, shifted as the scheduler config says (dev: the resolution-dependent mu)",
    resolution=1024, guidance=3.5, steps=28, model="FluxModel",
    costs={
        "denoiser_params": 11901408320,
        "text_params": 4885371136,
        "lora_params": 46006272,
        "denoiser_lora_train_flops": 142862744813568,
        "text_lora_train_flops": 27082395648,
        "denoiser_fwd_flops": 65470006296576,
    },
    conditioning="pooled CLIP embedding, packed 2x2 latents with position ids, embedded guidance (dev)",
)
