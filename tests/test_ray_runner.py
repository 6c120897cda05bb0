"""The Ray runner against fake units that write files: dependencies, keys shared across runs,
retries after a crash or an error, UserError not retried, reruns that submit nothing done.

One local Ray cluster serves the module (starting one takes seconds). It has 2 CPUs and 2
*logical* GPUs, so GPU requests are scheduled and checked on a machine without any. Tests that
need no cluster (GPU sizing, ordering, ray missing) run without ray installed.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import datadream
from datadream.errors import UserError
from datadream.runners.graph import GraphResult, collect_tasks
from datadream.runners.ray_runner import check_reachable, gpu_request, run_ray

GB = 10**9
GPU_BYTES = 80 * GB


@dataclass(frozen=True)
class FakeUnit:
    run: Path
    stage: str
    id: str
    key: str
    deps: tuple[str, ...] = ()
    gpu_memory: float = 0.0
    needs: tuple[str, ...] = ()  # the dependencies' keys, for the check that they are done
    behaviour: str = ""  # "crash-once" | "fail-once" | "user-error"


def _name(key: str) -> str:
    return key.replace("/", "_")


def store_of(unit: FakeUnit) -> Path:
    return unit.run.parent / "store"


def fake_state(unit: FakeUnit) -> str:
    return "complete" if (store_of(unit) / "done" / _name(unit.key)).exists() else "pending"


def _first_time(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def fake_execute(unit: FakeUnit) -> None:
    """Idempotent like the real execute; records each attempt and each piece of work done."""
    import ray

    store, name = store_of(unit), _name(unit.key)
    if fake_state(unit) == "complete":
        return
    attempt = store / "attempts" / f"{name}.{os.getpid()}.{len(os.listdir(store / 'attempts'))}"
    attempt.touch()
    for dep in unit.needs:
        if not (store / "done" / _name(dep)).exists():
            raise RuntimeError(f"{unit.id} started before {dep} was done")
    if unit.behaviour == "crash-once" and _first_time(store / "markers" / name):
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-unit, as on a lost node
    if unit.behaviour == "fail-once" and _first_time(store / "markers" / name):
        raise OSError("flaky disk")
    if unit.behaviour == "user-error":
        raise UserError(f"class 'dog' has 2 images but shots is 3; lower data.shots in {unit.run}")
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    # O_EXCL: doing a unit's work a second time would fail here, not pass unnoticed.
    fd = os.open(store / "work" / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, f"{gpus}".encode())
    os.close(fd)
    (store / "done" / name).touch()


def make_runs(root: Path, names=("a", "b"), behaviour: dict[str, str] | None = None) -> dict[Path, list[FakeUnit]]:
    """Per run: adapt (key shared by every run) -> two synthesize shards -> index (CPU) -> train
    -> evaluate. GPU memory of 10, 30, 0, 100 (more than a GPU), 20 GB."""
    behaviour = behaviour or {}
    for sub in ("done", "work", "attempts", "markers"):
        (root / "store" / sub).mkdir(parents=True, exist_ok=True)
    plans = {}
    for name in names:
        run = root / name
        run.mkdir(exist_ok=True)
        spec = [("adapt", "adapt/all", "adapt-shared", (), 10 * GB),
                ("synthesize", "synthesize/0", f"{name}-synth-0", ("adapt/all",), 30 * GB),
                ("synthesize", "synthesize/1", f"{name}-synth-1", ("adapt/all",), 30 * GB),
                ("index", "index", f"{name}-index", ("synthesize/0", "synthesize/1"), 0),
                ("train", "train", f"{name}-train", ("index",), 100 * GB),
                ("evaluate", "evaluate", f"{name}-evaluate", ("train",), 20 * GB)]
        key_of = {uid: key for _, uid, key, _, _ in spec}
        plans[run] = [FakeUnit(run, stage, uid, key, deps, memory, tuple(key_of[d] for d in deps),
                               behaviour.get(key, ""))
                      for stage, uid, key, deps, memory in spec]
    return plans


def run_fake(plans: dict[Path, list[FakeUnit]], lines: list[str] | None = None, **options) -> GraphResult:
    options.setdefault("gpu_memory_bytes", GPU_BYTES)
    return run_ray(list(plans), log=(lines.append if lines is not None else None), plan=plans.__getitem__,
                   execute=fake_execute, state=fake_state, **options)


def work_done(root: Path) -> dict[str, float]:
    return {path.name: float(path.read_text()) for path in (root / "store" / "work").iterdir()}


def attempts(root: Path, key: str) -> int:
    return sum(1 for path in (root / "store" / "attempts").iterdir() if path.name.startswith(_name(key) + "."))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    # The workers get this module's fakes by value (they cannot import a test module), and
    # datadream by reference, from where this process found it.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = str(Path(datadream.__file__).resolve().parents[1])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, saved]))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def test_dag_across_runs_runs_each_key_once_in_dependency_order(ray_cluster, tmp_path):
    plans = make_runs(tmp_path)
    lines: list[str] = []
    result = run_fake(plans, lines)

    assert result.ok and result.submitted == result.done == 11  # 2 runs x 6 units, adapt shared
    keys = {unit.key for units in plans.values() for unit in units}
    assert set(work_done(tmp_path)) == {_name(key) for key in keys}  # each once (O_EXCL)
    assert all(attempts(tmp_path, key) == 1 for key in keys)
    # GPU requests: eighths of the 80 GB GPU, a whole one at most, none for the CPU unit.
    gpus = work_done(tmp_path)
    assert (gpus["adapt-shared"], gpus["a-synth-0"], gpus["a-index"], gpus["a-train"],
            gpus["b-evaluate"]) == (0.125, 0.375, 0.0, 1.0, 0.25)
    done = [line for line in lines if " done in " in line]
    assert len(done) == 11 and done[-1].startswith("ray: [11/11] ")
    assert any("synthesize/1 (run b) done in" in line and "on node" in line for line in done)
    assert "1 shared between runs" in lines[0]


def test_killed_worker_and_ordinary_error_are_retried_without_duplicate_work(ray_cluster, tmp_path):
    plans = make_runs(tmp_path, names=("a",), behaviour={"a-synth-0": "crash-once", "a-train": "fail-once"})
    result = run_fake(plans, max_retries=2)

    assert result.ok and result.done == 6
    assert len(work_done(tmp_path)) == 6  # every unit's work done exactly once
    assert attempts(tmp_path, "a-synth-0") == 2 and attempts(tmp_path, "a-train") == 2


def test_user_error_is_not_retried_and_reported_in_one_line(ray_cluster, tmp_path):
    plans = make_runs(tmp_path, behaviour={"a-synth-1": "user-error"})
    lines: list[str] = []
    result = run_fake(plans, lines, max_retries=2)

    assert attempts(tmp_path, "a-synth-1") == 1
    [failure] = result.failures
    assert failure.user_error and failure.unit == "synthesize/1" and failure.run == tmp_path / "a"
    expected = (f"FAILED synthesize/1 in run {tmp_path / 'a'}: class 'dog' has 2 images but shots is 3;"
                f" lower data.shots in {tmp_path / 'a'}")
    [line] = [line for line in lines if "FAILED" in line]
    assert line.endswith(expected) and "\n" not in line
    # a's index, train and evaluate wait on the failed shard; everything of b still runs.
    assert result.not_run == 3 and result.done == 7 and not result.ok
    assert "a-index" not in work_done(tmp_path) and "b-evaluate" in work_done(tmp_path)
    assert any("3 unit(s) not run because a unit they depend on failed" in line for line in lines)


def test_rerun_submits_only_what_is_not_complete(ray_cluster, tmp_path):
    plans = make_runs(tmp_path)
    assert run_fake(plans).ok
    lines: list[str] = []
    again = run_fake(plans, lines)
    assert again.submitted == 0 and again.already_complete == 12
    assert not any(" done in " in line for line in lines)

    for name in ("b-train", "b-evaluate"):  # as if the driver was killed before these ran
        (tmp_path / "store" / "done" / name).unlink()
        (tmp_path / "store" / "work" / name).unlink()
    lines.clear()
    resumed = run_fake(plans, lines)
    assert resumed.ok and resumed.submitted == resumed.done == 2 and resumed.already_complete == 10
    assert [line.split()[2] for line in lines if " done in " in line] == ["train", "evaluate"]


def test_gpu_memory_unknown_requests_whole_gpus(ray_cluster, tmp_path):
    """Without gpu_memory_bytes the runner probes the GPU nodes; these GPUs are logical (no
    CUDA), so the size is unknown and every GPU unit gets a whole GPU."""
    plans = make_runs(tmp_path, names=("a",))
    lines: list[str] = []
    assert run_fake(plans, lines, gpu_memory_bytes=None).ok
    assert set(work_done(tmp_path).values()) == {0.0, 1.0}
    assert any("unknown memory" in line for line in lines)


def test_gpu_request_sizes():
    assert gpu_request(10 * GB, GPU_BYTES, cluster_gpus=2) == 0.125
    assert gpu_request(1, GPU_BYTES, cluster_gpus=2) == 0.125  # never less than an eighth
    assert gpu_request(20 * GB, GPU_BYTES, cluster_gpus=2) == 0.25  # exact eighths stay
    assert gpu_request(21 * GB, GPU_BYTES, cluster_gpus=2) == 0.375
    assert gpu_request(200 * GB, GPU_BYTES, cluster_gpus=2) == 1.0
    assert gpu_request(10 * GB, None, cluster_gpus=2) == 1.0
    assert gpu_request(10 * GB, GPU_BYTES, cluster_gpus=0) == 0.0  # CPU cluster
    assert gpu_request(0, GPU_BYTES, cluster_gpus=2) == 0.0  # CPU unit


def test_task_threads_default_to_the_drivers_cores_within_the_smallest_node(monkeypatch):
    from datadream import threads
    from datadream.errors import UserError
    from datadream.runners.ray_runner import task_threads

    monkeypatch.setattr(threads, "local_default", lambda: 8)
    assert task_threads(0, [16.0, 4.0]) == 4  # every node can run it
    assert task_threads(0, [32.0]) == 8  # what a local run on the driver would use
    assert task_threads(0, []) == 8
    assert task_threads(6, [4.0, 8.0]) == 6
    with pytest.raises(UserError, match="runtime.threads=12, but the largest node of the Ray cluster has 8 CPUs"):
        task_threads(12, [4.0, 8.0])


def test_tasks_follow_dependencies_and_merge_shared_keys(tmp_path):
    plans = make_runs(tmp_path)
    # Run b lists its units backwards: the order must still put dependencies first.
    plans[tmp_path / "b"] = plans[tmp_path / "b"][::-1]
    tasks, complete = collect_tasks(list(plans), plans.__getitem__, fake_state)
    order = [task.key for task in tasks]
    assert complete == 0 and len(order) == len(set(order)) == 11
    for task in tasks:
        assert all(order.index(dep) < order.index(task.key) for dep in task.deps)
    [adapt] = [task for task in tasks if task.key == "adapt-shared"]
    assert [unit.run.name for unit in adapt.units] == ["a", "b"]


def test_missing_ray_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'datadream\[ray\]'"):
        run_ray([tmp_path], plan=lambda run: [], execute=fake_execute, state=fake_state)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_cluster_address_is_one_line_within_seconds(tmp_path, tiny_models, toy_data):
    import time

    from conftest import run_cli, tiny_config, write_config
    from test_errors import assert_one_line_error

    pytest.importorskip("ray")
    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train"))
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli("-q", "run", config, tmp_path / "run", "--runner", "ray", "--ray-address", address, timeout=120)
    assert_one_line_error(result, f"runtime.ray_address={address}: cannot reach a Ray cluster", "ray start --head")
    assert result.stderr.count("\n") == 1, result.stderr  # none of Ray's own warnings
    assert time.monotonic() - started < 60


def test_cluster_address_forms(monkeypatch):
    import socket

    port = free_port()
    for address in (f"ray://127.0.0.1:{port}", f"ray://[::1]:{port}"):
        with pytest.raises(UserError, match=r"cannot reach a Ray cluster at (127\.0\.0\.1|\[::1\]):\d+"):
            check_reachable(address)
    for address in ("head-node", "head:port", "ray://:1"):
        with pytest.raises(UserError, match="expected HOST:PORT of the head node"):
            check_reachable(address)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"RAY_ADDRESS=127.0.0.1:{port}: .* or unset RAY_ADDRESS"):
        check_reachable("")

    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(UserError, match=r"\(no answer within 0\.5 s\)"):
        check_reachable("10.0.0.5:6379", timeout=0.5)
    check_reachable("auto")  # found by Ray itself, from the session file


# --- the real units -----------------------------------------------------------------------------

def _run_files(run: Path) -> dict[str, bytes]:
    """A run's outputs as readers see them through its links into the store (logs, locks and the
    report, which hold timings, left out)."""
    files = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not rel.startswith(("logs/", ".locks/", "report/")):
            files[rel] = path.read_bytes()
    return files


@pytest.mark.slow
def test_ray_run_makes_the_same_files_as_the_local_runner(ray_cluster, tmp_path, tiny_models, toy_data):
    import subprocess

    from conftest import tiny_config, write_config
    from datadream.config import load_config
    from datadream.runs import init_run

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        synthesize={"images_per_class": 4, "shard_size": 2}))
    ray_run = init_run(load_config(config), tmp_path / "ray" / "run").layout.root
    result = run_ray([ray_run])
    assert result.ok and result.done == 1 + 8 + 4  # an adapter group, 8 shards; index, inspect, train, evaluate
    assert run_ray([ray_run]).submitted == 0  # a rerun finds everything done
    # Default settings on both sides: every unit sets the same torch thread count whoever runs it
    # (datadream.threads), although Ray starts its workers with OMP_NUM_THREADS=1.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    local = subprocess.run([sys.executable, "-m", "datadream", "run", str(config), str(tmp_path / "local" / "run")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert local.returncode == 0, local.stderr
    assert _run_files(ray_run) == _run_files(tmp_path / "local" / "run")


@pytest.mark.slow
def test_benchmark_cells_share_generator_units_on_ray(ray_cluster, tmp_path, tiny_models, toy_data):
    """The two settings of a generator method need the same adapters and images: one task each."""
    import yaml

    from conftest import tiny_config
    from datadream.benchmark import run_benchmark

    base = tiny_config(tiny_models, toy_data / "train")
    base.pop("data")
    base["runtime"]["runner"] = "ray"
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({
        "datasets": {"toy": {"train": str(toy_data / "train"), "test": str(toy_data / "test"), "shots": 3}},
        "methods": ["datadream-class"], "settings": ["synthetic", "synthetic+real"], "seeds": [0], "base": base}))
    results = run_benchmark(bench, tmp_path / "out")
    assert "datadream-class / synthetic+real" in results.read_text()
    cells = [tmp_path / "out" / "toy" / "seed0" / name for name in ("datadream-class--synthetic",
                                                                    "datadream-class--synthetic-real")]
    for name in ("adapters/000-circle/pytorch_lora_weights.safetensors", "synthetic/002-stripes/00000.png"):
        assert os.path.samefile(cells[0] / name, cells[1] / name)
    assert len(list((tmp_path / "out" / "datadream-store" / "adapters").iterdir())) == 4
