"""Run the units of one or more runs as Ray tasks, on a local machine or a cluster.

The driver plans every run, keeps the units whose files do not say "complete", and submits one
Ray task per unit *key* (datadream.runners.graph, which holds everything here that is not a Ray
call): two runs that share work (benchmark cells that share adapters through the
content-addressed store) share one task, and each run's dependents wait on that task. A
unit's dependencies go to its task as ObjectRefs, so Ray starts it the moment they are done and
the cluster stays busy across stages and runs (few-shot -> adapters -> synthetic shards ->
index -> classifier -> evaluation) instead of stage by stage.

Each task calls the very `execute(unit)` the local runner calls, so a run made on Ray is
byte-identical to one made locally. `execute` is idempotent and atomic, which is what makes the
rest simple: a retried task, a unit submitted by two drivers, or a driver that is killed and
started again all end with the same files, and a rerun submits only what is not complete.

Run folders (and the store) must be on storage that the driver and every node see under the same
absolute path: the driver reads units' state from the files, the workers write them.

`ray` is an optional dependency; it is imported only in this module, and only when called.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from datadream.config import RuntimeConfig
from datadream.errors import UserError
from datadream.runners.graph import GraphResult, Task, Tracker, collect_tasks, pending_line

if TYPE_CHECKING:  # units.py is torch-free, but the runner only needs the shape of a unit
    from datadream.units import WorkUnit

logger = logging.getLogger(__name__)

INSTALL_HINT = "the Ray runner needs ray: pip install 'datadream[ray]'"

# GPU requests are whole eighths of a GPU: finer steps would pack more units on a GPU than the
# memory estimates are accurate for, and Ray keeps fractional requests exact in these steps.
GPU_STEPS = 8
DEFAULT_MAX_RETRIES = 3
# The GPU-memory probe waits this long for a slot on every GPU node before giving up (a busy
# shared cluster); it then falls back to one whole GPU per unit, which is always safe.
PROBE_TIMEOUT_S = 300.0
PROBE_GPUS = 0.01  # enough for Ray to give the probe a CUDA device, small enough to fit anywhere
# ray.init retries an address where nothing answers for minutes, saying so only in its own C++
# warnings; a plain connect answers in this long.
CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001  # Ray's default for ray://HOST


class UnitError(RuntimeError):
    """A unit's ordinary error (a bug, a flaky disk, CUDA out of memory), raised again by its task
    under this one type so that Ray retries exactly these.

    Ray's `retry_exceptions` is an allow-list (a list of types: retried when the raised exception
    is an instance of one), not a deny-list, so "every Exception except UserError" cannot be said
    directly: UserError is itself an Exception. The task therefore raises UserError unchanged
    (not retried: a user mistake fails the same way every time) and every other error as
    UnitError, chained to the original so the worker's traceback still shows where it came from.
    Only the message crosses back to the driver, so an error that cannot be pickled (some CUDA
    and C-extension errors) still reports cleanly.
    """


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise UserError(INSTALL_HINT) from error
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One line, within `timeout` seconds, when nothing listens at the cluster address ray.init
    would join: HOST:PORT (the head's GCS) or ray://HOST[:PORT] (the Ray client server), given
    here or in RAY_ADDRESS. "auto", other schemes and an empty address are left to Ray."""
    given = address
    address = address or os.environ.get("RAY_ADDRESS", "")
    setting, unset = ((f"runtime.ray_address={address}", "leave runtime.ray_address empty") if given else
                      (f"RAY_ADDRESS={address}", "unset RAY_ADDRESS"))
    if address in ("", "auto", "local") or ("://" in address and not address.startswith("ray://")):
        return
    target = address.removeprefix("ray://")
    if ":" not in target or target.endswith("]"):  # no port: ray:// has a default, the GCS none
        host, port = target, str(RAY_CLIENT_PORT) if address.startswith("ray://") else ""
    else:
        host, _, port = target.rpartition(":")
    host = host.strip("[]")  # an IPv6 address: [::1]:6379
    if not host or not port.isdigit():
        raise UserError(f"{setting}: expected HOST:PORT of the head node (e.g. 10.0.0.5:6379), ray://HOST:10001"
                        " or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        reason = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else err.strerror or str(err)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise UserError(f"{setting}: cannot reach a Ray cluster at {where} ({reason}); start it (`ray start --head`"
                        f" on the head node) or correct the address, or {unset} for a local Ray cluster") from None


def gpu_request(gpu_memory: float, gpu_memory_bytes: float | None, cluster_gpus: float) -> float:
    """The `num_gpus` a unit asks Ray for.

    0 when the cluster has no GPU (a CPU cluster runs every unit on CPU, as the run's config
    says); otherwise the unit's estimated peak memory as a share of one GPU's memory, rounded up
    to eighths and capped at one whole GPU (a unit never spans GPUs). Without a known GPU size the
    request is a whole GPU: slower packing, never an out-of-memory crash.
    """
    if cluster_gpus <= 0 or gpu_memory <= 0:
        return 0.0
    if not gpu_memory_bytes or gpu_memory_bytes <= 0:
        return 1.0
    steps = math.ceil(gpu_memory / gpu_memory_bytes * GPU_STEPS - 1e-9)
    return min(GPU_STEPS, max(1, steps)) / GPU_STEPS


def _gpu_total_memory() -> int | None:
    """In a Ray worker given a GPU: that GPU's memory in bytes, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def probe_gpu_memory(ray: Any, timeout: float = PROBE_TIMEOUT_S) -> int | None:
    """The memory of the smallest GPU in the cluster, in bytes, or None when it cannot be told.

    Ray does not know a GPU's memory: a node's resources say how many GPUs it has and their model
    (`accelerator_type:A100`), and a model name is not a size (A100 comes with 40 and 80 GB). So a
    tiny task asks torch on every GPU node (pinned there with a hard node affinity). The smallest
    size is used for every request, so a unit sized for it fits on any GPU of the cluster.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes()
             if node.get("Alive") and node.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        return None
    # max_calls=1: the probe's worker exits afterwards, so its CUDA context does not hold GPU
    # memory for the rest of the run. num_cpus=0: it must not wait behind a busy node's CPUs.
    probe = ray.remote(num_gpus=PROBE_GPUS, num_cpus=0, max_calls=1)(_gpu_total_memory)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in nodes]
    try:
        sizes = ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        for ref in refs:
            ray.cancel(ref, force=True)
        return None
    except ray.exceptions.RayError:
        return None
    known = [size for size in sizes if size]
    return min(known) if known else None


