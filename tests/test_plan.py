"""`datadream plan` and `run --dry-run`: the counts add up, nothing is written, complete units of
an existing run are counted as skipped, and the module stays torch-free. No model is built."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, tree_bytes, write_config
from datadream.cli import main
from datadream.config import load_config
from datadream.layout import image_name
from datadream.artifacts import images_in_complete_batches
from datadream.plan import MAX_CLASSES, MAX_COUNT, make_plan

REPO = Path(__file__).resolve().parents[1]


def plan_for(*overrides: str, classes: int = 5, **kwargs):
    return make_plan(load_config(None, list(overrides)), classes=classes, **kwargs)


def test_importing_the_plan_loads_no_torch():
    code = ("import sys, datadream.plan, datadream.plan_text, datadream.costs\n"
            "from datadream.cli import main\n"
            "main(['plan', '--classes', '3'])\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GPU-hours" in done.stdout


def test_class_wise_adapter_steps_add_up():
    plan = plan_for("data.shots=16", classes=5)
    assert plan.counts["adapters"] == 5 and plan.counts["adapt_units"] == 1  # 16 classes to a unit
    assert plan.counts["adapt_steps"] == 5 * 200 * math.ceil(16 / 8) == 2000
    plan = plan_for("data.shots=5", "adapt.batch_size=2", "adapt.epochs=3", classes=4)
    assert plan.counts["adapt_steps"] == 4 * 3 * math.ceil(5 / 2)


def test_dataset_wise_is_one_adapter_over_all_shots():
    plan = plan_for("adapt.mode=dataset", "data.shots=16", classes=10)
    assert plan.counts["adapters"] == 1 and plan.counts["adapt_units"] == 1
    assert plan.counts["adapt_steps"] == 200 * math.ceil(160 / 8)


def test_images_and_unet_evaluations():
    plan = plan_for("synthesize.images_per_class=7", classes=3)
    assert plan.counts["images"] == 21
    assert plan.counts["unet_evaluations"] == 21 * (50 + 1) * 2  # PNDM takes steps + 1; CFG doubles
    no_cfg = plan_for("synthesize.images_per_class=7", "synthesize.guidance=1", "synthesize.sampler=dpm++",
                      classes=3)
    assert no_cfg.counts["unet_evaluations"] == 21 * 50


@pytest.mark.parametrize("train_on, samples", [
    ("synthetic", 4 * 500),
    ("real", 4 * 16 * (500 // 16)),
    ("synthetic+real", 4 * 500 + 4 * 16 * 31),
])
def test_classifier_steps_for_each_training_set(train_on, samples):
    plan = plan_for(f"classifier.train_on={train_on}", "classifier.epochs=3", classes=4)
    assert plan.counts["train_samples"] == samples
    assert plan.counts["train_steps"] == 3 * math.ceil(samples / 64)
    stages = [s.name for s in plan.stages]
    assert ("adapt" in stages) == (train_on != "real")


def test_zero_shot_plans_no_generator_and_no_training():
    plan = plan_for("classifier.train_on=none", classes=4)
    assert [s.name for s in plan.stages] == ["train"]
    assert plan.counts["train_steps"] == 0 and plan.stage("train").flops == 0


def test_catalog_dataset_gives_counts_and_validation_passes():
    plan = make_plan(load_config(None, ["data.dataset=eurosat", "classifier.epochs=2"]))
    assert plan.data.classes == 10
    assert plan.counts["val_passes"] == 2
    assert plan.stage("evaluate") is not None


def test_memory_grows_with_group_and_gpu_picks_precision():
    t4, a100 = plan_for(gpu="16"), plan_for(gpu="80")
    assert t4.precision == "fp16" and "sequential" in t4.stage("adapt").setting
    assert a100.precision == "bf16" and "batched" in a100.stage("adapt").setting
    assert a100.stage("adapt").memory > plan_for(gpu="24").stage("adapt").memory
    assert a100.stage("adapt").gpu_hours(a100.gpu) < t4.stage("adapt").gpu_hours(t4.gpu)


def test_cli_plan_prints_estimates_and_rejects_unknown_gpu(capsys):
    assert main(["plan", "--classes", "3", "--gpu", "a10"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES, not measured" in out and "35% assumed utilisation" in out
    assert "disk:" in out and "GPU-hours" in out
    assert main(["plan", "--classes", "3", "--gpu", "abacus"]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    assert main(["plan", str(REPO / "configs" / "example.yaml")]) == 2
    assert "--classes" in capsys.readouterr().err


@pytest.mark.parametrize("classes", ["0", "-3", "100000000"])
def test_class_count_out_of_range_is_one_line_with_the_bounds(capsys, classes):
    assert main(["plan", "--classes", classes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--classes {classes}: give a class count from 1 to 100,000" in err


def test_absurd_config_count_is_refused_and_the_largest_accepted_are_priced(capsys):
    assert main(["plan", "--classes", "3", "--set", f"synthesize.steps={10**400}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthesize.steps=" in err and "at most 1,000,000,000" in err
    counts = ("synthesize.steps", "synthesize.images_per_class", "data.shots", "adapt.epochs", "classifier.epochs")
    plan = plan_for(*(f"{key}={MAX_COUNT}" for key in counts), "adapt.resolution=999999992", classes=MAX_CLASSES)
    assert all(math.isfinite(stage.flops) for stage in plan.stages) and math.isfinite(plan.disk)
    assert plan_for("data.seed=" + "9" * 30, classes=3).data.classes == 3  # a seed is no count


def test_complete_images_counts_whole_batches_from_the_files_present(tmp_path):
    for index in [*range(10), 12, *range(20, 25)]:  # batches 0 and 2 (of 5 images) complete, 1 not
        (tmp_path / image_name(index, 25)).write_bytes(b"png")
    (tmp_path / "00030.png").write_bytes(b"png")  # beyond images_per_class
    (tmp_path / "notes.txt").write_text("mine")
    assert images_in_complete_batches(tmp_path, 25, 10) == 15
    assert images_in_complete_batches(tmp_path / "absent", 25, 10) == 0


@pytest.fixture()
def config_file(tmp_path, toy_data, tiny_models) -> Path:
    # init checks that the models load; the plan's estimates are for the full-size ones regardless.
    return write_config(tmp_path / "exp.yaml", {
        "data": {"train": str(toy_data / "train"), "test": str(toy_data / "test"), "shots": 3},
        "generator": {"model": str(tiny_models["sd"])},
        "classifier": {"model": str(tiny_models["clip"])},
        "synthesize": {"images_per_class": 25, "batch_size": 10},
        "runtime": {"device": "cpu"},
    })


def test_dry_run_writes_nothing(tmp_path, config_file, capsys):
    run = tmp_path / "run"
    assert main(["run", str(config_file), str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not run.exists()
    assert "adapt" in out and "synthesize" in out and "0 complete and skipped" in out
    assert main(["init", str(config_file), str(run)]) == 0
    before = tree_bytes(run)
    assert main(["run", str(config_file), str(run), "--dry-run"]) == 0
    assert tree_bytes(run) == before


def test_plan_of_a_partial_run_counts_skipped_units(tmp_path, config_file, capsys):
    run = tmp_path / "run"
    assert main(["init", str(config_file), str(run)]) == 0
    from datadream.markers import record_files
    from datadream.runs import open_run
    from datadream.units import adapter_specs, synthetic_specs

    slugs = [c["slug"] for c in json.loads((run / "fewshot.json").read_text())["classes"]]
    store = tmp_path / "datadream-store"
    specs = adapter_specs(open_run(run))
    for spec in specs[:2]:  # two finished adapters, in the store
        folder = store / "adapters" / spec.fingerprint
        folder.mkdir(parents=True)
        (folder / "pytorch_lora_weights.safetensors").write_bytes(b"x")
        (folder / "unit.json").write_text(json.dumps({"fingerprint": spec.fingerprint, "files": record_files(
            folder, ["pytorch_lora_weights.safetensors"])}))
    (store / "adapters" / specs[2].fingerprint).mkdir()  # a folder without its marker is not complete
    images = store / "synthetic" / synthetic_specs(open_run(run))[0].fingerprint
    images.mkdir(parents=True)
    for index in range(15):  # batch 0 (0-9) complete, batch 1 (10-19) not: 10 images skipped
        (images / f"{index:05d}.png").write_bytes(b"png")
    capsys.readouterr()
    assert main(["run", str(config_file), str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(slugs) - 2} adapter(s), 2 complete and skipped" in out
    assert "10 already written and skipped" in out
    plan = make_plan(load_config(config_file), run)
    assert plan.counts["adapt_skipped"] == 2 and plan.counts["images_skipped"] == 10
    assert plan.counts["adapt_pending_steps"] == plan.counts["adapt_steps"] * (len(slugs) - 2) // len(slugs)
    assert main(["plan", str(run)]) == 0  # a run folder plans itself
    assert "2 complete and skipped" in capsys.readouterr().out


def test_dry_run_refuses_a_run_of_another_config(tmp_path, config_file, capsys):
    run = tmp_path / "run"
    assert main(["init", str(config_file), str(run)]) == 0
    assert main(["run", str(config_file), str(run), "--dry-run", "--set", "adapt.rank=4"]) == 2
    assert "different config" in capsys.readouterr().err


def test_hardware_doc_is_in_sync():
    from datadream.plan_text import hardware_markdown

    doc = REPO / "docs" / "hardware.md"
    assert doc.read_text(encoding="utf-8") == hardware_markdown(REPO), (
        "docs/hardware.md is stale: run `datadream plan --markdown > docs/hardware.md` from the repository root"
    )


def test_catalog_counts_stand_in_for_data_not_downloaded_yet(tmp_path):
    config = load_config(None, ["data.dataset=pets", f"data.root={tmp_path / 'missing'}",
                                f"data.split_file={tmp_path / 'missing.json'}"])
    plan = make_plan(config)
    assert plan.data.classes == 37 and "not readable yet" in plan.data.source




@pytest.mark.slow
@pytest.mark.parametrize("mode", ["class", "dataset"])
def test_plan_run_and_status_count_the_same_units(tmp_path, tiny_models, mode, monkeypatch, capsys):
    """5 classes in adapt units of 2 (class-wise: 3 units) or one dataset-wise adapter, and 2 shards
    per class: plan (before and after init), what `run` executes and what `status` reports agree."""
    import datadream.stages.adapt as adapt_stage
    import datadream.stages.synthesize as synthesize_stage
    from datadream.data.toy import write_toy_dataset
    from datadream.status import status_text

    data = write_toy_dataset(tmp_path / "data", {"train": 2}, size=32,
                             classes=("circle", "square", "triangle", "stripes", "dots"))
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, data / "train", data={"shots": 2}, adapt={"mode": mode, "group_size": 2, "epochs": 1},
        synthesize={"images_per_class": 4, "shard_size": 2}, runtime={"until": "synthesize"}))
    expected = {"adapt": 3 if mode == "class" else 1, "synthesize": 10, "index": 1}

    def planned(where: Path) -> dict:
        capsys.readouterr()
        assert main(["plan", str(where), "--json"]) == 0
        stages = json.loads(capsys.readouterr().out)["stages"]
        return {name: (stage["units"], stage["complete"]) for name, stage in stages.items()}

    assert planned(config) == {stage: (n, 0) for stage, n in expected.items()}
    run = tmp_path / "run"
    assert main(["init", str(config), str(run)]) == 0
    assert planned(run) == {stage: (n, 0) for stage, n in expected.items()}
    capsys.readouterr()  # a speed setting given to --dry-run is the one the run will use: 1 shard a class
    assert main(["run", str(config), str(run), "--dry-run", "--set", "synthesize.shard_size=4"]) == 0
    assert re.search(r"^synthesize\s+5\s+0\s+0\s+5$", capsys.readouterr().out, re.M)

    executed = {"adapt": 0, "synthesize": 0}
    adapt, synthesize = adapt_stage.adapt, synthesize_stage.synthesize

    def counting_adapt(root, groups=None):
        executed["adapt"] += len(groups)
        return adapt(root, groups)

    def counting_synthesize(root, shards=None):
        executed["synthesize"] += len(shards)
        return synthesize(root, shards)

    monkeypatch.setattr(adapt_stage, "adapt", counting_adapt)
    monkeypatch.setattr(synthesize_stage, "synthesize", counting_synthesize)
    assert main(["run", str(config), str(run)]) == 0
    assert executed == {"adapt": expected["adapt"], "synthesize": expected["synthesize"]}

    rows = {line.split()[0]: [int(n) for n in line.split()[1:3]] for line in status_text(run).splitlines()
            if line.split()[:1] and line.split()[0] in expected}
    assert rows == {stage: [n, n] for stage, n in expected.items()}  # units, all complete
    assert planned(run) == {stage: (n, n) for stage, n in expected.items()}
