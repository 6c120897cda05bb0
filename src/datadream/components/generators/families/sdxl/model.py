"""SDXL as a FamilyModel: SD's training (sd/model.py) with both CLIP encoders and the size/crop
conditioning."""

from __future__ import annotations

import torch

from datadream.components.generators.families.model import Conditioning, Prompts
from datadream.components.generators.families.sd.model import SDModel


class SDXLModel(SDModel):
    def prompts(self, texts: list[str]) -> Prompts:
        return Prompts({"text_encoder": self._ids(self.pipeline.tokenizer, texts),
                        "text_encoder_2": self._ids(self.pipeline.tokenizer_2, texts)}, {})

    def encode(self, prompts: Prompts) -> Conditioning:
        # As StableDiffusionXLPipeline.encode_prompt: penultimate layers side by side, the pooled
        # (projected) embedding of the second encoder.
        first = self.run_encoder("text_encoder", prompts.ids["text_encoder"], output_hidden_states=True)
        second = self.run_encoder("text_encoder_2", prompts.ids["text_encoder_2"], output_hidden_states=True)
        text = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return Conditioning({"text": text, "pooled": second[0]})

    def extra_inputs(self, text: Conditioning, shots: list, offsets: list[tuple[int, int]]) -> dict:
        # diffusers' SDXL training scripts: the image's size before resizing, the crop's top-left
        # in the resized image, the training resolution. Sampling asks for an uncropped image of
        # the target size (its default time ids).
        size = self.resolution
        time_ids = torch.tensor([[*shot.original_size, top, left, size, size]
                                 for shot, (top, left) in zip(shots, offsets)], device=self.device)
        return {"added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": time_ids.to(text["pooled"].dtype)}}
