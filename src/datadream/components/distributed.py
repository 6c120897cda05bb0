"""Data-parallel training of one model over the processes of a launch (one process per GPU).

Started by a launcher that sets the torchrun variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), one process per GPU of the node:

    torchrun --standalone --nproc-per-node 8 -m datadream train RUN
    accelerate launch --multi_gpu --num_processes 8 -m datadream train RUN

(`accelerate launch` starts its processes through torchrun; with `--cpu` it starts one process
only, so CPU launches, as in the tests, go through torchrun.) Without those variables everything
here is a no-op for one process (`SINGLE`), and the single-process code paths run unchanged.

Why accelerate, and why not its (or torch's) DistributedDataParallel wrapper:
- The process group is brought up by accelerate's `PartialState`, already a dependency: it reads
  the variables of torchrun, `accelerate launch` and MPI launchers alike, picks nccl for GPUs (and
  the backends of other accelerators) and sets each process's device to its LOCAL_RANK. On a
  machine without GPUs it brings up gloo only when asked with `cpu=True`; without it, a torchrun
  launch on CPU silently gives N independent single processes (accelerate 1.15,
  `PartialState._prepare_backend`), so `start` passes `cpu=True` (and `backend="gloo"`, which
  accelerate would otherwise replace by mpi where torch has MPI) for runtime.device=cpu.
- The gradients are summed by one all-reduce of the flattened LoRA gradients after the backward
  pass (`sum_gradients`), not by wrapping the model in DDP: the CLIP classifier is called through
  `get_text_features` / `get_image_features`, not `forward`, which DDP's reducer needs to see; the
  trained weights are LoRA only (a few MB), so DDP's overlap of communication with the backward
  pass gains next to nothing; and a SUM of the processes' gradients of a loss normalised by the
  global batch is exactly the one-process gradient, where DDP averages (divides by the world size)
  and would have to be compensated by scaling the loss. Ray Train would add a dependency and a
  second way of starting processes for what a launcher and one all-reduce do.

How a step equals the one-process step for the same global batch (datadream.stages.train,
datadream.engines.lora_training): every process knows the whole global batch (the order and the
random draws come from seeded generators; the classifier's decoded images are all-gathered), draws
every random number the one process draws in the same order, computes the loss only for its
contiguous share of the batch (`Group.bounds`) normalised by the global counts, and the summed
gradients make the same optimizer step on every process.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from datadream.errors import UserError

log = logging.getLogger(__name__)

# Only torchrun's variables (set by torchrun and accelerate launch) mean "one model over these
# processes". MPI's (PMI_SIZE, OMPI_COMM_WORLD_SIZE, ...) are also set by `srun -n 8` or `mpirun`
# starting 8 independent workers on one run (docs/scaling.md), which must not wait for each other
# in a process group; the CLI refuses other commands by the same variable.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE",)
LOCAL_RANK_VARIABLES = ("LOCAL_RANK",)


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip():
            try:
                return int(value)
            except ValueError:
                raise UserError(f"the launcher's variable {name}={value!r} is not a number") from None
    return default


def launched() -> bool:
    """Whether this process is one of several started by a launcher (torchrun, accelerate launch)."""
    return _env_int(WORLD_SIZE_VARIABLES, 1) > 1


def local_device(device: torch.device) -> torch.device:
    """The device of this process: under a launcher, runtime.device=auto or cuda means the GPU of
    this process's local rank (every process would use GPU 0 otherwise). Not launched, or not a
    GPU: `device` unchanged."""
    if device.type != "cuda" or not launched():
        return device
    if device.index is not None:
        raise UserError(f"runtime.device={device} in a launch of several processes: use runtime.device=auto or"
                        " cuda, and each process uses the GPU of its LOCAL_RANK (choose GPUs with"
                        " CUDA_VISIBLE_DEVICES)")
    local_rank = _env_int(LOCAL_RANK_VARIABLES, 0)
    count = torch.cuda.device_count()
    if count == 1:  # one GPU per process, chosen by the scheduler (CUDA_VISIBLE_DEVICES)
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise UserError(f"process of local rank {local_rank} but only {count} GPU(s) are visible; start at most one"
                        " process per GPU")
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class Group:
    """The processes training one model together; `SINGLE` (one process) makes every method a no-op."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- shares of a global batch ---------------------------------------------------------------

    def bounds(self, total: int, rank: int | None = None) -> tuple[int, int]:
        """[lo, hi) of this process's contiguous share of `total` items: the first `total % size`
        processes take one more; the shares in rank order are the items in order."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(total, self.size)
        lo = rank * base + min(rank, extra)
        return lo, lo + base + (1 if rank < extra else 0)

    def share(self, total: int) -> slice:
        return slice(*self.bounds(total))

    # --- collectives (no-ops in one process) ----------------------------------------------------

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every process (picklable; tensors in it travel on the CPU)."""
        if self.size == 1:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the processes (a new tensor on `tensor`'s device)."""
        if self.size == 1:
            return tensor
        summed = tensor.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(summed)
        return summed.to(tensor.device)

    def gather(self, tensor: torch.Tensor, total: int) -> torch.Tensor:
        """Every process's share (rows `bounds(total)` of a global batch of `total` rows), put
        back together in rank order on every process: the global batch."""
        if self.size == 1:
            return tensor
        lo, hi = self.bounds(total)
        if tensor.shape[0] != hi - lo:
            raise ValueError(f"gather: {tensor.shape[0]} rows, the share of rank {self.rank} is {hi - lo}")
        width = -(-total // self.size)  # the largest share; smaller ones are padded to it
        wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        padded = wire.new_zeros((width, *tensor.shape[1:]), device=self.device)
        padded[:hi - lo] = wire
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        torch.distributed.all_gather(parts, padded)
        rows = [part[:b - a] for part, (a, b) in zip(parts, (self.bounds(total, r) for r in range(self.size)))]
        return torch.cat(rows).to(tensor.device, tensor.dtype)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over the processes, in one all-reduce per
        dtype. A parameter without a gradient here (a process whose share of the batch was empty)
        counts as zero and leaves with the summed gradient, like everywhere else; one without a
        gradient in every process (outside the loss's graph, such as LoRA on a text encoder layer
        after the one whose states the family reads) stays without, as in one process, so that
        AdamW leaves it alone (no weight decay either)."""
        if self.size == 1:
            return
        buckets: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for param in params:
            buckets.setdefault(param.dtype, []).append(param)
        for members in buckets.values():
            present = torch.tensor([float(p.grad is not None) for p in members], dtype=members[0].dtype)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten()
                              .to(self.device) for p in members] + [present.to(self.device)])
            torch.distributed.all_reduce(flat)
            counts = flat[-len(members):].tolist()
            offset = 0
            for param, count in zip(members, counts):
                value = flat[offset:offset + param.numel()].view_as(param).to(param.device)
                offset += param.numel()
                if count == 0:
                    param.grad = None
                elif param.grad is None:
                    param.grad = value.clone()
                else:
                    param.grad.copy_(value)

    def check_same(self, value: Any, what: str) -> None:
        """Refuse to train when the processes disagree on `value` (e.g. they see different files)."""
        if self.size == 1:
            return
        values = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise UserError(f"the processes of the launch disagree on {what} ({values[0]!r} on rank 0, "
                            f"{next(v for v in values if v != values[0])!r} elsewhere); they must see the same"
                            " run folder and files")

    # --- rank 0 decides, the others follow ------------------------------------------------------

    @contextmanager
    def leading(self) -> Iterator["Lead"]:
        """On rank 0, around a unit's lock and checks: the other processes wait in `follow` until
        `Lead.go()` (train together), the block ends without it (nothing to do), or raises (they
        raise the same error instead of waiting for a collective that never comes)."""
        lead = Lead(self)
        try:
            yield lead
        except BaseException as err:
            if not lead.told and self.size > 1:
                kind = "user" if isinstance(err, UserError) else type(err).__name__
                self.broadcast_object(("error", kind, str(err).strip().splitlines()[-1] if str(err).strip() else ""))
            raise
        if not lead.told and self.size > 1:
            self.broadcast_object(("skip", "", ""))

    def follow(self) -> bool:
        """On ranks > 0: True when rank 0 trains the unit (join it), False when there is nothing to do."""
        what, kind, message = self.broadcast_object(None)
        if what == "error":
            if kind == "user":
                raise UserError(message)
            raise RuntimeError(f"rank 0 stopped with {kind}: {message}")
        return what == "go"


class Lead:
    def __init__(self, group: Group):
        self.group, self.told = group, False

    def go(self) -> None:
        """Tell the other processes to train with this one (collectives follow)."""
        if not self.told and self.group.size > 1:
            self.group.broadcast_object(("go", "", ""))
        self.told = True


SINGLE = Group()


def start(device_spec: str) -> Group:
    """The group of this launch, its process group brought up on first use (every process must
    call it); `SINGLE` when not launched. `device_spec` is runtime.device: cpu trains over gloo,
    a GPU over nccl."""
    if not launched():
        return SINGLE
    from accelerate import PartialState

    from datadream.components.loading.models import resolve_device

    device = local_device(resolve_device(device_spec))
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"runtime.device={device_spec}: data-parallel training runs on CUDA GPUs or on the CPU")
    cpu = device.type == "cpu"
    state = PartialState(cpu=cpu, backend="gloo") if cpu else PartialState()
    expected = _env_int(WORLD_SIZE_VARIABLES, 1)
    if state.num_processes != expected:
        raise UserError(f"the launcher started {expected} processes but accelerate brought up {state.num_processes}"
                        f" ({state.distributed_type}); check runtime.device ({device_spec}) against the launch")
    comm = torch.device("cpu") if state.backend in ("gloo", "mpi") else state.device
    group = Group(rank=state.process_index, size=state.num_processes,
                  local_size=_env_int(("LOCAL_WORLD_SIZE",), state.num_processes), device=comm)
    log.debug("data-parallel: rank %d of %d over %s", group.rank, group.size, state.backend)
    return group


class ShareDropout(torch.nn.Module):
    """Dropout of one process's share of a data-parallel batch: draws the mask for the whole
    global batch (as the one process does, from the same random state, so the random stream stays
    in step) and applies its share's rows. Set `total`, `lo`, `hi` before each forward."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.total, self.lo, self.hi = 0, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.shape[0] != self.hi - self.lo:
            raise ValueError(f"ShareDropout: {x.shape[0]} rows for a share of {self.hi - self.lo}")
        mask = F.dropout(x.new_ones((self.total, *x.shape[1:])), self.p, True)
        return x * mask[self.lo:self.hi]


def share_dropouts(model: torch.nn.Module, prefix: str) -> list[ShareDropout]:
    """Replace the LoRA dropouts of the modules under `prefix` (the image tower, whose batch is
    split between the processes) with ShareDropout; returns them, to be told each step's share."""
    replaced = []
    for name, module in model.named_modules():
        table = getattr(module, "lora_dropout", None)
        if prefix not in name or not isinstance(table, torch.nn.ModuleDict):
            continue
        for key, dropout in list(table.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                table[key] = ShareDropout(dropout.p)
                replaced.append(table[key])
    return replaced
