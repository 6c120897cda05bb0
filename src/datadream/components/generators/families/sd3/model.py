"""SD 3/3.5 as a FamilyModel: rectified flow (families/model.py's FlowModel) conditioned on both
CLIPs and T5."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datadream.components.generators.families.model import Conditioning, FlowModel, Prompts


class SD3Model(FlowModel):
    t5 = "text_encoder_3"

    def t5_tokens(self) -> int:
        return 256  # StableDiffusion3Pipeline's max_sequence_length

    def prompts(self, texts: list[str]) -> Prompts:
        return Prompts({"text_encoder": self._ids(self.pipeline.tokenizer, texts),
                        "text_encoder_2": self._ids(self.pipeline.tokenizer_2, texts)},
                       {"t5": self.t5_features(texts)})

    def encode(self, prompts: Prompts) -> Conditioning:
        # As StableDiffusion3Pipeline.encode_prompt: both CLIPs' penultimate layers side by side,
        # zero-padded to T5's width, then T5's tokens; both pooled embeddings side by side.
        first = self.run_encoder("text_encoder", prompts.ids["text_encoder"], output_hidden_states=True)
        second = self.run_encoder("text_encoder_2", prompts.ids["text_encoder_2"], output_hidden_states=True)
        clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        t5 = prompts.fixed["t5"]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning({"text": torch.cat([clip, t5.to(clip.dtype)], dim=-2),
                             "pooled": torch.cat([first[0], second[0]], dim=-1)})

    def predict(self, forward, noisy, sigma, text):
        # The pipeline's t: σ on the scheduler's training-step scale.
        timestep = sigma * self.scheduler.config.num_train_timesteps
        return forward(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text["text"],
                       pooled_projections=text["pooled"], return_dict=False)[0]
