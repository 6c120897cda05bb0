"""SD 3/3.5: both CLIPs' penultimate states padded to T5's width and followed by T5's tokens,
pooled embeddings of both CLIPs; rectified flow (families/model.py's FlowModel)."""

from __future__ import annotations

from datadream.components.generators.families.record import Family, MMDIT_ATTENTION_TARGETS, TextEncoder

FAMILY = Family(
    name="sd3", title="SD 3/3.5", pipeline="StableDiffusion3Pipeline", denoiser="transformer",
    denoiser_targets=MMDIT_ATTENTION_TARGETS,
    text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "clip", True),
                   TextEncoder("text_encoder_3", "t5", False)),
    objective="flow_matching",
    # The SD3 paper's rf/lognorm(0.00, 1.00): t = sigmoid(n), n ~ N(0, 1); the default of
    # diffusers' train_dreambooth_lora_sd3.py (weighting_scheme=logit_normal), which also
    # draws it on the scheduler's shifted schedule.
    timestep_sampling="logit-normal (mean 0, std 1), shifted by the scheduler's shift",
    resolution=1024, guidance=7.0, steps=28, model="SD3Model",
    costs={
        "denoiser_params": 2243171520,
        "text_params": 5580620800,
        "lora_params": 15810560,
        "denoiser_lora_train_flops": 25052388065280,
        "text_lora_train_flops": 225438183424,
        "denoiser_fwd_flops": 10706352390144,
    },
    conditioning="pooled text embeddings of both CLIP encoders",
)
