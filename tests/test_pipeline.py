"""End to end on tiny models, through the real loading code: init -> adapt -> synthesize, the
files each stage writes, compatibility with stock diffusers, and resume after `kill -9`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli, start_cli, tiny_config, tree_bytes, write_config
from datadream.config import load_config
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER
from datadream.stages.adapt import adapt
from datadream.runs import init_run, open_run
from datadream.stages.synthesize import synthesize

# A high learning rate makes the adapters change the images visibly, so that a LoRA that was lost
# or mis-scaled on loading (alpha != rank here) cannot go unnoticed.
STRONG = {"lr": 1e-2}


def make_run(tmp_path: Path, models, train: Path, name="run", **sections) -> Path:
    """TMP/<name>/run, with its own store beside it (TMP/<name>/datadream-store): two runs of one
    test never share work, and their files compare byte for byte."""
    sections.setdefault("adapt", STRONG)
    config = write_config(tmp_path / f"{name}.yaml", tiny_config(models, train, **sections))
    return init_run(load_config(config), tmp_path / name / "run").layout.root


def store_files(run: Path, kind: str, pattern: str) -> list[Path]:
    """Finished entries only (not a temporary folder being written)."""
    store = run.parent / "datadream-store" / kind
    return [p for p in store.glob(pattern) if not p.relative_to(store).parts[0].startswith(".")]


def stock_image(models, adapter: Path | None, prompt: str, seed: int, steps: int) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["sd"], safety_checker=None, requires_safety_checker=False)
    if adapter is not None:
        pipe.load_lora_weights(adapter)
    image = pipe(prompt, num_inference_steps=steps, guidance_scale=2.0, height=TINY, width=TINY,
                 generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image, dtype=np.int16)


def test_class_wise_run_and_stock_diffusers_reproduces_our_images(tmp_path, tiny_models, toy_data):
    run = make_run(tmp_path, tiny_models, toy_data / "train")
    folders = adapt(run)
    assert [f.name for f in folders] == ["000-circle", "001-square", "002-stripes", "003-triangle"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [LORA_WEIGHTS, UNIT_MARKER]
        marker = json.loads((folder / UNIT_MARKER).read_text())
        assert marker["steps"] == 2 * 2  # 2 epochs x ceil(3 shots / batch 2)
    from safetensors import safe_open

    with safe_open(folders[0] / LORA_WEIGHTS, "pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    assert metadata["unet.lora_alpha"] == 8 and metadata["unet.r"] == 4
    assert {"to_q", "to_k", "to_v", "to_out.0"} == set(metadata["unet.target_modules"])
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} == set(metadata["text_encoder.target_modules"])

    index = synthesize(run)
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    assert len(rows) == 4 * 3
    assert {r["file"] for r in rows} == {p.relative_to(run / "synthetic").as_posix()
                                         for p in (run / "synthetic").rglob("*.png")}
    first = rows[0]
    assert first == {**first, "label": 0, "class_name": "circle", "prompt": "a photo of a circle",
                     "adapter": "000-circle", "file": "000-circle/00000.png"}
    # Image k of each class starts from its own noise (the reference reused one seed per class).
    assert len({r["seed"] for r in rows}) == len(rows)

    # The first class's adapter is loaded, the others are swapped in place: both must match stock.
    for row, folder in ((first, folders[0]), (rows[-1], folders[-1])):
        ours = np.asarray(Image.open(run / "synthetic" / row["file"]), dtype=np.int16)
        stock = stock_image(tiny_models, folder, row["prompt"], row["seed"], steps=3)
        assert np.abs(ours - stock).max() <= 2, "stock load_lora_weights must reproduce our image"
        base = stock_image(tiny_models, None, row["prompt"], row["seed"], steps=3)
        assert np.abs(ours - base).mean() > 1, "the adapter should change the image"


def test_dataset_wise_run_trains_one_adapter(tmp_path, tiny_models, toy_data):
    run = make_run(tmp_path, tiny_models, toy_data / "train",
                   adapt={**STRONG, "mode": "dataset", "train_text_encoder": False})
    folders = adapt(run)
    assert [f.name for f in folders] == ["dataset"]
    marker = json.loads((folders[0] / UNIT_MARKER).read_text())
    assert marker["classes"] == ["circle", "square", "stripes", "triangle"]
    assert marker["steps"] == 2 * 6  # 2 epochs x ceil(12 shots / batch 2)
    from safetensors import safe_open

    with safe_open(folders[0] / LORA_WEIGHTS, "pt") as handle:
        assert not any(k.startswith("text_encoder.") for k in handle.keys())
    rows = [json.loads(line) for line in synthesize(run).read_text().splitlines()]
    assert {r["adapter"] for r in rows} == {"dataset"} and len(rows) == 12


def test_rerunning_a_complete_run_changes_nothing(tmp_path, tiny_models, toy_data):
    run = make_run(tmp_path, tiny_models, toy_data / "train", synthesize={"images_per_class": 2})
    adapt(run)
    synthesize(run)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    adapt(run)
    synthesize(run)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    assert all(after[p][1] == before[p][1] for p in before)
    untouched = [p for p in before if p.suffix in {".png", ".safetensors"}]
    assert all(after[p][0] == before[p][0] for p in untouched), "complete units must be skipped"


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the stage finished before it could be interrupted:\n{err[-2000:]}")
        if time.time() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the stage to make progress")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def checkpoint_step(folder: Path) -> int:
    try:
        return json.loads((folder / "state.json").read_text())["meta"]["step"]
    except (OSError, ValueError):  # none yet, or being replaced at this very moment
        return -1


def start_stage(stage: str, run: Path):
    return start_cli("-q", stage, run)


@pytest.mark.slow
def test_synthesize_resumes_after_kill_with_identical_files(tmp_path, tiny_models, toy_data):
    sections = {"synthesize": {"images_per_class": 5, "steps": 25, "batch_size": 2}}
    run = make_run(tmp_path, tiny_models, toy_data / "train", name="a", **sections)
    twin = make_run(tmp_path, tiny_models, toy_data / "train", name="b", **sections)
    adapt(run)
    adapt(twin)

    synthesize(run)  # uninterrupted
    expected = tree_bytes(run / "synthetic")

    process = start_stage("synthesize", twin)
    kill_when(process, lambda: len(store_files(twin, "synthetic", "*/*.png")) >= 3)
    partial = store_files(twin, "synthetic", "*/*.png")
    assert 3 <= len(partial) < 20 and not (twin / "synthetic" / "index.jsonl").exists()
    for png in partial:  # whatever exists after kill -9 is a complete, valid image
        Image.open(png).load()

    result = run_cli("-q", "synthesize", twin)
    assert result.returncode == 0, result.stderr
    assert tree_bytes(twin / "synthetic") == expected
    assert not [p for p in twin.parent.rglob(".tmp-*")]


def adapter_contents(root: Path) -> dict:
    """Every adapter's metadata and tensors, and its marker minus the training time. (safetensors
    writes its header's metadata in hash order, so raw file bytes can differ.)"""
    from safetensors import safe_open

    content = {}
    for path in sorted((root / "adapters").rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.name == UNIT_MARKER:
            content[name] = json.loads(path.read_text()) | {"seconds": None}
        elif path.suffix == ".safetensors":
            with safe_open(path, "pt") as handle:
                content[name] = (handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()})
    return content


