"""Units, locks, the shared store, status and gc: many workers and runs on one set of files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, start_cli, tiny_config, tree_bytes, write_config
from datadream import locks
from datadream.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "datadream"


# --- torch-free planning ------------------------------------------------------------------------

def test_planning_and_runner_modules_do_not_import_torch():
    code = ("import sys; import datadream.units, datadream.artifacts, datadream.store, datadream.locks,"
            " datadream.status, datadream.plan, datadream.runners.execute, datadream.runners.local,"
            " datadream.runners.ray_runner, datadream.cli, datadream.pipeline;"
            " print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- locks --------------------------------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_of_a_dead_owner_is_taken_over(tmp_path, caplog):
    path = tmp_path / "unit.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "1", "since": 1.0}))
    held = locks.try_lock(path)
    try:
        assert locks.read_owner(path).pid == os.getpid()
        assert "no longer running" in caplog.text
    finally:
        held.release()
    assert locks.is_locked(path) is False


def test_lock_held_by_a_live_process_names_it(tmp_path):
    path = tmp_path / "unit.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from datadream import locks; from pathlib import Path;"
        " held = locks.try_lock(Path(%r)); print('held', flush=True); time.sleep(60)") % (str(SRC.parent), str(path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.Busy) as busy:
            locks.try_lock(path)
        assert busy.value.owner.pid == holder.pid
        owner = locks.is_locked(path)
        assert owner and owner.pid == holder.pid
        with pytest.raises(UserError, match=rf"{socket.gethostname()} pid {holder.pid} since"):
            with locks.unit_lock(path, "adapter x", wait=False):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: the next process takes over.
    locks.try_lock(path).release()


def test_lock_naming_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
    """Where a file system does not share kernel locks between machines, the owner record guards."""
    path = tmp_path / "unit.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "started": None, "since": time.time()}))
    with pytest.raises(locks.Busy, match="other-node pid 1"):
        locks.try_lock(path)
    stale = time.time() - locks.STALE_AFTER_SECONDS - 5
    os.utime(path, (stale, stale))
    locks.try_lock(path).release()



def test_a_busy_unit_is_left_for_later_or_refused(tmp_path):
    """A stage working through many units does the others first (runtime.wait_for_locks), or stops."""
    path = tmp_path / "unit.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "started": None, "since": time.time()}))
    assert locks.claim(path, "adapter x", wait=False, defer=True) is None
    with pytest.raises(UserError, match="^adapter x is being worked on by other-node pid 1"):
        locks.claim(path, "adapter x", wait=False)

# --- the store ----------------------------------------------------------------------------------

def test_run_views_of_store_entries(tmp_path, monkeypatch):
    import errno

    from datadream.store import VIEW_MARKER, link

    entry = tmp_path / "store" / "synthetic" / "abc"
    entry.mkdir(parents=True)
    (entry / "00000.png").write_bytes(b"one")
    view = tmp_path / "run" / "synthetic" / "000-cat"
    link(view, entry)
    assert os.path.samefile(view / "00000.png", entry / "00000.png") and (view / VIEW_MARKER).is_file()
    # The store replaces an image (generated again): the view follows.
    (entry / "00000.png").unlink()
    (entry / "00000.png").write_bytes(b"two")
    link(view, entry)
    assert (view / "00000.png").read_bytes() == b"two"
    # Where hard links are refused, a symbolic link to the entry.
    other = tmp_path / "run" / "synthetic" / "001-dog"

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EPERM, "hard links not allowed here")

    monkeypatch.setattr(os, "link", refuse)
    link(other, entry)
    assert other.is_symlink() and (other / "00000.png").read_bytes() == b"two"
    # A folder datadream did not make is never replaced.
    mine = tmp_path / "run" / "synthetic" / "002-fox"
    mine.mkdir()
    (mine / "precious.png").write_bytes(b"mine")
    with pytest.raises(UserError, match="did not make"):
        link(mine, entry)
    assert (mine / "precious.png").read_bytes() == b"mine"


@pytest.fixture()
def config_file(tmp_path, tiny_models, toy_data):
    return write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train",
                                                           data={"test": str(toy_data / "test")}))


def _rows(run: Path, stage: str) -> list[dict]:
    timings = run / "logs" / "timings.jsonl"
    rows = [json.loads(line) for line in timings.read_text().splitlines()] if timings.is_file() else []
    return [r for r in rows if r["stage"] == stage]


def test_second_run_with_another_classifier_setting_does_no_generator_work(tmp_path, config_file):
    from datadream.config import load_config
    from datadream.pipeline import run_all

    first = run_all(load_config(config_file), tmp_path / "runs" / "a")
    store = tmp_path / "runs" / "datadream-store"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and "locks" not in p.parts}
    second = run_all(load_config(config_file, ["classifier.lr=0.01"]), tmp_path / "runs" / "b")
    assert not _rows(second.run, "adapt") and not _rows(second.run, "synthesize")
    assert _rows(first.run, "adapt") and _rows(first.run, "synthesize")
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and "locks" not in p.parts
             and "runs" not in p.relative_to(store).parts}
    assert all(before[p] == t for p, t in after.items()), "the store's adapters and images were rewritten"
    for name in ("adapters/000-circle/pytorch_lora_weights.safetensors", "synthetic/003-triangle/00002.png"):
        assert os.path.samefile(second.run / name, first.run / name)  # both show the store's file
    assert second.metrics is not None and (second.run / "synthetic" / "index.jsonl").read_bytes() == \
        (first.run / "synthetic" / "index.jsonl").read_bytes()


def test_train_needs_no_adapters(tmp_path, config_file):
    from datadream.config import load_config
    from datadream.pipeline import run_all
    from datadream.runs import init_run
    from datadream.stages.synthesize import synthesize
    from datadream.stages.train import train

    first = run_all(load_config(config_file), tmp_path / "a")
    shutil.rmtree(tmp_path / "datadream-store" / "adapters")
    shutil.rmtree(first.run / "adapters")
    second = init_run(load_config(config_file, ["classifier.epochs=1"]), tmp_path / "b").layout.root
    synthesize(second)  # every shard is done: only the index is written
    train(second)
    assert (second / "classifier" / "train.json").is_file() and not (second / "adapters").exists()


def test_status_counts_units_per_stage(tmp_path, config_file):
    result = run_cli("init", config_file, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    pending = run_cli("status", tmp_path / "run")
    assert pending.returncode == 0, pending.stderr
    lines = {line.split()[0]: line.split()[1:] for line in pending.stdout.splitlines() if line[:1].isalpha()}
    assert lines["adapt"] == ["1", "0", "0", "1"]  # 4 class adapters, one batched group
    assert lines["synthesize"] == ["4", "0", "0", "4"]  # 4 classes x 1 shard of 3 images
    assert lines["train"] == ["1", "0", "0", "1"] and lines["evaluate"] == ["1", "0", "0", "1"]
    done = run_cli("run", config_file, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    complete = run_cli("status", tmp_path / "run").stdout
    assert "complete\n" in complete and "pending" in complete.splitlines()[3]
    rows = [line.split() for line in complete.splitlines() if line.startswith(("adapt", "synthesize", "index"))]
    assert all(row[1] == row[2] for row in rows)


def test_store_gc_removes_only_what_no_run_uses(tmp_path, config_file):
    from datadream.config import load_config
    from datadream.pipeline import run_all
    from datadream.status import gc_text

    kept = run_all(load_config(config_file), tmp_path / "kept").run
    gone = run_all(load_config(config_file, ["synthesize.guidance=1.0"]), tmp_path / "gone").run
    store = tmp_path / "datadream-store"
    images_of_gone = {p.resolve() for p in (gone / "synthetic").iterdir() if p.is_symlink()}
    shutil.rmtree(gone)
    previews_of_gone = [store / "previews" / p.name for p in images_of_gone]
    assert all(p.is_dir() for p in previews_of_gone)
    listing = gc_text(store, dry_run=True)
    # 4 synthetic classes and their 4 previews; the adapters are shared with the kept run.
    assert "would remove 8 unreferenced entries" in listing and all(p.exists() for p in images_of_gone)
    assert "would remove" in gc_text(kept, dry_run=True)  # a run folder names its store
    gc_text(store, dry_run=False)
    assert not any(p.exists() for p in images_of_gone) and not any(p.exists() for p in previews_of_gone)
    assert len(list((store / "synthetic").iterdir())) == 4 and len(list((store / "adapters").iterdir())) == 4
    assert {p.name for p in (store / "previews").iterdir()} == {p.name for p in (store / "synthetic").iterdir()}
    for link in (kept / "adapters").iterdir():
        assert link.resolve().is_dir()
    assert "removed 0 unreferenced" in gc_text(store, dry_run=False)
    # A preview being written (its class's first shard locked) is left alone, like its class.
    orphan = store / "previews" / "0123456789abcdef"
    orphan.mkdir()
    with locks.unit_lock(store / "locks" / "synthetic-0123456789abcdef-0.lock", "a shard", True):
        assert "0 unreferenced" in gc_text(store, dry_run=False) and orphan.is_dir()
    assert "removed 1 unreferenced" in gc_text(store, dry_run=False) and not orphan.exists()


# --- many processes on one run ------------------------------------------------------------------

def _start_run(config: Path, run: Path, *extra: str):
    return start_cli("run", config, run, *extra)


@pytest.mark.slow
def test_two_drivers_on_one_run_share_the_work_and_agree(tmp_path, tiny_models, toy_data):
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        adapt={"engine": "sequential"}, synthesize={"images_per_class": 4, "shard_size": 2}))
    assert run_cli("init", config, tmp_path / "run").returncode == 0
    drivers = [_start_run(config, tmp_path / "run") for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    assert all(d.returncode == 0 for d in drivers), [o[1][-2000:] for o in outputs]
    # Every adapter and shard was made exactly once, by one driver or the other.
    adapt_rows = _rows(tmp_path / "run", "adapt")
    assert sorted(r["unit"] for r in adapt_rows) == ["000-circle", "001-square", "002-stripes", "003-triangle"]
    assert sum(r["shards"] for r in _rows(tmp_path / "run", "synthesize")) == 8
    reference = tmp_path / "alone" / "run"  # its own store, beside it
    assert run_cli("run", config, reference).returncode == 0
    assert _resolved_bytes(tmp_path / "run") == _resolved_bytes(reference)


def _resolved_bytes(run: Path) -> dict[str, bytes]:
    """The run's outputs as a reader sees them through its links (logs, locks and report left out)."""
    files = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not rel.startswith(("logs/", ".locks/", "report/")):
            files[rel] = path.read_bytes()
    for link in [*(run / "adapters").iterdir(), *(run / "synthetic").iterdir()]:
        if link.is_symlink():
            files.update({f"{link.relative_to(run).as_posix()}/{k}": v for k, v in tree_bytes(link.resolve()).items()})
    return files


