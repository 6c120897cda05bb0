"""Files inside a run are input too: tampered names, symlinked locks, edited indexes, damaged
state, and settings declared speed-only. Each case reproduces what an attacker, a careless user or a
power cut can do, through the real command."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, tiny_config, tree_bytes, write_config
from datadream.config import load_config, read_config_file
from datadream.layout import LORA_WEIGHTS
from datadream.pipeline import run_all
from datadream.stages.adapt import adapt
from datadream.runs import init_run
from test_errors import assert_one_line_error


@pytest.fixture()
def config_file(tmp_path, tiny_models, toy_data) -> Path:
    config = tiny_config(tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
                         classifier={"train_on": "synthetic"})
    return write_config(tmp_path / "exp.yaml", config)


def new_run(tmp_path: Path, config_file: Path, name: str = "run", *overrides: str) -> Path:
    run = tmp_path / "work" / name
    result = run_cli("init", config_file, run, *overrides)
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_models) -> Path:
    """One complete run (adapters, synthetic set, classifier), copied by the tests that damage it."""
    from datadream.data.toy import write_toy_dataset

    root = tmp_path_factory.mktemp("trained")
    data = write_toy_dataset(root / "data", {"train": 5, "val": 2, "test": 3}, size=40)
    config = tiny_config(tiny_models, data / "train", data={"test": str(data / "test")},
                         classifier={"train_on": "synthetic"})
    run_all(load_config(write_config(root / "exp.yaml", config)), root / "run")
    return root / "run"


def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    """The run and its store (beside it), with the run's views made anew as hard links into the
    copied store: damaging a file of the run damages the store's, as it would for a user."""
    from datadream.stages.synthesize import write_index

    run = tmp_path / "copy"
    shutil.copytree(trained_run.parent / "datadream-store", tmp_path / "datadream-store")
    shutil.copytree(trained_run, run)
    for folder in (run / "adapters", run / "synthetic"):
        for view in folder.iterdir():
            if view.is_dir():
                shutil.rmtree(view)
    write_index(run)
    return run


# 1. Names read back from run files -------------------------------------------------------------

def tamper_slug(run: Path, slug: str) -> None:
    manifest = json.loads((run / "fewshot.json").read_text())
    manifest["classes"][0]["slug"] = slug
    (run / "fewshot.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("stage", ["adapt", "synthesize", "report"])
def test_tampered_slug_never_reaches_the_file_system(tmp_path, config_file, stage):
    run = new_run(tmp_path, config_file)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    tamper_slug(run, "../../victim")
    assert_one_line_error(run_cli(stage, run), "fewshot.json: classes[0].slug", "not a single safe folder name")
    assert tree_bytes(victim) == {"keep.txt": b"mine"}
    assert not (run / "adapters").exists() and not (run / "synthetic").exists()


@pytest.mark.parametrize("slug", ["/etc", "a/b", "..", ".hidden", "", "x" * 200, 3])
def test_every_unsafe_slug_is_refused(tmp_path, config_file, slug):
    from datadream.errors import UserError
    from datadream.runs import open_run

    run = init_run(load_config(config_file), tmp_path / "run").layout.root
    tamper_slug(run, slug)
    with pytest.raises(UserError, match=r"fewshot.json: classes\[0\]\.slug"):
        open_run(run)


# 2. Locks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, config_file, kind):
    run = new_run(tmp_path, config_file)
    target = tmp_path / "some_file"
    target.write_text("precious")
    lock = run / ".locks" / "evaluate.lock"
    lock.parent.mkdir()
    os.symlink(target, lock) if kind == "symlink" else os.link(target, lock)
    assert_one_line_error(run_cli("evaluate", run), "evaluate.lock", "remove it")
    assert target.read_text() == "precious"


def test_lock_folders_that_are_links_are_refused_and_their_targets_untouched(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("evaluate.lock", "index.lock"):
        (outside / name).write_text("precious")
    if (run / ".locks").exists():
        shutil.rmtree(run / ".locks")
    os.symlink(outside, run / ".locks", target_is_directory=True)
    assert_one_line_error(run_cli("evaluate", run), ".locks is a symbolic link", "remove the link")
    store_locks = tmp_path / "datadream-store" / "locks"
    shutil.rmtree(store_locks)
    os.symlink(outside, store_locks, target_is_directory=True)
    next((tmp_path / "datadream-store" / "synthetic").glob("*/00001.png")).unlink()  # work under a store lock
    (run / ".locks").unlink()
    assert_one_line_error(run_cli("synthesize", run), "locks is a symbolic link", "remove the link")
    assert {p.name: p.read_text() for p in outside.iterdir()} == {"evaluate.lock": "precious", "index.lock": "precious"}


@pytest.mark.parametrize("folder", ["report", "report/thumbs"])
def test_report_folder_that_is_a_link_is_not_written_through(tmp_path, trained_run, folder):
    run = copy_run(trained_run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "index.html").write_text("precious")
    if (run / folder).exists():
        shutil.rmtree(run / folder)
    (run / folder).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, run / folder, target_is_directory=True)
    assert_one_line_error(run_cli("report", run), f"{folder} is a symbolic link")
    assert [p.name for p in outside.iterdir()] == ["index.html"] and (outside / "index.html").read_text() == "precious"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_killed_commands_are_removed_by_the_next_that_owns_the_folder(tmp_path, trained_run):
    import socket

    run = copy_run(trained_run, tmp_path)
    host, dead = socket.gethostname(), _dead_pid()
    out = tmp_path / "exported"
    leftovers = [tmp_path / f".tmp-exported-{dead}@{host}-abcd1234", run / "report" / f".tmp-index.html-{dead}@{host}-x1y2",
                 run / "report" / "thumbs" / f".tmp-a.jpg-{dead}@{host}-zz9"]
    alive = [tmp_path / f".tmp-exported-{os.getpid()}@{host}-abcd1234",  # a live process's export in progress
             tmp_path / f".tmp-exported-{dead}@another-host-abcd1234",  # cannot be told from here
             tmp_path / ".tmp-exported-abcd1234"]  # an older datadream's: no owner named
    for path in leftovers + alive:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if path.name.startswith(".tmp-exported") else path.write_bytes(b"half")
    assert run_cli("export", run, out, "--what", "dataset").returncode == 0
    assert run_cli("report", run).returncode == 0
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in alive)