_worker_logging_ready = False


def _configure_worker_logging(level: int) -> None:
    """A Ray worker's root logger has no handler, so the stages' INFO lines (progress of long
    loops) would be dropped. Give the `datadream` logger one, at the driver's level; Ray sends a
    worker's stderr to the driver, prefixed with the task's name and process."""
    global _worker_logging_ready
    if _worker_logging_ready:
        return
    _worker_logging_ready = True
    package = logging.getLogger("datadream")
    package.setLevel(level)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.propagate = False


def _run_units(execute: Callable[[Any], None], units: tuple, log_level: int, threads: int,
               *dependencies: Any) -> dict:
    """The body of every task. `threads` is the torch thread count the driver chose for the task
    (datadream.threads). `dependencies` are the results of the tasks this one waits for: Ray
    resolves ObjectRefs given as arguments before it starts the task, which is all the ordering
    there is; their values are not used."""
    from datadream import threads as unit_threads

    _configure_worker_logging(log_level)
    unit_threads.given(threads)
    started = time.monotonic()
    try:
        # Every run's unit of the key: the first does the work, the others find it complete
        # (execute returns at once) or do what their own run still needs.
        for unit in units:
            execute(unit)
    except UserError:
        raise
    except Exception as error:
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise UnitError(message) from error
    return {"seconds": time.monotonic() - started, "node": socket.gethostname()}


def _one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_message(error: BaseException) -> tuple[str, bool]:
    """One line for what ray.get raised, and whether it is the user's mistake."""
    cause = getattr(error, "cause", None)  # RayTaskError carries the task's own exception
    if isinstance(cause, UserError):
        return _one_line(str(cause)), True
    if isinstance(cause, UnitError):
        return _one_line(str(cause)), False
    if cause is not None:
        return f"{type(cause).__name__}: {_one_line(str(cause))}", False
    # The worker or its node died after the last retry (WorkerCrashedError, OutOfMemoryError,
    # NodeDiedError ...): Ray's message says which.
    return f"{type(error).__name__}: {_one_line(str(error))}", False


