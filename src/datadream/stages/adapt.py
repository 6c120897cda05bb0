"""Stage 1: adapt Stable Diffusion to the few shots with LoRA.

    datadream adapt RUN

`adapt.mode: class` trains one adapter per class on that class's shots; `dataset` trains one
adapter on all shots. The units of the stage are the groups of datadream.units.adapter_groups (one
adapter, or a batched group of class adapters). Each adapter is saved in the diffusers layout into
a temporary folder of the store and renamed to STORE/adapters/<fingerprint>/ with its marker
(unit.json) last; RUN/adapters/<unit> links to it. An adapter already in the store (made by this
run before an interruption, by another run, or by another machine) is reused, never retrained.

Each adapter is trained while holding its lock: workers on one run, or on runs sharing a store,
split the adapters between them; one that finds an adapter locked by a live process trains the
others first, then waits for it.

Under a launcher (`torchrun --standalone --nproc-per-node 8 -m datadream adapt RUN`, docs/ddp.md):
- adapt.mode=dataset: the one adapter is trained data-parallel by all the processes (rank 0 holds
  its lock and saves it); the result equals one process's within float rounding.
- adapt.mode=class: not data-parallel (many small adapters): each process takes its own GPU and
  whole adapter groups by the locks, exactly as N separate `datadream adapt` processes would.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from datadream import atomic, locks
from datadream.artifacts import adapter_is_complete, link_adapters
from datadream.components import distributed
from datadream.components.generators.lora_weights import sort_safetensors_metadata
from datadream.config import AdaptConfig, stable_hash
from datadream.engines import checkpoint
from datadream.engines.lora_training import LoraTrainer, load_shots
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER, StoreLayout
from datadream.markers import log_timing, record_files
from datadream.runs import Run, open_run
from datadream.store import register_run
from datadream.units import AdapterSpec, adapter_groups, adapter_specs, store_of

log = logging.getLogger(__name__)

# The base model of the last run adapted in this process: a worker that trains group after group
# (the local runner, a Ray worker) loads it once.
_TRAINERS: dict[str, LoraTrainer] = {}


def adapt(run_dir: Path, groups: list[tuple[str, ...]] | None = None) -> list[Path]:
    """Train every adapter of the run that the store does not hold (or only those of `groups`,
    the members of adapt units); returns the run's adapter links in unit order."""
    run = open_run(run_dir)
    store = store_of(run)
    specs = adapter_specs(run)
    if not specs:
        log.info("adapt: nothing to train (adapt.mode=%s, classifier.train_on=%s)", run.config.adapt.mode,
                 run.config.classifier.train_on)
        return []
    atomic.check_writable(store.adapters, "runtime.store")
    atomic.check_writable(run.layout.adapters)  # where the run shows them: fail now, not after training
    register_run(store, run.layout.root)
    planned = adapter_groups(run, specs)
    if groups is not None:
        wanted = {tuple(g) for g in groups}
        planned = [g for g in planned if tuple(s.name for s in g) in wanted]
    if run.config.adapt.mode == "dataset" and distributed.launched():
        train_data_parallel(run, store, planned)
    else:
        train_groups(run, store, planned)
    link_adapters(run, store)
    return [run.layout.adapter(s.name) for s in specs]


def train_groups(run: Run, store: StoreLayout, groups: list[list[AdapterSpec]]) -> None:
    total = sum(len(g) for g in groups)
    todo = [[s for s in g if not adapter_is_complete(run, store, s)] for g in groups]
    reused = total - sum(len(g) for g in todo)
    if reused:
        log.info("adapt: %d of %d adapter(s) already in the store %s: reused, not trained", reused, total, store.root)
    deferred: list[AdapterSpec] = []
    for position, group in enumerate(todo, 1):
        if group:
            deferred += _train_locked(run, store, group, f"[{position}/{len(todo)}]", wait=False)
    for spec in deferred:  # held by another worker: wait for it, train it only if that worker died
        _train_locked(run, store, [spec], spec.name, wait=True)


def train_data_parallel(run: Run, store: StoreLayout, groups: list[list[AdapterSpec]]) -> None:
    """Dataset-wise adapters, each trained by all the processes of a launch together: rank 0
    takes the adapter's lock (waiting for it, or refusing, as runtime.wait_for_locks says) and
    decides whether it must be trained; the others follow its decision."""
    group = distributed.start(run.config.runtime.device)
    for spec in (s for g in groups for s in g):
        if not group.is_main:
            if group.follow():
                _train_and_save(run, store, spec, label=spec.name, group=group)
            continue
        with group.leading() as lead, locks.unit_lock(store.lock(spec.lock), f"adapter {spec.name}",
                                                      run.config.runtime.wait_for_locks):
            if _still_to_train(run, store, spec):
                lead.go()
                _train_and_save(run, store, spec, label=spec.name, group=group)


def _still_to_train(run: Run, store: StoreLayout, spec: AdapterSpec) -> bool:
    """Under the adapter's lock: whether it is still to train (not finished by another worker
    meanwhile); if so, a killed trainer's temporaries are cleared for it."""
    if adapter_is_complete(run, store, spec):
        checkpoint.discard(store.adapter_checkpoint(spec.fingerprint))
        return False
    atomic.remove_stale_temporaries(store.adapters, spec.fingerprint)
    return True


def _train_locked(run: Run, store: StoreLayout, group: list[AdapterSpec], label: str, wait: bool) -> list[AdapterSpec]:
    """Train the members of `group` whose locks this process gets; returns those held by others."""
    busy = []
    with ExitStack() as held:
        mine = []
        for spec in group:
            lock = locks.claim(store.lock(spec.lock), f"adapter {spec.name}", wait,
                               defer=run.config.runtime.wait_for_locks)
            if lock is None:
                busy.append(spec)
                continue
            held.callback(lock.release)
            if _still_to_train(run, store, spec):
                mine.append(spec)
        if mine:
            _train(run, store, mine, label)
    return busy