@pytest.mark.slow
def test_killed_driver_rerun_completes_with_the_same_files(tmp_path, tiny_models, toy_data):
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        synthesize={"images_per_class": 6, "shard_size": 2}))
    run = tmp_path / "run"
    driver = _start_run(config, run)
    store = tmp_path / "datadream-store" / "synthetic"
    deadline = time.monotonic() + 300
    while not list(store.glob("*/.shard-*.json")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert list(store.glob("*/.shard-*.json")), "the driver should have been killed during synthesis"
    assert not (run / "classifier" / "train.json").exists()
    again = run_cli("run", config, run)
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "alone" / "run"  # its own store, beside it
    assert run_cli("run", config, reference).returncode == 0
    assert _resolved_bytes(run) == _resolved_bytes(reference)


def test_looking_compares_sizes_and_using_compares_hashes(tmp_path):
    """status, plans and the run's views check sizes only (cheap for 1,000 adapters); a stage that
    uses the files checks their hashes."""
    from datadream.markers import damaged_file, record_files

    (tmp_path / "w.safetensors").write_bytes(b"abcd")
    records = record_files(tmp_path, ["w.safetensors"])
    (tmp_path / "w.safetensors").write_bytes(b"abce")  # same size, other content
    assert damaged_file(tmp_path, records, hashes=False) is None
    assert damaged_file(tmp_path, records) == str(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"abc")
    assert damaged_file(tmp_path, records, hashes=False) == str(tmp_path / "w.safetensors")


# --- threads ------------------------------------------------------------------------------------

def test_unit_thread_count_is_the_setting_then_the_runners_then_the_environment(monkeypatch):
    torch = pytest.importorskip("torch")
    from datadream import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert threads.use_threads(0) == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # Ray's workers have 1 here, torchrun's ranks too
        assert threads.resolve(0) == 2
        threads.given(1)  # a runner reserved one core for the unit
        assert threads.resolve(0) == 1 and threads.resolve(5) == 5
    finally:
        threads.given(None)
        torch.set_num_threads(before)
