"""The generator families behind one small interface: what carries LoRA, how prompts become the
denoiser's conditioning, the training target, and the stock pipeline's sampling arguments.

Both adapt engines, dataset-wise training, the adapter swap and the file layout go through a
`FamilyModel`, so none of them names a UNet or a text encoder. The published settings behind
each family (targets, objective, timestep sampling) are the records of components/generators/families.py.

- sd (SD 1.x/2.x): one CLIP encoder (its last hidden state); ε or v prediction, t uniform over
  the DDPM steps.
- sdxl: both CLIP encoders' penultimate hidden states side by side, the second one's pooled
  embedding, and the size/crop "time ids" (original size, crop top-left, target size), as the
  UNet was trained with; ε or v prediction.
- sd3 (SD 3/3.5): both CLIPs' penultimate states padded to T5's width and followed by T5's
  tokens, pooled embeddings of both CLIPs; rectified flow.
- flux (FLUX.1): CLIP's pooled embedding and T5's tokens; latents packed into 2x2 patches with
  position ids; embedded guidance (dev); rectified flow.

Rectified flow (sd3, flux): x_t = (1 - σ) x_0 + σ ε, the model predicts ε - x_0, and the loss is
its plain MSE. σ = sigmoid(n), n ~ N(0, 1) (the SD3 paper's logit-normal sampling), shifted the
way the model's scheduler config shifts its sampling sigmas: by its fixed `shift` (SD 3's 3.0;
FLUX.1-schnell's 1.0, no shift), or, with `use_dynamic_shifting` (FLUX.1-dev), by the mu that
grows with the image's token count, so training sees the noise levels sampling visits.
T5 stays frozen (families.py says why): its features are computed once per prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from datadream.components.generators.families import CLIP_TEXT_TARGETS, FAMILIES, Family
from datadream.components.generators.lora_weights import ADAPTER
# Prompt length of the T5 encoder, in training and sampling alike (the stock pipelines' defaults;
# a tokenizer that takes fewer, such as the tiny test models', caps it).
T5_TOKENS = {"sd3": 256, "flux": 512}
# FLUX.1-schnell (no guidance embedding) reads 256 T5 tokens in Black Forest Labs' reference code,
# FLUX.1-dev 512.
FLUX_SCHNELL_T5_TOKENS = 256


@dataclass
class Conditioning:
    """The prompt side of the denoiser's input: tensors whose first dimension is one row per
    prompt (or, once selected, per sample)."""

    tensors: dict[str, torch.Tensor]

    def select(self, rows: torch.Tensor) -> "Conditioning":
        return Conditioning({name: value[rows] for name, value in self.tensors.items()})

    def repeat(self, times: int) -> "Conditioning":
        """Each row `times` times in a row (prompt k for the k-th group of a batched step)."""
        return Conditioning({name: value.repeat_interleave(times, dim=0) for name, value in self.tensors.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass
class Prompts:
    """A unit's prompts ready to encode: the token ids of each CLIP encoder, and the frozen T5
    features (computed once)."""

    ids: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]

    def rows(self, rows: torch.Tensor | None) -> "Prompts":
        if rows is None:
            return self
        return Prompts({k: v[rows] for k, v in self.ids.items()}, {k: v[rows] for k, v in self.fixed.items()})


class FamilyModel:
    """A loaded pipeline seen through its family: SD 1.x/2.x here, the others below."""

    def __init__(self, pipeline, family: Family, device: torch.device, dtype: torch.dtype, resolution: int = 0):
        self.pipeline, self.family, self.device, self.dtype = pipeline, family, device, dtype
        self.offloaded: set[str] = set()  # text encoders kept in CPU memory between uses
        self.resolution = resolution  # the training crop size, in pixels
        self.latent_size = resolution // 2 ** (len(pipeline.vae.config.block_out_channels) - 1)

    # -- what carries LoRA --------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.family.denoiser)

    def encoders(self) -> dict[str, torch.nn.Module]:
        """Every text encoder of the pipeline, by component name."""
        return {enc.attribute: getattr(self.pipeline, enc.attribute) for enc in self.family.text_encoders}

    def lora_components(self, train_text_encoder: bool) -> dict[str, torch.nn.Module]:
        """Component name -> module carrying an adapter: the denoiser first, then the CLIP
        encoders when they are trained."""
        components = {self.family.denoiser: self.denoiser}
        if train_text_encoder:
            components.update({name: getattr(self.pipeline, name) for name in self.family.text_lora_targets})
        return components

    def add_lora(self, rank: int, alpha: float, train_text_encoder: bool) -> list[torch.nn.Parameter]:
        """Freeze the base weights, add the family's published adapters, and return the trainable
        (fp32) parameters."""
        from peft import LoraConfig

        def config(targets):
            return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                              target_modules=list(targets))

        self.denoiser.requires_grad_(False)
        for encoder in self.encoders().values():
            encoder.requires_grad_(False)
        params = []
        for name, module in self.lora_components(train_text_encoder).items():
            targets = self.family.denoiser_targets if name == self.family.denoiser else CLIP_TEXT_TARGETS
            module.add_adapter(config(targets), adapter_name=ADAPTER)
            params += [p for p in module.parameters() if p.requires_grad]
        for param in params:
            # The frozen base may be bf16; the trained LoRA weights and their optimiser state stay fp32.
            param.data = param.data.float()
        return params

    # -- the file layout ----------------------------------------------------------------------
    @property
    def converts_keys(self) -> bool:
        """UNet families' files use diffusers' LoRA key names (what their official training
        scripts write); the transformer families keep peft's, as theirs do."""
        return self.family.denoiser == "unet"

    def file_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from diffusers.utils import convert_state_dict_to_diffusers

        if not self.converts_keys:
            return dict(state)
        converted = convert_state_dict_to_diffusers(dict(state))
        if len(converted) != len(state):
            raise RuntimeError("unexpected LoRA key conversion")
        return converted

    def save_lora(self, directory: Path, train_text_encoder: bool, index: int | None = None) -> None:
        """Write the adapter (adapter `index` of a grouped model, see grouped_lora) with the stock
        pipeline's own `save_lora_weights`, with the adapter metadata that restores alpha."""
        import diffusers
        from peft.utils import get_peft_model_state_dict

        from datadream.components.generators.grouped_lora import adapter_state

        kwargs = {}
        for name, module in self.lora_components(train_text_encoder).items():
            state = get_peft_model_state_dict(module) if index is None else adapter_state(module, index)
            kwargs[f"{name}_lora_layers"] = {k: v.detach().float().cpu().contiguous()
                                              for k, v in self.file_keys(state).items()}
            config = module.peft_config[ADAPTER].to_dict()
            # peft keeps target_modules as a set: sorted, the file's bytes do not depend on hashing.
            config["target_modules"] = sorted(config["target_modules"])
            config.pop("base_model_name_or_path", None)
            kwargs[f"{name}_lora_adapter_metadata"] = config
        getattr(diffusers, self.family.pipeline).save_lora_weights(directory, safe_serialization=True, **kwargs)

    def place_encoders(self, offload: bool, train_text_encoder: bool) -> None:
        """Move the text encoders to the device, or (`offload`) leave the frozen ones in CPU memory:
        they run once per adapter, so moving them in for that call costs little next to training."""
        for enc in self.family.text_encoders:
            frozen = enc.kind == "t5" or not (train_text_encoder and enc.lora)
            module = getattr(self.pipeline, enc.attribute)
            if offload and frozen:
                self.offloaded.add(enc.attribute)
                module.to("cpu")
            else:
                module.to(self.device)

    def run_encoder(self, name: str, ids: torch.Tensor, **kwargs):
        """Text encoder `name` on `ids`, brought to the device for the call if it is offloaded."""
        module = getattr(self.pipeline, name)
        if name not in self.offloaded:
            return module(ids, **kwargs)
        module.to(self.device)
        try:
            return module(ids, **kwargs)
        finally:
            module.to("cpu")

    # -- prompts ------------------------------------------------------------------------------
    def _ids(self, tokenizer, prompts: list[str], length: int | None = None) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", truncation=True,
                         max_length=length or tokenizer.model_max_length, return_tensors="pt").input_ids.to(self.device)

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

    def latents(self, sample: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample as the denoiser's input."""
        config = self.pipeline.vae.config
        shift = getattr(config, "shift_factor", None)
        return sample * config.scaling_factor if shift is None else (sample - shift) * config.scaling_factor

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

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- sampling -----------------------------------------------------------------------------
    def sample_kwargs(self) -> dict:
        """What the stock pipeline's call needs besides prompt, size, steps, guidance and seeds."""
        return {}


class SDXLModel(FamilyModel):
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


class FlowModel(FamilyModel):
    """The rectified-flow families (sd3, flux)."""

    t5 = "text_encoder_3"

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def t5_tokenizer(self):
        # text_encoder_3 -> tokenizer_3, text_encoder_2 -> tokenizer_2
        return getattr(self.pipeline, "tokenizer" + self.t5.removeprefix("text_encoder"))

    def t5_length(self) -> int:
        published = T5_TOKENS[self.family.name]
        if self.family.name == "flux" and not self.denoiser.config.get("guidance_embeds", True):
            published = FLUX_SCHNELL_T5_TOKENS
        return min(published, self.t5_tokenizer.model_max_length)

    def t5_features(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.run_encoder(self.t5, self._ids(self.t5_tokenizer, texts, self.t5_length()))[0]

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """σ in (0, 1): a logit-normal draw, shifted as the scheduler shifts its sampling sigmas."""
        return self.shift(torch.sigmoid(torch.randn(count, generator=generator)))

    # Image tokens per side of the latent: FLUX packs 2x2 latents, SD 3 patches them.
    def tokens_per_side(self) -> int:
        return self.latent_size // self.denoiser.config.patch_size

    def shift(self, sigma: torch.Tensor) -> torch.Tensor:
        config = self.scheduler.config
        if config.get("use_dynamic_shifting"):
            # The pipelines' mu for this many image tokens, applied as their scheduler applies it.
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            mu = calculate_shift(self.tokens_per_side() ** 2, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))
            return self.scheduler.time_shift(mu, 1.0, sigma)
        shift = config.shift
        return shift * sigma / (1 + (shift - 1) * sigma)

    def denoising_loss(self, forward, latents, noise, timesteps, text, shots, offsets) -> torch.Tensor:
        sigma = timesteps.to(self.device, torch.float32).view(-1, *[1] * (latents.dim() - 1))
        noisy = (1 - sigma) * latents + sigma * noise
        target = noise - latents
        with self.autocast():
            prediction = self.predict(forward, noisy, sigma.flatten(), text)
        return F.mse_loss(prediction.float(), self.layout(target).float(), reduction="none").flatten(1).mean(dim=1)

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the layout the denoiser predicts in."""
        return latents

    def sample_kwargs(self) -> dict:
        return {"max_sequence_length": self.t5_length()}


class SD3Model(FlowModel):
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


class FluxModel(FlowModel):
    t5 = "text_encoder_2"

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

    guidance = FAMILIES["flux"].guidance  # the trainer sets synthesize.guidance


MODELS = {"sd": FamilyModel, "sdxl": SDXLModel, "sd3": SD3Model, "flux": FluxModel}


def family_model(pipeline, family: Family, device: torch.device, dtype: torch.dtype,
                 resolution: int = 0) -> FamilyModel:
    """The family's view of a loaded pipeline; `resolution`: the training crop size."""
    return MODELS[family.name](pipeline, family, device, dtype, resolution)