def run_ray(
    runs: Iterable[Path],
    address: str = "",
    log: Callable[[str], None] | None = None,
    *,
    gpu_memory_bytes: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    keep_workers: bool = True,
    plan: Callable[[Path], list[WorkUnit]] | None = None,
    execute: Callable[[WorkUnit], None] | None = None,
    state: Callable[[WorkUnit], str] | None = None,
) -> GraphResult:
    """Do every unit of `runs` (initialised run folders) that is not complete, as Ray tasks.

    address: "" starts a local Ray cluster that uses every CPU and GPU of this machine (and is
        shut down at the end); otherwise the address of a running cluster ("auto", "ray://..").
        When the caller has already connected (ray.is_initialized()), that connection is used.
    log: gets one line per finished unit, progress every DATADREAM_PROGRESS_SECONDS seconds, one
        line per failure and a summary; default: this module's logger at INFO.
    gpu_memory_bytes: the memory of one GPU, to size each unit's fractional GPU request; default:
        probed on the cluster's GPU nodes (smallest wins), one whole GPU per unit if it cannot be.
    max_retries: how many times a task is run again after its worker died or it raised an
        ordinary error; a UserError is never retried.
    keep_workers: reuse a worker process for the next task, so models it loaded stay loaded.
    plan, execute, state: the planning, execution and state functions; the real ones by default
        (tests pass fakes). `execute` must be importable by the workers (pickled by reference).

    Failures do not raise: each is logged as one line and returned in the result, so the caller
    decides how to exit. The driver can be killed and run again: it plans again and submits only
    what is not complete.
    """
    ray = import_ray()
    say = log or logger.info
    if plan is None or state is None:
        from datadream.artifacts import unit_state
        from datadream.units import plan_work

        plan, state = plan or plan_work, state or unit_state
    if execute is None:
        from datadream.runners.execute import execute

    folders = list(dict.fromkeys(Path(run).resolve() for run in runs))
    tasks, complete = collect_tasks(folders, plan, state)
    say(pending_line("ray", tasks, len(folders), complete))
    result = GraphResult(submitted=len(tasks), already_complete=complete)
    if not tasks:
        return result

    started_here = not ray.is_initialized()
    if started_here:
        check_reachable(address)
        ray.init(address=address or None)
    try:
        refs = _submit(ray, tasks, folders, say, gpu_memory_bytes, max_retries, keep_workers, execute)
        _wait(ray, refs, Tracker("ray", result, len(folders) > 1, say))
    finally:
        if started_here:
            ray.shutdown()
    return result


def run_units(runs: list[Path], runtime: RuntimeConfig) -> None:
    """Registered as "ray": every run's units as one graph of Ray tasks on the cluster at
    runtime.ray_address; failures (said one line each) end in one UserError."""
    run_ray(runs, runtime.ray_address).raise_if_failed()


def task_threads(setting: int, node_cpus: list[float]) -> int:
    """The torch threads of a task: runtime.threads, or by default the cores a local run on the
    driver would use, at most the smallest node's CPUs (so that every node can run the task).
    An explicit count no node has is refused: Ray would wait for such a node forever."""
    from datadream import threads

    largest = int(max(node_cpus, default=0))
    if setting > 0:
        if largest and setting > largest:
            raise UserError(f"runtime.threads={setting}, but the largest node of the Ray cluster has {largest}"
                            f" CPUs; set runtime.threads to at most {largest} (0: choose)")
        return setting
    smallest = int(min(node_cpus, default=0))
    return max(1, min(threads.local_default(), smallest) if smallest else threads.local_default())


