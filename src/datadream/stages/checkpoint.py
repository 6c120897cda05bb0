"""Mid-training checkpoints, so that a long unit (dataset-wise adaptation runs 400 steps per
class: 400,000 steps for ImageNet; a classifier runs for hours) resumes where it stopped.

A checkpoint holds everything the next step depends on: trained weights, AdamW moments, the
learning-rate schedule, the grad scaler, a random generator, and whatever the caller adds (an
epoch's sample order, the best weights so far). Resuming continues the very same trajectory an
uninterrupted run follows. Tensors go to safetensors (no pickle), the rest to JSON.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from datadream import atomic

log = logging.getLogger(__name__)

TENSORS = "state.safetensors"
META = "state.json"


@dataclass
class TrainingState:
    """The live objects a checkpoint is taken from and restored into."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator | None = None


def save(folder: Path, fingerprint: str, live: TrainingState, meta: dict[str, Any],
         tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write `live` plus the caller's own `meta` (JSON) and `tensors` in one atomic step."""
    stored = {f"param.{i}": p.detach().float().cpu().contiguous() for i, p in enumerate(live.params)}
    optimizer = live.optimizer.state_dict()
    for index, moments in optimizer["state"].items():
        for name, value in moments.items():
            stored[f"adam.{index}.{name}"] = value.detach().cpu().contiguous()
    if live.generator is not None:
        stored["generator"] = live.generator.get_state()
    for name, value in (tensors or {}).items():
        stored[f"extra.{name}"] = value.detach().cpu().contiguous()
    state = {
        "fingerprint": fingerprint,
        "param_groups": optimizer["param_groups"],
        "schedule": live.schedule.state_dict(),
        "scaler": live.scaler.state_dict(),
        "meta": meta,
    }
    with atomic.staged_directory(folder) as staging:
        save_file(stored, staging / TENSORS)
        atomic.write_json(staging / META, state)


def restore(folder: Path, fingerprint: str, live: TrainingState
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Load the checkpoint into `live` and return the caller's (meta, tensors); None when there
    is none, or it belongs to other inputs (incomplete work of another config: dropped)."""
    if not (folder / META).is_file():
        return None
    state = json.loads((folder / META).read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        log.info("dropping checkpoint %s made with other settings", folder)
        discard(folder)
        return None
    stored = load_file(folder / TENSORS)
    for index, param in enumerate(live.params):
        param.data.copy_(stored[f"param.{index}"])
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    live.optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
    live.schedule.load_state_dict(state["schedule"])
    live.scaler.load_state_dict(state["scaler"])
    if live.generator is not None:
        live.generator.set_state(stored["generator"])
    extra = {key.removeprefix("extra."): value for key, value in stored.items() if key.startswith("extra.")}
    return state["meta"], extra


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
