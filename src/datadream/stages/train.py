"""Stage 3: train the CLIP LoRA classifier on the synthetic set, the real shots, or both.

    datadream train RUN

`classifier.train_on`: `synthetic` (plain cross-entropy), `synthetic+real` (the real shots
repeated to about the synthetic count per class; loss = lambda*CE(real) + (1-lambda)*CE(synthetic)),
`real` (the few-shot baseline, the same shots), `none` (zero-shot CLIP with the same prompts).

Model selection uses the dataset's validation split when it has one (best validation top-1 over
epochs), otherwise the last epoch; never the test split. Training state is checkpointed after every epoch, so an
interrupted stage resumes at the last finished epoch and ends with the same classifier.

Data-parallel over the GPUs of a node (docs/ddp.md, datadream.components.distributed):

    torchrun --standalone --nproc-per-node 8 -m datadream train RUN

Rank 0 holds the stage's lock and decides whether there is anything to train; every process then
decodes its share of each global batch and the result equals one process's, for the same
classifier.batch_size (the global batch), within float rounding.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from datadream.progress import progress

from datadream import atomic, locks
from datadream.artifacts import classifier_is_complete, completed_synthetic_set
from datadream.components import distributed
from datadream.components.classifiers.backbones import load_pretrained
from datadream.components.classifiers.augment import TrainAugment, mix_within
from datadream.components.classifiers.losses import origin_weighted_loss
from datadream.components.classifiers.scoring import loader_workers, score, start_loader
from datadream.components.loading.models import resolve_device, resolve_dtype
from datadream.components.seeds import derive_seed
from datadream.data.labelled import EvalImages, TrainImages
from datadream.data.leaks import check_synthetic_not_in_evaluation
from datadream.data.samples import Sample, real_shots, split_samples
from datadream.errors import UserError
from datadream.layout import CLASSIFIER_MARKER, LORA_FOLDER, PROMPTS
from datadream.markers import log_timing, record_files
from datadream.runs import Run, open_run
from datadream.engines import checkpoint
from datadream.units import classifier_fingerprint, real_repeats

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    samples: list[Sample]
    fingerprint: str  # everything the classifier is made from (datadream.units.classifier_fingerprint)


def training_data(run: Run) -> TrainingData:
    """The classifier's training samples: the synthetic set as its index and class markers vouch
    for it (the adapters are not needed), the real shots, or both."""
    cfg = run.config.classifier
    samples: list[Sample] = []
    if cfg.train_on in ("synthetic", "synthetic+real"):
        synthetic, _ = completed_synthetic_set(run)
        check_synthetic_not_in_evaluation(run.config.data, synthetic)
        samples += synthetic
    if cfg.train_on in ("real", "synthetic+real"):
        samples += real_shots(run.manifest, real_repeats(run))
    return TrainingData(samples, classifier_fingerprint(run))


def train(run_dir: Path) -> Path:
    run = open_run(run_dir)
    group = distributed.start(run.config.runtime.device)  # one process: no-op
    if not group.is_main:  # a launch of several processes: rank 0 takes the lock and decides
        if group.follow():
            ClassifierTrainer(run, training_data(run)).fit()
        return run.layout.classifier
    with group.leading() as lead, locks.unit_lock(run.layout.lock("train"), f"the classifier of {run.layout.root}",
                                                  run.config.runtime.wait_for_locks):
        fingerprint = classifier_fingerprint(run)
        atomic.check_writable(run.layout.root)
        atomic.remove_stale_temporaries(run.layout.root, run.layout.classifier.name)  # a killed save
        if classifier_is_complete(run, fingerprint):
            checkpoint.discard(run.layout.classifier_checkpoint)
            log.info("train: classifier already complete")
        elif run.config.classifier.train_on == "none":
            # Nothing to train, but the weights are read once: a broken model is found here, not
            # by whatever uses the classifier later (or by nothing, in a run without a test split).
            load_pretrained(run.config.classifier.model)
            save_classifier(run, fingerprint, model=None, info={"selected_by": "zero-shot"})
            log.info("train: classifier.train_on=none, zero-shot CLIP with the class prompts (its weights load)")
        else:
            data = training_data(run)
            lead.go()  # the other processes of a launch train with this one
            ClassifierTrainer(run, data).fit()
    return run.layout.classifier


def save_classifier(run: Run, fingerprint: str, model, info: dict) -> None:
    cfg = run.config.classifier
    with atomic.staged_directory(run.layout.classifier) as staging:
        if model is not None:
            model.save_pretrained(staging / LORA_FOLDER)
        atomic.write_json(staging / PROMPTS, {
            "classes": [c.name for c in run.manifest.classes],
            "prompts": [c.prompt for c in run.manifest.classes],
        })
        files = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()]
        atomic.write_json(staging / CLASSIFIER_MARKER, {
            "fingerprint": fingerprint, "train_on": cfg.train_on, "model": cfg.model,
            "files": record_files(staging, files), **info,
        })


class ClassifierTrainer:
    def __init__(self, run: Run, data: TrainingData):
        self.run, self.data = run, data
        self.cfg = cfg = run.config.classifier
        self.seed = run.config.runtime.seed
        # A launch of several processes trains data-parallel (docs/ddp.md); alone, a no-op group.
        self.group = group = distributed.start(run.config.runtime.device)
        self.device = distributed.local_device(resolve_device(run.config.runtime.device))
        self.dtype = resolve_dtype(run.config.runtime.precision, self.device)
        self.workers = loader_workers(cfg.workers)
        if group.size > 1 and cfg.workers < 0:  # the node's cores are shared by its processes
            self.workers = max(1, self.workers // group.local_size)
        self.classifier = classifier = load_pretrained(cfg.model)
        torch.manual_seed(derive_seed(self.seed, "classifier-init"))  # peft draws LoRA A from the global RNG
        classifier.add_lora(cfg.rank, cfg.alpha, cfg.dropout)
        classifier.to(self.device)
        # Each process forwards only its share of the image batch; the image tower's LoRA dropout
        # draws the whole batch's masks, so the random stream stays the one process's.
        self.share_dropouts = distributed.share_dropouts(classifier.model, "vision_model.") if group.size > 1 else []
        vision = classifier.model.config.vision_config
        if group.size > 1 and max(getattr(vision, "dropout", 0.0), getattr(vision, "attention_dropout", 0.0)) > 0:
            log.warning("train: %s has dropout in its image tower: each process draws its own masks, so the result"
                        " is not the one-process result (OpenAI's CLIP has none)", cfg.model)
        self.size = classifier.image_size
        self.augment = TrainAugment(self.size, *classifier.normalisation).to(self.device)
        self.tokens = classifier.tokenize([c.prompt for c in run.manifest.classes], self.device)
        self.params = [p for p in classifier.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(data.samples) / cfg.batch_size)
        self.epochs = cfg.epochs_for(len(run.manifest.classes) * run.config.synthesize.images_per_class,
                                     len(data.samples))
        total_steps = self.epochs * self.steps_per_epoch
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        self.schedule = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, num_warmup_steps=round(cfg.warmup * total_steps), num_training_steps=total_steps,
            min_lr=cfg.min_lr,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.val = split_samples(run.config.data, run.manifest, "val") or None
        group.check_same((data.fingerprint, len(data.samples), len(self.val or [])), "the training data")
        if group.size > cfg.batch_size:
            log.warning("train: classifier.batch_size=%d is smaller than the %d processes: some have no images",
                        cfg.batch_size, group.size)

    def fit(self) -> None:
        from datadream.tracking import curve_writer

        started = time.time()
        cfg, layout, group = self.cfg, self.run.layout, self.group
        live = checkpoint.TrainingState(self.params, self.optimizer, self.schedule, self.scaler)
        start_epoch, history, best, best_weights = 0, [], None, None
        # Several processes: rank 0 reads the checkpoint and sends the state to the others.
        restored = checkpoint.restore_shared(layout.classifier_checkpoint, self.data.fingerprint, live, group)
        if restored is not None:
            meta, tensors = restored
            start_epoch, history, best = meta["epoch"], meta["history"], meta["best"]
            if best is not None:
                best_weights = [tensors[f"best.{i}"] for i in range(len(self.params))]
            log.info("train: resuming after epoch %d of %d", start_epoch, self.epochs)
        log.info("train: %d images (%s), %d epochs of %d steps, on %s%s", len(self.data.samples), cfg.train_on,
                 self.epochs, self.steps_per_epoch, self.device,
                 f" (rank {group.rank} of {group.size} data-parallel processes)" if group.size > 1 else "")
        # Only rank 0 writes files: curves, checkpoints, the classifier.
        writer = (curve_writer(layout.train_logs, start_epoch * self.steps_per_epoch, self.run.config,
                               layout.root.name) if group.is_main else _NoCurves())
        try:
            for epoch in range(start_epoch, self.epochs):
                row = self.train_epoch(epoch, writer)
                if self.val is not None:
                    row["val_top1"] = self.validate()
                    writer.add_scalar("val/top1", row["val_top1"], (epoch + 1) * self.steps_per_epoch)
                    if best is None or row["val_top1"] > best["val_top1"]:
                        best = {"epoch": epoch + 1, "val_top1": row["val_top1"]}
                        best_weights = [p.detach().float().cpu().clone() for p in self.params]
                history.append(row)
                if not group.is_main:
                    continue
                log.info("train: epoch %d/%d %s", epoch + 1, self.epochs,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
                extra = {f"best.{i}": w for i, w in enumerate(best_weights)} if best_weights else {}
                checkpoint.save(layout.classifier_checkpoint, self.data.fingerprint, live,
                                meta={"epoch": epoch + 1, "history": history, "best": best}, tensors=extra)
        finally:
            writer.close()
        if best_weights is not None:
            for param, weights in zip(self.params, best_weights):
                param.data.copy_(weights)
        selection = ({"selected_epoch": best["epoch"], "selected_by": "val top-1"} if best
                     else {"selected_epoch": self.epochs, "selected_by": "last epoch (no data.val)"})
        if group.is_main:
            save_classifier(self.run, self.data.fingerprint, self.classifier.model,
                            {**selection, "epochs": self.epochs, "steps": self.epochs * self.steps_per_epoch,
                             "history": history})
            checkpoint.discard(layout.classifier_checkpoint)
            log_timing(layout.timings, {"stage": "train", "epochs": self.epochs - start_epoch,
                                        "seconds": round(time.time() - started, 1),
                                        **({"processes": group.size} if group.size > 1 else {})})
        group.barrier()  # every process returns once the classifier is saved

    def train_epoch(self, epoch: int, writer) -> dict:
        """One epoch. With several processes (self.group), each decodes its contiguous share of
        every global batch; the shares are all-gathered, so every process augments and mixes the
        whole batch with the same random draws as one process, then forwards and backwards only
        its share with the loss normalised by the global counts; the gradients are summed."""
        cfg, group = self.cfg, self.group
        # Everything random in an epoch derives from (seed, epoch): a resumed epoch replays exactly.
        torch.manual_seed(derive_seed(self.seed, "classifier-epoch", epoch))
        # The order is drawn here, not by the loader: a loader's shuffle draws from its generator
        # whenever an iterator is made (a progress wrapper, worker start-up), so the order would
        # depend on speed-only settings such as the number of workers.
        order = torch.randperm(len(self.data.samples),
                               generator=torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch)))
        batching = {"batch_size": cfg.batch_size, "sampler": order.tolist()}
        if group.size > 1:  # this process decodes only its share of each global batch
            batches = order.split(cfg.batch_size)
            batching = {"batch_sampler": [batch[group.share(len(batch))].tolist() for batch in batches],
                        "collate_fn": functools.partial(_collate_share, self.size)}
        loader = torch.utils.data.DataLoader(
            TrainImages(self.data.samples, self.size, self.seed, epoch), **batching,
            generator=torch.Generator().manual_seed(derive_seed(self.seed, "loader", epoch)),
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
        )
        weight = cfg.real_weight if cfg.train_on == "synthetic+real" else None
        classes = len(self.run.manifest.classes)
        self.classifier.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = progress(start_loader(loader), len(loader), desc=f"train epoch {epoch + 1}/{self.epochs}", unit="step",
                       leave=False, disable=not group.is_main)
        for step, (images, labels, is_real) in enumerate(bar):
            if group.size > 1:  # the whole global batch, in the global order, on every process
                total = min(cfg.batch_size, len(order) - step * cfg.batch_size)
                images, labels, is_real = (group.gather(t.to(self.device, non_blocking=True), total)
                                           for t in (images, labels, is_real))
            images = self.augment(images.to(self.device, non_blocking=True))
            labels, is_real = labels.to(self.device), is_real.to(self.device)
            targets = F.one_hot(labels, classes).float()
            rng = random.Random(derive_seed(self.seed, "mix", epoch, step))
            if rng.random() < cfg.mix_prob:
                groups = [torch.nonzero(is_real).flatten(), torch.nonzero(~is_real).flatten()]
                mix_within(images, targets, groups, rng)
            self.optimizer.zero_grad(set_to_none=True)
            if group.size > 1:
                loss, correct_here = self.share_step(images, labels, targets, is_real, weight)
                group.sum_gradients(self.params)
                loss, correct_here = group.sum(torch.stack([loss, correct_here.float()])).tolist()
                loss = torch.tensor(loss)
            else:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    text = self.classifier.text_features(self.tokens)  # the text tower is trained too
                    logits = self.classifier.logits(self.classifier.image_features(images), text)
                loss = origin_weighted_loss(logits, targets, is_real, weight)
                self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            if not math.isfinite(loss.item()):
                raise UserError(f"train: the loss became {loss.item()} in epoch {epoch + 1}; try"
                                " runtime.precision=fp32 or a lower classifier.lr")
            global_step = epoch * self.steps_per_epoch + step + 1
            writer.add_scalar("train/loss", loss.item(), global_step)
            writer.add_scalar("train/lr", self.schedule.get_last_lr()[0], global_step)
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(-1) == labels).sum()) if group.size == 1 else round(correct_here)
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        writer.add_scalar("train/top1", 100.0 * correct / seen, global_step)
        return {"epoch": epoch + 1, "loss": total_loss / seen, "train_top1": 100.0 * correct / seen,
                "lr": self.schedule.get_last_lr()[0]}

    def share_step(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, is_real: torch.Tensor,
                   weight: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of this process's share of a global batch (several processes):
        the loss is this share's part of the global batch's loss (normalised by the global
        counts), so the processes' gradients sum to the one-process gradient. Returns (that part
        of the loss, this share's correct predictions), detached."""
        mine = self.group.share(len(labels))
        if mine.start == mine.stop:  # a last batch smaller than the number of processes
            return torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for dropout in self.share_dropouts:
            dropout.total, dropout.lo, dropout.hi = len(labels), mine.start, mine.stop
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            text = self.classifier.text_features(self.tokens)  # every process: all the class prompts
            logits = self.classifier.logits(self.classifier.image_features(images[mine]), text)
        loss = origin_weighted_loss(logits, targets[mine], is_real[mine], weight, batch_is_real=is_real)
        self.scaler.scale(loss).backward()
        return loss.detach().float(), (logits.argmax(-1) == labels[mine]).sum()

    def validate(self) -> float:
        group = self.group
        if group.size == 1:
            _, top1, _ = score(self.classifier, self.tokens, EvalImages(self.val, self.size), self.cfg.eval_batch_size,
                               self.workers, self.device, self.dtype, desc="validate")
            return round(100.0 * float(top1.float().mean()), 4)
        # Several processes: each scores its share, and every process gets all the hits in order,
        # so the selection of the best epoch is the one process's, on every process.
        mine = self.val[group.share(len(self.val))]
        top1 = torch.zeros(0, dtype=torch.bool)
        if mine:
            _, top1, _ = score(self.classifier, self.tokens, EvalImages(mine, self.size), self.cfg.eval_batch_size,
                               self.workers, self.device, self.dtype, desc="validate")
        top1 = group.gather(top1.bool(), len(self.val))
        return round(100.0 * float(top1.float().mean()), 4)


class _NoCurves:
    """The curve writer of processes other than rank 0."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _collate_share(size: int, batch: list):
    """default_collate, and an empty share (a last batch smaller than the number of processes)."""
    if not batch:
        return (torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.bool))
    return torch.utils.data.default_collate(batch)