@pytest.mark.slow
@pytest.mark.parametrize("engine", [{"engine": "sequential"}, {"engine": "batched", "group_size": 2}])
def test_adapt_resumes_after_kill(tmp_path, tiny_models, toy_data, engine):
    """Sequential: the resumed adapters are bit-identical. Batched: a resumed run may group the
    remaining classes differently, and a different batch size rounds differently: equal within
    float tolerance."""
    sections = {"adapt": {**STRONG, "epochs": 15, **engine}}
    run = make_run(tmp_path, tiny_models, toy_data / "train", name="a", **sections)
    twin = make_run(tmp_path, tiny_models, toy_data / "train", name="b", **sections)
    adapt(run)
    expected = adapter_contents(run)

    process = start_stage("adapt", twin)
    kill_when(process, lambda: len(store_files(twin, "adapters", f"*/{UNIT_MARKER}")) >= 1)
    first = store_files(twin, "adapters", f"*/{UNIT_MARKER}")[0].parent / LORA_WEIGHTS
    done_first = first.stat().st_mtime_ns
    assert len(store_files(twin, "adapters", f"*/{UNIT_MARKER}")) < 4

    result = run_cli("-q", "adapt", twin)
    assert result.returncode == 0, result.stderr
    resumed = adapter_contents(twin)
    assert resumed.keys() == expected.keys()
    exact = engine["engine"] == "sequential"
    for name, value in expected.items():
        if name.endswith(UNIT_MARKER):
            assert resumed[name]["fingerprint"] == value["fingerprint"] and resumed[name]["steps"] == value["steps"]
            continue
        metadata, tensors = resumed[name]
        assert metadata == value[0]
        for key, tensor in value[1].items():
            # (lr 1e-2 here: Adam turns rounding-level gradient differences into ~1e-4 weight changes)
            same = torch.equal(tensors[key], tensor) if exact else torch.allclose(tensors[key], tensor, rtol=1e-3, atol=1e-4)
            assert same, (name, key)
    assert first.stat().st_mtime_ns == done_first, "a finished adapter is not trained again"
    assert not [p for p in twin.parent.rglob(".tmp-*")]


