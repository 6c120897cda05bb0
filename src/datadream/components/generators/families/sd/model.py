"""SD 1.x/2.x as a FamilyModel: the last hidden state of its CLIP encoder, and the DDPM target
(ε or v, as the scheduler config says) at t uniform over the training steps. SDXL trains the same
way (sdxl/model.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datadream.components.generators.families.model import Conditioning, FamilyModel, Prompts


class SDModel(FamilyModel):
    # -- prompts ------------------------------------------------------------------------------
    def prompts(self, texts: list[str]) -> Prompts:
        return Prompts({"text_encoder": self._ids(self.pipeline.tokenizer, texts)}, {})

    def encode(self, prompts: Prompts) -> Conditioning:
        """The conditioning of each prompt, through the encoders as they are (with or without
        their adapters, with or without gradients: the caller decides)."""
        return Conditioning({"text": self.run_encoder("text_encoder", prompts.ids["text_encoder"])[0]})

    # -- training -----------------------------------------------------------------------------
    @property
    def scheduler(self):
        if not hasattr(self, "_scheduler"):
            from diffusers import DDPMScheduler

            self._scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)
        return self._scheduler

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (count,), generator=generator)

    def denoising_loss(self, forward, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                       text: Conditioning, shots: list, offsets: list[tuple[int, int]]) -> torch.Tensor:
        """The per-sample MSE of the family's training target. `forward` is the denoiser (or its
        compiled form); `shots` and `offsets` are the samples' images and crops."""
        timesteps = timesteps.to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with self.autocast():
            prediction = forward(noisy, timesteps, text["text"], **self.extra_inputs(text, shots, offsets)).sample
        return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)

    def extra_inputs(self, text: Conditioning, shots: list, offsets: list[tuple[int, int]]) -> dict:
        return {}
