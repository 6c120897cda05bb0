"""The batched engine of stage 1: K class-wise adapters trained in one forward/backward.

A batch of 8 leaves a GPU mostly idle; K classes x 8 samples fill it. It is the same optimisation
as K separate runs, step for step:
- each targeted layer applies adapter k only to class k's samples (components/generators/grouped_lora.py);
- the loss is the sum over classes of each class's mean, so adapter k's gradient is exactly the
  gradient of its own loss;
- gradient-norm clipping is computed and applied per adapter;
- AdamW is elementwise and the schedule is shared (every class takes the same number of steps);
- every random draw of class k comes from class k's own generator, in the sequential engine's
  order (see adapt.draw_step), and adapter k starts from the sequential engine's init for k.
So batched and sequential give the same adapters up to float rounding (tested), and the files
are written in the same format: nothing downstream can tell them apart.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch
from datadream.progress import progress

from datadream.components.generators.grouped_lora import clip_grad_norm_per_group, make_grouped
from datadream.components.seeds import derive_seed
from datadream.errors import UserError
from datadream.engines.lora_training import LoraTrainer, ShotImage, StepDraws, make_optimizer
from datadream.units import AdapterSpec

log = logging.getLogger(__name__)

# What the stage does with each trained adapter: (adapter, losses, steps per epoch, start time, its
# index in the model's stacked LoRA)
Trained = Callable[[AdapterSpec, list[float], int, float, int], None]


class BatchedTrainer:
    def __init__(self, trainer: LoraTrainer):
        self.t = trainer

    def auto_group_size(self, units: list[AdapterSpec], samples: list[list[ShotImage]]) -> int:
        t = self.t
        if t.cfg.group_size:
            return t.cfg.group_size
        if t.device.type != "cuda":
            return len(units)
        return self._probe_group_size(units, samples)

    def _probe_group_size(self, units: list[AdapterSpec], samples: list[list[ShotImage]]) -> int:
        """One throw-away step with one adapter measures what a class costs in GPU memory; the
        group takes what fits in 85% of the free memory."""
        t = self.t
        torch.cuda.synchronize(t.device)
        torch.cuda.empty_cache()  # cached blocks would count as used in mem_get_info
        torch.cuda.reset_peak_memory_stats(t.device)
        before = torch.cuda.memory_allocated(t.device)
        self._train([units[0]], samples[:1], probe=True)
        per_class = max(1, torch.cuda.max_memory_allocated(t.device) - before)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(t.device)
        size = max(1, min(len(units), int(0.85 * free / per_class)))
        log.info("adapt: %.2f GiB per class in a group; %d classes per group", per_class / 2**30, size)
        return size

    def train_all(self, units: list[AdapterSpec], samples: list[list[ShotImage]], trained: Trained,
                  label: str = "") -> None:
        """Train one unit's adapters (equal shot counts, datadream.units.adapter_groups) on their
        `samples` together; on a GPU in parts of what fits in its memory. After each part,
        `trained(adapter, losses, steps_per_epoch, started, index)` is called for each of its
        adapters while the model holds them (index: its place in the model's stacked LoRA)."""
        size = self.auto_group_size(units, samples)
        parts = [range(i, min(i + size, len(units))) for i in range(0, len(units), size)]
        for position, part in enumerate(parts, 1):
            started = time.time()
            group = [units[i] for i in part]
            name = f" part {position}/{len(parts)}" if len(parts) > 1 else ""
            losses, steps_per_epoch = self._train(group, [samples[i] for i in part],
                                                  label=f"{label}{name} {len(group)} classes")
            for index, unit in enumerate(group):
                trained(unit, losses[index], steps_per_epoch, started, index)
            log.info("adapt: group %d/%d (%s ... %s) done in %.1fs", position, len(parts), group[0].name,
                     group[-1].name, time.time() - started)

    def _train(self, units: list[AdapterSpec], samples: list[list[ShotImage]], label: str = "", probe: bool = False):
        """Train len(units) adapters together; returns (losses per adapter, steps per epoch)."""
        from diffusers.optimization import get_scheduler

        t, cfg = self.t, self.t.cfg
        groups = len(units)
        t.encoder.clear()
        seeds = [t.unit_seed(u) for u in units]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        params = make_grouped(t.lora_modules, groups, [derive_seed(seed, "init") for seed in seeds])
        optimizer = make_optimizer(params, cfg)
        steps_per_epoch = math.ceil(len(samples[0]) / cfg.batch_size)
        total_steps = 1 if probe else cfg.epochs * steps_per_epoch
        schedule = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(t.device.type, enabled=t.dtype == torch.float16)
        prompts, frozen_text = t.start_training([u.classes[0].prompt for u in units])
        losses: list[list[float]] = [[] for _ in units]
        orders: list[list[int]] = []
        bar = progress(total=total_steps, desc=f"adapt {label}", unit="step", disable=probe, leave=False)
        for step in range(total_steps):
            position = step % steps_per_epoch
            if position == 0:
                orders = [torch.randperm(len(s), generator=g).tolist() for s, g in zip(samples, generators)]
            window = slice(position * cfg.batch_size, (position + 1) * cfg.batch_size)
            draws = [t.draw(s, order[window], g) for s, order, g in zip(samples, orders, generators)]
            per_group = len(draws[0].prompts)
            merged = StepDraws.concat(draws)
            text = t.encode(prompts) if frozen_text is None else frozen_text  # prompt k through adapter k
            per_sample = t.per_sample_loss(merged, text.repeat(per_group))
            per_class = per_sample.view(groups, per_group).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(per_class.sum()).backward()
            scaler.unscale_(optimizer)
            clip_grad_norm_per_group(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            values = per_class.tolist()
            if not all(math.isfinite(v) for v in values):
                raise UserError(f"adapt {label}: the loss became {values} at step {step + 1}; try"
                                " runtime.precision=fp32 or a lower adapt.lr")
            for history, value in zip(losses, values):
                history.append(value)
            bar.update()
            if (step + 1) % 10 == 0:
                bar.set_postfix(loss=f"{sum(values) / groups:.4f}")
        bar.close()
        return losses, steps_per_epoch