def test_open_run_reads_back_what_init_wrote(tmp_path, tiny_models, toy_data):
    run = make_run(tmp_path, tiny_models, toy_data / "train")
    opened = open_run(run)
    assert opened.config.adapt.rank == 4 and len(opened.manifest.classes) == 4
    assert (run / "config.yaml").read_text().startswith("data:")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_long_adapter_resumes_from_its_checkpoint(tmp_path, generator_models, toy_data, family):
    """Dataset-wise adaptation is one long unit: a kill mid-training resumes at the last
    checkpoint and ends with the adapter an uninterrupted run trains (for a flow-matching family
    too: its sigma draws come from the checkpointed generator)."""
    from safetensors.torch import load_file

    sections = {"adapt": {**STRONG, "mode": "dataset", "epochs": 12, "checkpoint_every": 5}}
    run = make_run(tmp_path, generator_models, toy_data / "train", name="a", **sections)
    twin = make_run(tmp_path, generator_models, toy_data / "train", name="b", **sections)
    adapt(run)
    expected = load_file(run / "adapters" / "dataset" / LORA_WEIGHTS)
    expected_marker = json.loads((run / "adapters" / "dataset" / UNIT_MARKER).read_text())

    from datadream.units import adapter_specs

    partial = twin.parent / "datadream-store" / "adapters" / f".partial-{adapter_specs(open_run(twin))[0].fingerprint}"
    process = start_stage("adapt", twin)
    kill_when(process, lambda: checkpoint_step(partial) >= 10)
    assert not (twin / "adapters" / "dataset").exists()

    result = run_cli("adapt", twin)
    assert result.returncode == 0, result.stderr
    assert "adapt: resuming [1/1] dataset at step" in result.stderr
    resumed = load_file(twin / "adapters" / "dataset" / LORA_WEIGHTS)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    marker = json.loads((twin / "adapters" / "dataset" / UNIT_MARKER).read_text())
    assert marker["loss_per_epoch"] == expected_marker["loss_per_epoch"]
    assert len(marker["loss_per_epoch"]) == 12
    assert not partial.exists(), "the checkpoint is removed once the adapter is complete"


