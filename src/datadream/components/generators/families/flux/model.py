"""FLUX.1 as a FamilyModel: rectified flow (families/model.py's FlowModel) on 2x2-packed latents,
conditioned on CLIP's pooled embedding and T5, with FLUX.1-dev's embedded guidance."""

from __future__ import annotations

import torch

from datadream.components.generators.families.flux import FAMILY
from datadream.components.generators.families.model import Conditioning, FlowModel, Prompts


class FluxModel(FlowModel):
    t5 = "text_encoder_2"

    def t5_tokens(self) -> int:
        # FLUX.1-schnell (no guidance embedding) reads 256 T5 tokens in Black Forest Labs' reference
        # code, FLUX.1-dev 512.
        return 512 if self.denoiser.config.get("guidance_embeds", True) else 256

    def prompts(self, texts: list[str]) -> Prompts:
        return Prompts({"text_encoder": self._ids(self.pipeline.tokenizer, texts)}, {"t5": self.t5_features(texts)})

    def encode(self, prompts: Prompts) -> Conditioning:
        # As FluxPipeline.encode_prompt: CLIP's pooled output, T5's tokens.
        pooled = self.run_encoder("text_encoder", prompts.ids["text_encoder"], output_hidden_states=False).pooler_output
        t5 = prompts.fixed["t5"]
        return Conditioning({"text": t5.to(pooled.dtype), "pooled": pooled})

    def tokens_per_side(self) -> int:
        return self.latent_size // 2

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxPipeline

        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)

    def predict(self, forward, noisy, sigma, text):
        from diffusers import FluxPipeline

        batch, _, height, width = noisy.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, noisy.dtype)
        text_ids = torch.zeros(text["text"].shape[1], 3, device=self.device, dtype=noisy.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            # FLUX.1-dev's distilled guidance is an input. One setting, synthesize.guidance, feeds
            # training and sampling alike (its default for FLUX is the published 3.5, which
            # diffusers' FLUX LoRA script trains with), so the adapter learns the guidance it is
            # sampled with.
            guidance = torch.full((batch,), self.guidance, device=self.device, dtype=torch.float32)
        return forward(hidden_states=self.layout(noisy), timestep=sigma, guidance=guidance,
                       pooled_projections=text["pooled"], encoder_hidden_states=text["text"],
                       txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]

    guidance = FAMILY.guidance  # the trainer sets synthesize.guidance
