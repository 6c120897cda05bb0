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
    stored, state = snapshot(fingerprint, live, meta, tensors)
    with atomic.staged_directory(folder) as staging:
        save_file(stored, staging / TENSORS)
        atomic.write_json(staging / META, state)


def snapshot(fingerprint: str, live: TrainingState, meta: dict[str, Any],
             tensors: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What `save` writes, in memory: (tensors, JSON state)."""
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
    return stored, state


def restore(folder: Path, fingerprint: str, live: TrainingState
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Load the checkpoint into `live` and return the caller's (meta, tensors); None when there
    is none, or it belongs to other inputs (incomplete work of another config: dropped), or it is
    damaged (a power cut, a full disk: dropped with a warning, the unit starts over)."""
    if not (folder / META).exists():
        return None
    try:
        state = json.loads((folder / META).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        if state.get("fingerprint") != fingerprint:
            log.info("dropping checkpoint %s made with other settings", folder)
            discard(folder)
            return None
        return _load_into(folder, state, live)
    except Exception as err:  # any damage at all: the state is not trusted, the unit is redone
        log.warning("checkpoint %s is damaged (%s); discarding it and starting that unit over", folder,
                    str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
        discard(folder)
        return None


def _load_into(folder: Path, state: dict[str, Any], live: TrainingState
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return _apply(load_file(folder / TENSORS), state, live)


def _apply(stored: dict[str, torch.Tensor], state: dict[str, Any], live: TrainingState
           ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Everything is read and checked before `live` is touched: a damaged checkpoint must not
    leave half-restored weights behind for the fresh start that follows."""
    for index, param in enumerate(live.params):
        saved = stored[f"param.{index}"]
        if saved.shape != param.shape:
            raise ValueError(f"param.{index} has shape {tuple(saved.shape)}, expected {tuple(param.shape)}")
    if live.generator is not None:
        torch.Generator().set_state(stored["generator"])
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    meta = state["meta"]
    live.optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
    live.schedule.load_state_dict(state["schedule"])
    live.scaler.load_state_dict(state["scaler"])
    if live.generator is not None:
        live.generator.set_state(stored["generator"])
    for index, param in enumerate(live.params):
        param.data.copy_(stored[f"param.{index}"])
    extra = {key.removeprefix("extra."): value for key, value in stored.items() if key.startswith("extra.")}
    return meta, extra


def restore_shared(folder: Path, fingerprint: str, live: TrainingState, group
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """`restore` for the processes of a data-parallel launch (datadream.components.distributed):
    rank 0 alone reads the checkpoint (and alone drops a damaged or outdated one) and sends the
    state it restored to the others, so every process continues from the very same state. In one
    process: `restore`."""
    if group.size == 1:
        return restore(folder, fingerprint, live)
    restored = restore(folder, fingerprint, live) if group.is_main else None
    payload = snapshot(fingerprint, live, *restored) if restored is not None else None
    payload = group.broadcast_object(payload)
    if group.is_main or payload is None:
        return restored
    stored, state = payload
    return _apply(stored, state, live)


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
