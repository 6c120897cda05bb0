"""The generator families behind one small interface: what carries LoRA, how prompts become the
denoiser's conditioning, the training target, and the stock pipeline's sampling arguments.

Both adapt engines, dataset-wise training, the adapter swap and the file layout go through a
`FamilyModel`, so none of them names a UNet or a text encoder. Here is what every family shares
and the rectified-flow training of SD 3 and FLUX; each family's own part is its folder's
model.py, and the published settings behind it (targets, objective, timestep sampling) are its
record.

Rectified flow (sd3, flux): x_t = (1 - σ) x_0 + σ ε, the model predicts ε - x_0, and the loss is
its plain MSE. σ = sigmoid(n), n ~ N(0, 1) (the SD3 paper's logit-normal sampling), shifted the
way the model's scheduler config shifts its sampling sigmas: by its fixed `shift` (SD 3's 3.0;
FLUX.1-schnell's 1.0, no shift), or, with `use_dynamic_shifting` (FLUX.1-dev), by the mu that
grows with the image's token count, so training sees the noise levels sampling visits.
T5 stays frozen (record.py says why): its features are computed once per prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch
import torch.nn.functional as F

from datadream.components.generators.families.record import CLIP_TEXT_TARGETS, Family
from datadream.components.generators.lora_weights import ADAPTER


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
    """A loaded pipeline seen through its family. A family's subclass says how its prompts are
    encoded (`prompts`, `encode`) and what it is trained to predict (`scheduler`,
    `draw_timesteps`, `denoising_loss`)."""

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

    # -- training -----------------------------------------------------------------------------
    def latents(self, sample: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample as the denoiser's input."""
        config = self.pipeline.vae.config
        shift = getattr(config, "shift_factor", None)
        return sample * config.scaling_factor if shift is None else (sample - shift) * config.scaling_factor

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- sampling -----------------------------------------------------------------------------
    def sample_kwargs(self) -> dict:
        """What the stock pipeline's call needs besides prompt, size, steps, guidance and seeds."""
        return {}


class FlowModel(FamilyModel):
    """The rectified-flow families (sd3, flux)."""

    t5: str  # the pipeline attribute of the family's T5 encoder

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def t5_tokenizer(self):
        # text_encoder_3 -> tokenizer_3, text_encoder_2 -> tokenizer_2
        return getattr(self.pipeline, "tokenizer" + self.t5.removeprefix("text_encoder"))

    def t5_length(self) -> int:
        """The T5 prompt length, in training and sampling alike: the published one (`t5_tokens`,
        the stock pipeline's default), capped by a tokenizer that takes fewer (the tiny test
        models')."""
        return min(self.t5_tokens(), self.t5_tokenizer.model_max_length)

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


def family_model(pipeline, family: Family, device: torch.device, dtype: torch.dtype,
                 resolution: int = 0) -> FamilyModel:
    """The family's view of a loaded pipeline; `resolution`: the training crop size."""
    # The record names its class (it cannot import it and stay torch-free); the family's folder holds it.
    model = getattr(import_module(f"{__package__}.{family.name}.model"), family.model)
    return model(pipeline, family, device, dtype, resolution)
