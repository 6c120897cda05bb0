"""`store gc` removes only what is the store's and what no run uses: never a user's folder, never
the entries of a run that was moved or copied together with its store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, tree_bytes, write_config


def gc(target: Path, *flags: str, answer: str | None = None) -> subprocess.CompletedProcess:
    """`datadream store gc` as a user runs it; `answer` is typed at its question (None: no
    terminal, standard input closed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "datadream", "store", "gc", str(target), *flags]
    if answer is None:
        return subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    # A terminal for the question: `script` gives the command a pseudo-terminal as its stdin.
    return subprocess.run(["script", "-qec", " ".join(map(repr, command)), "/dev/null"], input=answer + "\n",
                          capture_output=True, text=True, env=env, timeout=120)


def test_gc_refuses_a_folder_that_is_not_a_store(tmp_path):
    """The layout alone (synthetic/, adapters/, previews/ with folders in them) is a user's data."""
    mydata = tmp_path / "mydata"
    for name in ("synthetic/cats/0001.png", "adapters/mine/weights.safetensors", "previews/x/a.png",
                 "synthetic/0123456789abcdef/00000.png"):
        (mydata / name).parent.mkdir(parents=True, exist_ok=True)
        (mydata / name).write_bytes(b"precious")
    before = tree_bytes(mydata)
    for flags in ((), ("--yes",), ("--dry-run",)):
        result = gc(mydata, *flags)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "is not a datadream store" in result.stderr
    assert tree_bytes(mydata) == before


def test_gc_touches_only_entries_the_store_wrote(tmp_path):
    from datadream.layout import StoreLayout
    from datadream.status import referenced
    from datadream.store import collect_garbage, register_run

    store = StoreLayout(tmp_path / "store")
    register_run(store, tmp_path / "gone-run")  # a run that no longer exists: it needs nothing
    ours = store.synthetic / "0123456789abcdef"
    ours.mkdir(parents=True)
    for name in ("00000.png", ".shard-00000.json", ".datadream.json", ".tmp-00001.png-abc"):
        (ours / name).write_bytes(b"x")
    strangers = [store.synthetic / "cats", store.adapters / "fedcba9876543210", store.previews / "0123456789abcdeg",
                 store.synthetic / "00112233445566ff"]
    (strangers[0]).mkdir(parents=True)
    (strangers[0] / "0001.png").write_bytes(b"mine")
    strangers[1].mkdir(parents=True)
    (strangers[1] / "notes.txt").write_bytes(b"mine")  # a fingerprint's name, but a file we never write
    strangers[2].mkdir(parents=True)  # not a fingerprint (g)
    strangers[3].symlink_to(strangers[0], target_is_directory=True)  # a link: not ours to follow
    garbage = collect_garbage(store, referenced, remove=True)
    assert garbage.removable == [ours] and not ours.exists()
    assert sorted(garbage.foreign) == sorted(strangers) and all(p.exists() for p in strangers)
    assert (strangers[0] / "0001.png").read_bytes() == b"mine"


def test_gc_bin_of_a_killed_gc_is_emptied_by_the_next(tmp_path):
    from datadream.layout import StoreLayout
    from datadream.status import referenced
    from datadream.store import collect_garbage, register_run

    store = StoreLayout(tmp_path / "store")
    register_run(store, tmp_path / "run")
    leftover = store.adapters / ".tmp-gc-k1ll3d00" / "0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / "unit.json").write_text("{}")
    collect_garbage(store, referenced, remove=False)
    assert leftover.exists()  # a dry run removes nothing
    collect_garbage(store, referenced, remove=True)
    assert not leftover.parent.exists()


@pytest.fixture()
def finished_run(tmp_path, tiny_models, toy_data) -> Path:
    """A class-wise run (4 adapters, 4 synthetic classes, 2 images each) beside its store."""
    from datadream.config import load_config
    from datadream.pipeline import run_all

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", synthesize={"images_per_class": 2}, classifier={"train_on": "synthetic"}))
    return run_all(load_config(config), tmp_path / "runs" / "pets").run


def _store_entries(store: Path) -> set[str]:
    return {p.relative_to(store).as_posix() for kind in ("adapters", "synthetic", "previews")
            for p in (store / kind).iterdir()}


@pytest.mark.slow
def test_moved_and_copied_runs_keep_their_store_entries(tmp_path, finished_run):
    runs = finished_run.parent
    entries = _store_entries(runs / "datadream-store")
    assert len(entries) == 12  # 4 adapters, 4 classes, 4 previews
    moved = tmp_path / "moved"
    shutil.move(runs, moved)
    copied = tmp_path / "copied"
    subprocess.run(["cp", "-a", str(moved), str(copied)], check=True)
    for root in (moved, copied):
        for target in (root / "datadream-store", root / "pets"):
            result = gc(target, "--yes")
            assert result.returncode == 0, result.stderr
            assert "removed 0 unreferenced entries" in result.stdout and "runs using it: 1" in result.stdout
        assert _store_entries(root / "datadream-store") == entries
    # The copy is a run of its own: nothing needs redoing, and its views show its own store.
    status = subprocess.run([sys.executable, "-m", "datadream", "status", str(copied / "pets")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert f"store:  {copied / 'datadream-store'}" in status.stdout
    assert all(row.split()[1] == row.split()[2] for row in status.stdout.splitlines()
               if row.startswith(("adapt", "synthesize")))
    # Deleting the original leaves the copy's store whole, and frees the original's.
    shutil.rmtree(moved / "pets")
    assert gc(copied / "datadream-store", "--yes").stdout.count("removed 0 unreferenced") == 1
    result = gc(moved / "datadream-store", "--yes")
    assert "removed 12 unreferenced entries" in result.stdout and "forgotten" in result.stdout
    assert _store_entries(copied / "datadream-store") == entries


@pytest.mark.slow
def test_gc_asks_before_it_removes(tmp_path, finished_run):
    store = finished_run.parent / "datadream-store"
    shutil.rmtree(finished_run)
    entries = _store_entries(store)
    no_terminal = gc(store)
    assert no_terminal.returncode == 2 and "--yes" in no_terminal.stderr and no_terminal.stderr.count("\n") == 1
    if shutil.which("script") is None:
        pytest.skip("util-linux `script` (a pseudo-terminal for the question) is not installed")
    declined = gc(store, answer="n")
    assert "would remove: adapters/" in declined.stdout and "remove these 12 entries" in declined.stdout
    assert "nothing removed" in declined.stdout and _store_entries(store) == entries
    accepted = gc(store, answer="y")
    assert accepted.returncode == 0 and "removed 12 unreferenced entries" in accepted.stdout
    assert _store_entries(store) == set()


def test_gc_that_cannot_tell_what_a_run_needs_removes_nothing(tmp_path):
    """A damaged record, or a registered run whose files cannot be read: its entries might be in use."""
    from datadream.layout import StoreLayout

    store = StoreLayout(tmp_path / "store")
    from datadream.store import register_run

    register_run(store, tmp_path / "run")
    entry = store.adapters / "0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "unit.json").write_text("{}")
    record = next(store.runs.glob("*.json"))
    record.write_text("{not json")
    result = gc(store.root, "--yes")
    assert result.returncode == 2 and "is damaged, so which run it names is unknown" in result.stderr
    register_run(store, tmp_path / "run")  # mended by the run's next stage
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("adapt: [unreadable")
    result = gc(store.root, "--yes")
    assert result.returncode == 2 and "a run that uses this store, cannot be read" in result.stderr
    assert result.stderr.count("\n") == 1 and entry.is_dir()