def test_class_names_that_are_not_paths(tmp_path, tiny_models, toy_data):
    """Names with '/', quotes, '..', spaces and unicode reach the prompts intact and never the
    file system."""
    names = tmp_path / "names.txt"
    names.write_text("circle\tF/A-18\nsquare\tcolt's foot\nstripes\t..\ntriangle\tcrème brûlée 日本\n",
                     encoding="utf-8")
    run = make_run(tmp_path, tiny_models, toy_data / "train",
                   data={"classnames": str(names), "domain": "aircraft"},
                   adapt={**STRONG, "mode": "dataset", "epochs": 1},
                   synthesize={"images_per_class": 1, "batch_size": 1})
    adapt(run)
    rows = [json.loads(line) for line in synthesize(run).read_text(encoding="utf-8").splitlines()]
    assert [r["class_name"] for r in rows] == ["F/A-18", "colt's foot", "..", "crème brûlée 日本"]
    assert rows[0]["prompt"] == "a aircraft photo of a F/A-18"
    assert sorted(p.name for p in (run / "synthetic").iterdir() if p.is_dir()) == [
        "000-f-a-18", "001-colt-s-foot", "002-class", "003-creme-brulee"]
    assert all((run / "synthetic" / r["file"]).resolve().is_relative_to(run / "synthetic") for r in rows)


def test_unadapted_previews_are_the_stock_generators_images_and_change_nothing_else(tmp_path, tiny_models, toy_data):
    """synthesize.preview_images: with the first shard of each adapted class, its first seeds are
    sampled with the adapter switched off, into the store beside (not in) the class's images:
    the very images adapt.mode=none makes from those seeds, while the adapted images stay as
    they are without previews."""
    import shutil

    run = make_run(tmp_path, tiny_models, toy_data / "train", synthesize={"preview_images": 2})
    adapt(run)
    synthesize(run)
    store = run.parent / "datadream-store"
    base = make_run(tmp_path, tiny_models, toy_data / "train", name="base", adapt={"mode": "none"})
    synthesize(base)
    rows = [json.loads(line) for line in (run / "synthetic" / "index.jsonl").read_text().splitlines()]
    assert not list((run / "synthetic").rglob("unadapted-*")), "previews are no training data"
    for folder in (store / "synthetic").iterdir():
        marker = json.loads((store / "previews" / folder.name / "preview.json").read_text())
        first = [r for r in rows if r["class_name"] == marker["class"]][:2]
        assert marker["seeds"] == [r["seed"] for r in first] and marker["prompt"] == first[0]["prompt"]
        assert [i["file"] for i in marker["images"]] == ["unadapted-00000.png", "unadapted-00001.png"]
        for record, row in zip(marker["images"], first):
            preview = np.asarray(Image.open(store / "previews" / folder.name / record["file"]), dtype=np.int16)
            stock = np.asarray(Image.open(base / "synthetic" / row["file"]), dtype=np.int16)
            assert np.array_equal(preview, stock), "the un-adapted preview is adapt.mode=none's image"
            adapted = np.asarray(Image.open(run / "synthetic" / row["file"]), dtype=np.int16)
            assert np.abs(adapted - preview).mean() > 1, "the adapter should change the image"
    assert not (base.parent / "datadream-store" / "previews").exists()  # nothing to compare without adapters

    # The same run without previews (same adapters) writes the same synthetic set.
    plain = make_run(tmp_path, tiny_models, toy_data / "train", name="plain", synthesize={"preview_images": 0})
    shutil.copytree(store / "adapters", plain.parent / "datadream-store" / "adapters")
    synthesize(plain)
    assert tree_bytes(plain / "synthetic") == tree_bytes(run / "synthetic")
    assert not (plain.parent / "datadream-store" / "previews").exists()

    # Killed after the images, before the markers: the preview is sampled again, the same bytes.
    entry = next((store / "synthetic").iterdir())
    previews = tree_bytes(store / "previews" / entry.name)
    for marker in (".shard-00000.json", ".datadream.json"):
        (entry / marker).unlink()
    shutil.rmtree(store / "previews" / entry.name)
    synthesize(run)
    assert tree_bytes(store / "previews" / entry.name) == previews
    # A class complete without its preview (an older run) stays so.
    shutil.rmtree(store / "previews" / entry.name)
    synthesize(run)
    assert not (store / "previews" / entry.name).exists()