# 3. The synthetic set is what synthesize wrote -------------------------------------------------------

def test_edited_index_is_not_trained_on(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "classifier")
    index = run / "synthetic" / "index.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    test_image = next(Path(read_config_file(run / "config.yaml").data.test).rglob("*.png"))
    rows[0]["file"] = os.path.relpath(test_image, index.parent)
    index.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert_one_line_error(run_cli("train", run), "index.jsonl", "was changed since synthesize wrote it",
                          "datadream synthesize")
    assert not (run / "classifier").exists()
    assert run_cli("synthesize", run).returncode == 0, "synthesize rewrites the index"
    assert run_cli("train", run).returncode == 0


def test_swapped_synthetic_image_is_refused(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "classifier")
    image = sorted((run / "synthetic").glob("000-*/*.png"))[0]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: only the recorded hash can tell
    image.write_bytes(bytes(data))
    assert_one_line_error(run_cli("train", run), image.name, "differs from what synthesize recorded",
                          "datadream synthesize")


def test_test_image_equal_to_a_synthetic_image_is_refused(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "classifier")
    test_root = Path(read_config_file(run / "config.yaml").data.test)
    synthetic = sorted((run / "synthetic").glob("001-*/*.png"))[0]
    shutil.copyfile(synthetic, test_root / "square" / "copied.png")
    try:
        assert_one_line_error(run_cli("train", run), "has the same content as the synthetic image")
    finally:
        (test_root / "square" / "copied.png").unlink()


# 4. Damaged state ----------------------------------------------------------------------------------