def _train(run: Run, store: StoreLayout, specs: list[AdapterSpec], label: str) -> None:
    trainer = _trainer(run)
    if choose_engine(run.config.adapt, trainer.dtype) == "batched":
        from datadream.engines.lora_batched import BatchedTrainer

        def save(spec: AdapterSpec, losses: list[float], steps_per_epoch: int, started: float, index: int) -> None:
            _save_adapter(run, store, trainer, spec, losses, steps_per_epoch, started, index=index, engine="batched")

        samples = [load_shots(run, spec.classes, trainer.cfg.resolution) for spec in specs]
        BatchedTrainer(trainer).train_all(specs, samples, save, label)
    else:
        for position, spec in enumerate(specs, 1):
            _train_and_save(run, store, spec, label=f"{label} {spec.name}" if len(specs) == 1
                            else f"{label} {position}/{len(specs)} {spec.name}")
    for spec in specs:
        checkpoint.discard(store.adapter_checkpoint(spec.fingerprint))


def _train_and_save(run: Run, store: StoreLayout, spec: AdapterSpec, label: str,
                    group: distributed.Group = distributed.SINGLE) -> None:
    """Train and save one adapter, resuming from its checkpoint in the store; with a `group` of
    several processes, data-parallel (every process calls this, rank 0 alone saves)."""
    trainer = _trainer(run)
    started = time.time()
    samples = load_shots(run, spec.classes, trainer.cfg.resolution)
    partial = store.adapter_checkpoint(spec.fingerprint)
    losses = trainer.train(samples, [c.prompt for c in spec.classes], seed=trainer.unit_seed(spec), label=label,
                           resume_from=partial, fingerprint=spec.fingerprint, group=group)
    if group.is_main:
        _save_adapter(run, store, trainer, spec, losses, math.ceil(len(samples) / trainer.cfg.batch_size), started,
                      processes=group.size)
        checkpoint.discard(partial)
        log.info("adapt: %s done in %.1fs", spec.name, time.time() - started)
    group.barrier()  # every process returns once the adapter is saved


def _save_adapter(run: Run, store: StoreLayout, trainer: LoraTrainer, spec: AdapterSpec, losses: list[float],
                  steps_per_epoch: int, started: float, index: int | None = None, engine: str = "sequential",
                  processes: int = 1) -> None:
    """The adapter the model holds (at `index` of a batched group) into the store, its marker last."""
    with atomic.staged_directory(store.adapter(spec.fingerprint)) as staging:
        trainer.model.save_lora(staging, trainer.cfg.train_text_encoder, index=index)
        sort_safetensors_metadata(staging / LORA_WEIGHTS)
        # Only what the adapter is made of, nothing that varies between identical runs (timings go
        # to the log): the store shares it with every run of equal fingerprint.
        atomic.write_json(staging / UNIT_MARKER, {
            "classes": [c.name for c in spec.classes],
            "fingerprint": spec.fingerprint,
            "files": record_files(staging, [LORA_WEIGHTS]),
            "steps": len(losses),
            "loss_per_epoch": _epoch_means(losses, steps_per_epoch),
            "engine": engine,
            "device": str(trainer.device),
            "precision": str(trainer.dtype).removeprefix("torch."),
        })
    log_timing(run.layout.timings, {"stage": "adapt", "unit": spec.name, "engine": engine,
                                    "seconds": round(time.time() - started, 2),
                                    **({"processes": processes} if processes > 1 else {})})


def _epoch_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    return [round(sum(chunk) / len(chunk), 6)
            for chunk in (losses[i:i + steps_per_epoch] for i in range(0, len(losses), steps_per_epoch))]


def _trainer(run: Run) -> LoraTrainer:
    cfg = run.config
    key = stable_hash([cfg.generator.model, cfg.generator.config, cfg.runtime.device, cfg.runtime.precision,
                       cfg.adapt.rank, cfg.adapt.alpha, cfg.adapt.train_text_encoder, cfg.adapt.resolution,
                       cfg.adapt.gradient_checkpointing, cfg.adapt.compile, cfg.adapt.reuse_vae_moments,
                       cfg.adapt.cache_latents, cfg.adapt.offload_text_encoders])
    trainer = _TRAINERS.get(key)
    if trainer is None:
        _TRAINERS.clear()  # one base model resident at a time
        trainer = _TRAINERS[key] = LoraTrainer(cfg)
    trainer.cfg, trainer.seed = cfg.adapt, cfg.runtime.seed
    trainer.model.guidance = cfg.synthesize.guidance  # FLUX.1-dev's embedded guidance: the one it samples with
    return trainer


def choose_engine(cfg: AdaptConfig, dtype: torch.dtype) -> str:
    """Batched training pays off for many small class-wise adapters; one dataset-wise adapter is
    trained by the sequential engine (which also checkpoints long runs). In fp16 one loss scaler
    would skip a step for all K adapters when one overflows, so fp16 trains sequentially."""
    if cfg.mode != "class":
        if cfg.engine == "batched":
            log.info("adapt: engine=batched applies to mode=class; one dataset adapter trains sequentially")
        return "sequential"
    if dtype == torch.float16 and cfg.engine != "sequential":
        log.info("adapt: fp16 (no bf16 on this GPU): training adapters one by one, as the batched engine"
                 " would share one loss scaler")
        return "sequential"
    return "batched" if cfg.engine in ("auto", "batched") else "sequential"
