"""The LoRA trainer of stage 1, shared by both engines (sequential here, batched in
engines/lora_batched.py): the base model is loaded once per process and adapters are trained one
after another in place. It returns losses and leaves the trained LoRA in the model; the stage
saves it (stages/adapt.py).

Every random draw of an adapter (init, shuffling, crops, VAE sampling, noise, timesteps) comes from
its own CPU generator seeded from (runtime.seed, seed key), so an adapter does not depend on which
adapters ran before it, nor on the device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datadream.components import distributed
from datadream.components.generators.families.model import Conditioning, Prompts, family_model
from datadream.components.generators.grouped_lora import make_single
from datadream.components.generators.latents import LatentEncoder, ShotImage
from datadream.components.generators.lora_weights import reset_lora
from datadream.components.loading.models import (compile_module, load_generator, pipeline_family,
                                                 resolve_device, resolve_dtype)
from datadream.components.seeds import derive_seed
from datadream.config import NEEDS_BITSANDBYTES, AdaptConfig, Config
from datadream.data.fewshot import FewShotClass
from datadream.data.images import load_rgb
from datadream.errors import UserError
from datadream.progress import progress as progress_bar
from datadream.runs import Run
from datadream.engines import checkpoint
from datadream.units import AdapterSpec

log = logging.getLogger(__name__)


@dataclass
class Progress:
    step: int = 0
    order: list[int] = field(default_factory=list)  # the current epoch's sample order
    losses: list[float] = field(default_factory=list)


def load_shots(run: Run, classes: list[FewShotClass], resolution: int) -> list[ShotImage]:
    """Each shot as a uint8 CHW image with its shorter side resized to `resolution`, after
    checking its file's hash against the manifest."""
    from PIL import Image

    samples = []
    for index, cls in enumerate(classes):
        for shot in cls.images:
            image = load_rgb(run.manifest.verified_path(shot))
            original_size = (image.height, image.width)
            scale = resolution / min(image.size)
            size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            samples.append(ShotImage(pixels.view(image.height, image.width, 3).permute(2, 0, 1).contiguous(),
                                     index, shot.sha256, original_size))
    return samples


@dataclass
class StepDraws:
    """Everything random in one step of one adapter, drawn from that adapter's generator in a
    fixed order (crops, VAE sample, noise, timesteps): the same in both engines."""

    shots: list[ShotImage]
    offsets: list[tuple[int, int]]  # (top, left) of each crop
    crops: torch.Tensor  # uint8 (B, 3, size, size)
    eps: torch.Tensor  # standard normal, latent shape: the VAE posterior sample
    noise: torch.Tensor
    timesteps: torch.Tensor  # DDPM step indices, or flow-matching sigmas (the family's draw)


    @property
    def prompts(self) -> list[int]:
        return [shot.prompt for shot in self.shots]

    def part(self, rows: slice) -> "StepDraws":
        """The draws of some of the step's samples (a data-parallel process's share)."""
        return StepDraws(self.shots[rows], self.offsets[rows], self.crops[rows], self.eps[rows], self.noise[rows],
                         self.timesteps[rows])

    @staticmethod
    def concat(parts: list["StepDraws"]) -> "StepDraws":
        return StepDraws([s for p in parts for s in p.shots], [o for p in parts for o in p.offsets],
                         torch.cat([p.crops for p in parts]), torch.cat([p.eps for p in parts]),
                         torch.cat([p.noise for p in parts]), torch.cat([p.timesteps for p in parts]))


def draw_step(samples: list[ShotImage], chosen: list[int], size: int, latent_shape: tuple[int, ...],
              draw_timesteps, generator: torch.Generator) -> StepDraws:
    shots, offsets, crops = [], [], []
    for i in chosen:
        image = samples[i].pixels
        top = int(torch.randint(0, image.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, image.shape[2] - size + 1, (1,), generator=generator))
        shots.append(samples[i])
        offsets.append((top, left))
        crops.append(image[:, top:top + size, left:left + size])
    shape = (len(chosen), *latent_shape)
    eps = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    timesteps = draw_timesteps(len(chosen), generator)
    return StepDraws(shots, offsets, torch.stack(crops), eps, noise, timesteps)