def test_truncated_index_line_is_one_line_and_synthesize_mends_it(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    index = run / "synthetic" / "index.jsonl"
    text = index.read_text()
    index.write_text(text[: len(text) // 2])
    assert_one_line_error(run_cli("report", run), "index.jsonl line", "datadream synthesize")
    assert run_cli("synthesize", run).returncode == 0
    assert index.read_text() == text


def test_zero_byte_adapter_is_named_with_the_command_that_redoes_it(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    weights = next((run / "adapters").glob(f"*/{LORA_WEIGHTS}"))
    weights.write_bytes(b"")
    for stage in ("adapt", "synthesize"):
        line = assert_one_line_error(run_cli(stage, run), LORA_WEIGHTS, "damaged")
        assert f"datadream adapt {run.resolve()}" in line


def test_truncated_synthetic_image_is_generated_again(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    image = sorted((run / "synthetic").glob("002-*/*.png"))[1]
    original = image.read_bytes()
    image.write_bytes(original[:10])
    assert run_cli("synthesize", run).returncode == 0
    assert image.read_bytes() == original


def test_same_size_change_of_a_synthetic_image_is_found_and_generated_again(tmp_path, trained_run):
    """A byte flipped in place keeps the size: the image's time, later than its marker's, gives it
    away, and its hash confirms it."""
    run = copy_run(trained_run, tmp_path)
    image = sorted((run / "synthetic").glob("002-*/*.png"))[1]
    original = image.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    image.write_bytes(bytes(flipped))
    (run / "inspect.json").unlink(missing_ok=True)  # computed again: it reads every image
    line = assert_one_line_error(run_cli("inspect", run), image.name, "differs from what synthesize recorded",
                                 "datadream synthesize")
    assert "unreadable" not in line
    assert _pending_shards(run) == "1"
    assert run_cli("synthesize", run).returncode == 0
    assert image.read_bytes() == original
    os.utime(image)  # touched, not changed: its hash clears it
    assert _pending_shards(run) == "0"


def _pending_shards(run: Path) -> str:
    status = run_cli("status", run).stdout
    return next(row for row in status.splitlines() if row.startswith("synthesize")).split()[-1]


def test_classifier_without_its_weights_is_not_reported_as_trained(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path)
    (run / "classifier" / "lora" / "adapter_model.safetensors").unlink()
    for stage in ("train", "evaluate"):
        assert_one_line_error(run_cli(stage, run), "adapter_model.safetensors", "damaged or missing",
                              "datadream train")


@pytest.mark.parametrize("damage", ["state.json", "state.safetensors"])
def test_truncated_checkpoint_is_discarded_and_the_adapter_redone(tmp_path, tiny_models, toy_data, damage, caplog):
    sections = {"adapt": {"mode": "dataset", "epochs": 3, "checkpoint_every": 2}}
    from datadream.runs import open_run
    from datadream.units import adapter_specs

    config = write_config(tmp_path / "a.yaml", tiny_config(tiny_models, toy_data / "train", **sections))
    reference = init_run(load_config(config, [f"runtime.store={tmp_path / 'store-a'}"]), tmp_path / "a").layout.root
    adapt(reference)
    run = init_run(load_config(config, [f"runtime.store={tmp_path / 'store-b'}"]), tmp_path / "b").layout.root
    # A checkpoint as a power cut leaves it: the files exist, their content is cut short.
    fingerprint = adapter_specs(open_run(run))[0].fingerprint
    partial = tmp_path / "store-b" / "adapters" / f".partial-{fingerprint}"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text('{"fingerprint": "x", "meta": {"st')
    (partial / "state.safetensors").write_bytes(b"\x10\x00\x00")
    if damage == "state.safetensors":  # a valid meta file that points at broken tensors
        (partial / "state.json").write_text(json.dumps({"fingerprint": fingerprint, "param_groups": [],
                                                        "schedule": {}, "scaler": {}, "meta": {"step": 2}}))
    adapt(run)
    assert "is damaged" in caplog.text
    assert not partial.exists()
    assert (run / "adapters" / "dataset" / LORA_WEIGHTS).read_bytes() == (
        reference / "adapters" / "dataset" / LORA_WEIGHTS).read_bytes()


# 5. Settings declared speed-only change nothing ------------------------------------------------------

def test_loader_workers_and_eval_batch_do_not_change_the_classifier(tmp_path, tiny_models, toy_data):
    outputs = []
    for name, workers, eval_batch in (("w0", 0, 16), ("w2", 2, 3)):
        config = tiny_config(tiny_models, toy_data / "train", data={"val": str(toy_data / "val"),
                                                                     "test": str(toy_data / "test")},
                             classifier={"train_on": "real", "workers": workers, "eval_batch_size": eval_batch,
                                         "lr": 3e-3})
        summary = run_all(load_config(write_config(tmp_path / f"{name}.yaml", config)), tmp_path / name)
        outputs.append((tree_bytes(summary.run / "classifier"), summary.metrics))
    (files_a, metrics_a), (files_b, metrics_b) = outputs
    assert files_a.keys() == files_b.keys()
    evaluated = ("metrics.json", "predictions.csv")  # scored at another eval batch size: compared below
    assert all(files_a[k] == files_b[k] for k in files_a if k not in evaluated), "classifier bytes differ"
    rows_a, rows_b = (list(csv.DictReader(io.StringIO(f["predictions.csv"].decode()))) for f in (files_a, files_b))
    assert [r["top5_labels"] for r in rows_a] == [r["top5_labels"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):  # the batch size may move a probability in its last digit
        assert [float(x) for x in a["top5_probabilities"].split(";")] == pytest.approx(
            [float(x) for x in b["top5_probabilities"].split(";")], abs=1e-5)
    assert {k: v for k, v in metrics_a.items() if k != "config_hash"} == {
        k: v for k, v in metrics_b.items() if k != "config_hash"}


def test_checkpoint_cadence_does_not_change_the_adapter(tmp_path, tiny_models, toy_data):
    adapters = []
    for every in (0, 1):
        config = tiny_config(tiny_models, toy_data / "train",
                             adapt={"mode": "dataset", "epochs": 2, "checkpoint_every": every})
        root = init_run(load_config(write_config(tmp_path / f"c{every}.yaml", config),
                                    [f"runtime.store={tmp_path / f'store{every}'}"]), tmp_path / f"c{every}").layout.root
        adapters.append({k: v for k, v in tree_bytes(adapt(root)[0]).items() if not k.startswith(".")})
    assert adapters[0] == adapters[1]


def test_two_identical_runs_give_identical_bytes(tmp_path, config_file):
    """In two fresh interpreters, each with its own hash seed (safetensors' metadata order used to
    differ per process)."""
    trees = []
    for name in ("one", "two"):  # each with its own store, beside it
        result = run_cli("run", config_file, tmp_path / name / "run", fresh=True)
        assert result.returncode == 0, result.stderr
        # logs hold timings, the report names its folder, dotfiles are locks with pids
        trees.append({k: v for k, v in tree_bytes(tmp_path / name).items()
                      if not k.startswith(("run/logs/", "run/report/", "run/.", "datadream-store/locks/",
                                           "datadream-store/runs/"))})
    assert trees[0].keys() == trees[1].keys()
    assert {"adapters", "synthetic", "classifier"} <= {k.split("/")[1] for k in trees[0] if k.startswith("run/")}
    assert [k for k in trees[0] if trees[0][k] != trees[1][k]] == []


# 6. YAML that expands without bound --------------------------------------------------------------

def test_yaml_alias_bomb_is_refused(tmp_path):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    (tmp_path / "bomb.yaml").write_text("\n".join(levels + ["adapt: {rank: *i}"]) + "\n")
    result = run_cli("config", tmp_path / "bomb.yaml", timeout=60)
    assert_one_line_error(result, "too many aliases")


def test_huge_value_in_a_message_is_cut(tmp_path):
    (tmp_path / "big.yaml").write_text("adapt:\n  rank: [" + ",".join(["12345678"] * 50_000) + "]\n")
    line = assert_one_line_error(run_cli("config", tmp_path / "big.yaml"), "adapt.rank must be a int")
    assert len(line) < 300


# 7. Errors that used to come late ---------------------------------------------------------------

def test_split_file_listing_a_missing_test_image_fails_at_init(tmp_path, tiny_models, toy_data):
    entries = {"train": [], "test": []}
    for label, folder in enumerate(sorted((toy_data / "train").iterdir())):
        entries["train"] += [[f"train/{folder.name}/{p.name}", label, folder.name] for p in sorted(folder.iterdir())]
    entries["test"] = [["test/circle/missing.png", 0, "circle"]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps(entries))
    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train"))
    result = run_cli("init", config, tmp_path / "run", "--set", "data.train=null", "--set", f"data.root={toy_data}",
                     "--set", f"data.split_file={split}")
    assert_one_line_error(result, "1 test image(s) listed", "missing.png")
    assert not (tmp_path / "run").exists()


def test_unwritable_adapters_folder_fails_before_training(tmp_path, config_file):
    run = new_run(tmp_path, config_file)
    (run / "adapters").write_text("not a folder")  # what chmod cannot do as root, a file does
    assert_one_line_error(run_cli("adapt", run), "cannot write to", "adapters")


def test_pickled_weights_are_refused_in_one_line(tmp_path, config_file, tiny_models):
    import torch

    evil = tmp_path / "evil-clip"
    shutil.copytree(tiny_models["clip"], evil)
    (evil / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Payload()}, evil / "pytorch_model.bin")
    run = new_run(tmp_path, config_file, "run", "--set", f"classifier.model={evil}", "--set", "classifier.train_on=none")
    result = run_cli("train", run)  # zero-shot trains nothing, but reads the weights
    assert "pwned" not in result.stdout
    assert_one_line_error(result, "pickled weight file", "safetensors")


def test_huge_image_is_decoded_reduced_and_said_once(tmp_path, monkeypatch, caplog):
    from datadream.data import images

    monkeypatch.setattr(images, "LARGE_PIXELS", 100 * 100)
    monkeypatch.setattr(images, "KEEP_SHORT_SIDE", 60)
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"big.{fmt.lower()}"
        Image.new("RGB", (480, 260), (200, 30, 30)).save(path, format=fmt)
        first, second = images.load_rgb(path), images.load_rgb(path)
        assert first.size == second.size == (120, 65), fmt
        assert caplog.text.count(str(path)) == 1
