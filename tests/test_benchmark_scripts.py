"""The benchmark scripts run end to end (tiny settings, nothing appended to the docs), so the GPU
commands in docs/benchmarks.md keep working."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("adapt_throughput.py", ["--classes", "2", "--epochs", "1", "--groups", "2", "--repeats", "1"]),
    ("synthesize_throughput.py", ["--tiny", "--device", "cpu", "--classes", "2", "--images", "2", "--steps", "2",
                                  "--batch", "2", "--repeats", "1"]),
    ("adapt_throughput.py", ["--family", "flux", "--classes", "2", "--epochs", "1", "--groups", "2", "--repeats", "1"]),
    ("synthesize_throughput.py", ["--family", "sdxl", "--tiny", "--device", "cpu", "--classes", "2", "--images", "2",
                                  "--steps", "2", "--batch", "2", "--repeats", "1"]),
])
def test_benchmark_script_runs(script, args):
    result = run_script(BENCHMARKS / script, *args, "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("speed-up vs reference" if "--family" not in args else "speed-up vs") in result.stdout
    assert ("samples/s" if script.startswith("adapt") else "images/s") in result.stdout


# --- benchmarks/scale_out.py ----------------------------------------------------------------------

SCALE_OUT = BENCHMARKS / "scale_out.py"


def _table_rows(text: str, section: str) -> set[int]:
    """The GPU counts in the first column of a section's table."""
    body = text.split(section, 1)[1].split("\n### ", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", body, re.MULTILINE)}


def test_scale_out_predict_estimates_both_workloads_without_torch():
    # run as __main__ in a fresh interpreter, then ask whether the prediction imported torch
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(SCALE_OUT)!r}, 'predict', '--gpu', 'h100']\n"
            f"runpy.run_path({str(SCALE_OUT)!r}, run_name='__main__')\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "estimate" in out.lower()
    for section in ("(a) The paper's table", "(b) ImageNet class-wise"):
        assert _table_rows(out, section) == {1, 8, 64}, section
    assert "critical path" in out
    assert "torch imported: False" in out
    # docs/scaling.md shows this very output (as docs/hardware.md shows `datadream plan --markdown`)
    doc = (BENCHMARKS.parent / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert out.split("torch imported:", 1)[0].strip() in doc, (
        "docs/scaling.md is stale: paste the output of `python benchmarks/scale_out.py predict --gpu h100`")


def test_scale_out_predict_from_a_costs_file_says_where_the_costs_come_from(tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({
        "device": "test device", "models": "tiny", "date": "2026-01-01", "command": "python benchmarks/scale_out.py",
        "adapt": {"seconds_per_adapter": 2.0, "flops_per_adapter": 1e15},
        "synthesize": {"seconds_per_image": 0.5, "flops_per_image": 1e14},
        "train": {"seconds_per_epoch": 10.0, "flops_per_epoch": 1e16, "images_per_epoch": 1000},
    }))
    result = subprocess.run([sys.executable, str(SCALE_OUT), "predict", "--costs", str(costs), "--quick"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "measured on test device" in result.stdout
    assert "TINY" in result.stdout  # costs of tiny models are flagged as saying nothing about real runs
    for section in ("(a) The paper's table", "(b) ImageNet class-wise"):
        assert _table_rows(result.stdout, section) == {1, 8, 64}, section


def test_scale_out_schedule_respects_its_bounds():
    spec = importlib.util.spec_from_file_location("scale_out", SCALE_OUT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_out"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["scale_out"]
    dag = module.Dag()
    long = dag.add("adapt/dataset", 800.0, parallel=True)
    shards = [dag.add(f"synthesize/{i}", 100.0, (long,)) for i in range(16)]
    index = dag.add("index", 0.0, shards, gpu=False)
    dag.add("train", 400.0, (index,), parallel=True)
    one = module.simulate(dag, 1, 1, 8, 0.9)
    assert one.wall == pytest.approx(800 + 1600 + 400)  # one GPU: the sum of the work
    eight = module.simulate(dag, 8, 8, 8, 0.9)
    # the adapter and the training run data-parallel on 8 GPUs (7.2x), the shards 8 at a time
    assert eight.wall == pytest.approx(800 / 7.2 + 200 + 400 / 7.2)
    assert eight.wall >= max(eight.work / 8, eight.critical) - 1e-9
    assert [name for name, _, _ in eight.path] == ["adapt/dataset", "synthesize/0", "train"]


@pytest.mark.slow  # 30-60 s: builds tiny models, then two short runs of real worker processes
def test_scale_out_measure_quick(tmp_path):
    costs = tmp_path / "costs.json"
    result = run_script(SCALE_OUT, "--quick", "--save-costs", costs)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "units/s" in result.stdout and "ratio" in result.stdout and "0 done twice" in result.stdout
    saved = json.loads(costs.read_text())
    assert saved["models"] == "tiny" and saved["device"]
    assert saved["adapt"]["seconds_per_adapter"] > 0 and saved["synthesize"]["seconds_per_image"] > 0