class LoraTrainer:
    """Holds the base model once and trains one adapter after another in place."""

    def __init__(self, cfg: Config):
        self.cfg: AdaptConfig = cfg.adapt
        # Under a launcher, each process its own GPU (class-wise adapters are then shared out by
        # the locks, one whole adapter group per process; dataset-wise: data-parallel, see train).
        self.device = distributed.local_device(resolve_device(cfg.runtime.device))
        self.dtype = resolve_dtype(cfg.runtime.precision, self.device)
        pipeline = load_generator(cfg.generator.model, dtype=self.dtype, config=cfg.generator.config)
        self.model = family_model(pipeline, pipeline_family(pipeline), self.device, self.dtype, self.cfg.resolution)
        self.denoiser = self.model.denoiser.to(self.device)
        self.model.place_encoders(self.cfg.offload_text_encoders, self.cfg.train_text_encoder)
        self.vae = pipeline.vae.to(self.device).requires_grad_(False).eval()
        if self.dtype == torch.float16:
            self.vae.to(torch.float32)  # SD's VAE overflows in fp16; bf16 and fp32 are safe
        if self.device.type == "cuda" and self.model.family.denoiser == "unet":
            self.denoiser.to(memory_format=torch.channels_last)
        if self.cfg.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.denoiser_forward = compile_module(self.denoiser) if self.cfg.compile else self.denoiser
        self.params = self.model.add_lora(self.cfg.rank, self.cfg.alpha, self.cfg.train_text_encoder)
        self.lora_modules = list(self.model.lora_components(self.cfg.train_text_encoder).values())
        self.seed = cfg.runtime.seed
        self.encoder = LatentEncoder(self.vae, self.cfg.resolution, self.cfg.reuse_vae_moments,
                                     self.cfg.cache_latents)
        factor = self.encoder.factor
        self.latent_shape = (self.vae.config.latent_channels, self.cfg.resolution // factor,
                             self.cfg.resolution // factor)

    def unit_seed(self, unit: AdapterSpec) -> int:
        return derive_seed(self.seed, "adapt", unit.seed_key)

    def draw(self, samples, chosen: list[int], generator: torch.Generator) -> StepDraws:
        return draw_step(samples, chosen, self.cfg.resolution, self.latent_shape, self.model.draw_timesteps,
                         generator)

    def start_training(self, texts: list[str]) -> tuple[Prompts, Conditioning | None]:
        """The prompts ready to encode, their conditioning when the text encoders are frozen
        (computed once, not per step), and the LoRA modules in training mode."""
        prompts = self.model.prompts(texts)
        frozen_text = None
        if not self.cfg.train_text_encoder:
            with torch.no_grad(), self.autocast():
                frozen_text = self.model.encode(prompts)
        for module in self.lora_modules:
            module.train()
        return prompts, frozen_text

    def encode(self, prompts: Prompts, rows: torch.Tensor | None = None) -> Conditioning:
        """The conditioning of the prompts (of `rows` only), through the adapted text encoders."""
        with self.autocast():
            return self.model.encode(prompts.rows(rows))

    def autocast(self):
        return self.model.autocast()

    def per_sample_loss(self, draws: StepDraws, text: Conditioning) -> torch.Tensor:
        """The family's denoising MSE of each sample, given the conditioning of each sample."""
        mean, std = self.encoder.moments(draws.shots, draws.offsets, draws.crops)
        latents = self.model.latents((mean + std * draws.eps.to(self.device, mean.dtype)).float())
        return self.model.denoising_loss(self.denoiser_forward, latents, draws.noise.to(self.device), draws.timesteps,
                                         text, draws.shots, draws.offsets)

    def train(self, samples: list[ShotImage], prompts: list[str], seed: int,
              label: str = "", resume_from: Path | None = None, fingerprint: str = "",
              group: distributed.Group = distributed.SINGLE) -> list[float]:
        """Train the resident adapter from a fresh init (or from the checkpoint in `resume_from`)
        on `samples`; returns the loss of every step.

        Data-parallel with a `group` of several processes (adapt.mode=dataset under a launcher,
        docs/ddp.md), equal to one process within float rounding: every process draws the whole
        step from the adapter's generator (crops, noise and timesteps of the global batch: cheap),
        computes the loss of its contiguous share only, normalised by the global batch, and the
        gradients are summed before clipping; rank 0 alone writes checkpoints."""
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        generator = torch.Generator().manual_seed(seed)
        self.encoder.clear()
        self.params = make_single(self.lora_modules)
        reset_lora(self.lora_modules, derive_seed(seed, "init"))
        optimizer = make_optimizer(self.params, cfg)
        steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        schedule = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=total_steps)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        live = checkpoint.TrainingState(self.params, optimizer, schedule, scaler, generator)
        progress = Progress()
        restored = (checkpoint.restore_shared(resume_from, fingerprint, live, group)
                    if resume_from is not None else None)
        if restored is not None:
            meta, tensors = restored
            progress = Progress(meta["step"], meta["order"], tensors["losses"].tolist())
            log.info("adapt: resuming %s at step %d", label, progress.step)
        prompt_inputs, frozen_text = self.start_training(prompts)
        losses = progress.losses
        bar = progress_bar(total=total_steps, initial=progress.step, desc=f"adapt {label}", unit="step",
                           leave=False, disable=not group.is_main)
        while progress.step < total_steps:
            position = progress.step % steps_per_epoch
            if position == 0:
                progress.order = torch.randperm(len(samples), generator=generator).tolist()
            chosen = progress.order[position * cfg.batch_size:(position + 1) * cfg.batch_size]
            draws = self.draw(samples, chosen, generator)
            if group.size > 1:
                draws = draws.part(group.share(len(chosen)))
            optimizer.zero_grad(set_to_none=True)
            if draws.shots:  # a process's share of a last, small batch can be empty
                prompt_index = torch.tensor(draws.prompts, device=self.device)
                if frozen_text is None:
                    # Each distinct prompt is encoded once and shared by its samples: the same
                    # gradient as encoding it per sample, at a fraction of the cost.
                    used, inverse = torch.unique(prompt_index, return_inverse=True)
                    text = self.encode(prompt_inputs, used).select(inverse)
                else:
                    text = frozen_text.select(prompt_index)
                per_sample = self.per_sample_loss(draws, text)
                # Several processes: this share's part of the global batch's mean.
                loss = per_sample.mean() if group.size == 1 else per_sample.sum() / len(chosen)
                scaler.scale(loss).backward()
            else:
                loss = torch.zeros((), device=self.device)
            if group.size > 1:
                group.sum_gradients(self.params)
                loss = group.sum(loss.detach().float())
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            losses.append(loss.item())
            progress.step += 1
            if not math.isfinite(losses[-1]):
                raise UserError(f"adapt {label}: the loss became {losses[-1]} at step {progress.step};"
                                " try runtime.precision=fp32 or a lower adapt.lr")
            bar.update()
            if progress.step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
            if (resume_from is not None and cfg.checkpoint_every and group.is_main
                    and progress.step % cfg.checkpoint_every == 0 and progress.step < total_steps):
                checkpoint.save(resume_from, fingerprint, live,
                                meta={"step": progress.step, "order": progress.order},
                                tensors={"losses": torch.tensor(losses, dtype=torch.float64)})
        bar.close()
        return losses


def make_optimizer(params: list[torch.nn.Parameter], cfg: AdaptConfig) -> torch.optim.Optimizer:
    """The adapters' AdamW (betas 0.9/0.999, eps 1e-8, as published), or bitsandbytes' 8-bit one."""
    kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise UserError(NEEDS_BITSANDBYTES) from None
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)
