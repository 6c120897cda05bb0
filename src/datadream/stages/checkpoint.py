"""Mid-training checkpoints of one adapter, so that a long unit (dataset-wise adaptation runs
400 steps per class: 400,000 steps for ImageNet) resumes where it stopped instead of from zero.

A checkpoint holds everything the next step depends on: LoRA weights, AdamW moments, the
learning-rate schedule, the grad scaler, the unit's random generator and the current epoch's
order. Resuming therefore continues the very same trajectory an uninterrupted run follows.
Tensors go to safetensors (no pickle), the rest to JSON.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from datadream import atomic

log = logging.getLogger(__name__)

TENSORS = "state.safetensors"
META = "state.json"


@dataclass
class Progress:
    step: int = 0
    order: list[int] = field(default_factory=list)  # the current epoch's sample order
    losses: list[float] = field(default_factory=list)


@dataclass
class TrainingState:
    """The live objects a checkpoint is taken from and restored into."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator


def save(folder: Path, fingerprint: str, progress: Progress, live: TrainingState) -> None:
    tensors = {f"param.{i}": p.detach().float().cpu().contiguous() for i, p in enumerate(live.params)}
    optimizer = live.optimizer.state_dict()
    for index, moments in optimizer["state"].items():
        for name, value in moments.items():
            tensors[f"adam.{index}.{name}"] = value.detach().cpu().contiguous()
    tensors["generator"] = live.generator.get_state()
    tensors["losses"] = torch.tensor(progress.losses, dtype=torch.float64)
    meta = {
        "fingerprint": fingerprint,
        "step": progress.step,
        "order": progress.order,
        "param_groups": optimizer["param_groups"],
        "schedule": live.schedule.state_dict(),
        "scaler": live.scaler.state_dict(),
    }
    with atomic.staged_directory(folder) as staging:
        save_file(tensors, staging / TENSORS)
        atomic.write_json(staging / META, meta)


def restore(folder: Path, fingerprint: str, live: TrainingState) -> Progress | None:
    """Load the checkpoint into `live`; None when there is none, or it belongs to other inputs
    (then it is incomplete work of another config, and is dropped)."""
    if not (folder / META).is_file():
        return None
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fingerprint:
        log.info("adapt: dropping checkpoint %s made with other settings", folder)
        discard(folder)
        return None
    tensors = load_file(folder / TENSORS)
    for index, param in enumerate(live.params):
        param.data.copy_(tensors[f"param.{index}"])
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    live.optimizer.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
    live.schedule.load_state_dict(meta["schedule"])
    live.scaler.load_state_dict(meta["scaler"])
    live.generator.set_state(tensors["generator"])
    log.info("adapt: resuming %s at step %d", folder.name, meta["step"])
    return Progress(step=meta["step"], order=meta["order"], losses=tensors["losses"].tolist())


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