def _cluster_gpu_memory(ray: Any, tasks: list[Task], say: Callable[[str], None],
                        gpu_memory_bytes: float | None) -> tuple[float, float | None]:
    """The cluster's GPU count and the memory of one GPU (given, or probed when a task needs one)."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    if cluster_gpus and gpu_memory_bytes is None and any(task.gpu_memory > 0 for task in tasks):
        gpu_memory_bytes = probe_gpu_memory(ray)
        say(f"ray: {cluster_gpus:g} GPU(s) of {gpu_memory_bytes / 2**30:.1f} GiB (smallest)" if gpu_memory_bytes
            else f"ray: {cluster_gpus:g} GPU(s) of unknown memory: one whole GPU per GPU unit")
    return cluster_gpus, gpu_memory_bytes


def _threads_of(ray: Any, tasks: list[Task], folders: list[Path]) -> dict[str, int]:
    """Each task's torch threads, all checked before anything is submitted."""
    from datadream.threads import run_setting

    node_cpus = [float(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    node_cpus = [cpus for cpus in node_cpus if cpus > 0]
    settings = {run: run_setting(run) for run in folders}
    return {task.key: task_threads(settings.get(Path(task.units[0].run).resolve(), 0), node_cpus) for task in tasks}


def _submit(ray: Any, tasks: list[Task], folders: list[Path], say: Callable[[str], None],
            gpu_memory_bytes: float | None, max_retries: int, keep_workers: bool,
            execute: Callable[[Any], None]) -> dict[Any, tuple[int, Task]]:
    """One Ray task per graph task, in dependency order: each gets its dependencies' ObjectRefs
    as arguments, so Ray starts it when they are done. Returns ref -> (submission index, task)."""
    cluster_gpus, gpu_memory_bytes = _cluster_gpu_memory(ray, tasks, say, gpu_memory_bytes)
    # max_calls is the number of tasks a worker process runs before it exits. Ray 2.60 makes it 1
    # for a function whose @ray.remote asks for GPUs (RemoteFunction.__init__, "set the task
    # non-recyclable by default", ray-project/ray#29624), so that each GPU task frees the GPU
    # memory it held. Here GPUs are asked for per task through .options(), which leaves max_calls
    # at its default 0 (no limit), and max_calls cannot be set in .options(); it is set here, on
    # the function, so that the choice does not hang on that detail. No limit keeps a worker and
    # what it loaded (the generator, CLIP) for the next unit instead of paying the load again;
    # keep_workers=False (max_calls=1) trades that for a fresh process per unit, for code that
    # leaks GPU memory. Ray does not count an idle worker's GPU memory against later requests.
    remote = ray.remote(max_calls=0 if keep_workers else 1)(_run_units)
    threads_of = _threads_of(ray, tasks, folders)
    log_level = logging.getLogger("datadream").getEffectiveLevel()
    refs: dict[str, Any] = {}
    task_of: dict[Any, tuple[int, Task]] = {}
    for index, task in enumerate(tasks):
        gpus = gpu_request(task.gpu_memory, gpu_memory_bytes, cluster_gpus)
        threads = threads_of[task.key]
        ref = remote.options(
            num_gpus=gpus,
            # A CPU unit computes on the cores it asks for; a GPU unit's work is on the GPU, and
            # asking for more than one core would stop Ray packing several units on one GPU.
            num_cpus=threads if gpus == 0 else 1,
            # Ray would set OMP_NUM_THREADS to the CPUs asked for, which sizes numpy's BLAS pool
            # (inspect's statistics): the unit's thread count, as in a local process.
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}},
            max_retries=max_retries,  # also covers a worker that died (killed, OOM, lost node)
            retry_exceptions=[UnitError],  # ordinary errors only: see UnitError
            name=task.label,  # names the task in Ray's logs and dashboard
        ).remote(execute, tuple(task.units), log_level, threads, *(refs[dep] for dep in sorted(task.deps)))
        refs[task.key] = ref
        task_of[ref] = (index, task)
    return task_of


def _wait(ray: Any, task_of: dict[Any, tuple[int, Task]], tracker: Tracker) -> None:
    waiting = list(task_of)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=tracker.seconds_to_progress())
        if ready and waiting:  # take every other finished task too, without waiting
            more, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            ready += more
        # A task is ready only after its dependencies are, so in submission order a failed
        # dependency is always seen before the dependents that it stopped.
        for ref in sorted(ready, key=lambda r: task_of[r][0]):
            task = task_of[ref][1]
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError as error:
                tracker.failed(task, *failure_message(error))
                continue
            tracker.done(task, info["seconds"], info["node"])
        if waiting:
            tracker.progress()
    tracker.close()
