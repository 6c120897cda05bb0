"""`datadream benchmark` end to end on tiny models over every dataset source format."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tiny_config
from datadream.benchmark import run_benchmark
from datadream.data.toy import write_toy_dataset


def coop_and_csv(tmp_path: Path) -> tuple[dict, dict]:
    """The same toy images described by a CoOp JSON split file and by a CSV split file."""
    images = write_toy_dataset(tmp_path / "flat-src", {"train": 4, "val": 2, "test": 2}, size=40, seed=3)
    entries: dict[str, list] = {}
    for split_dir in sorted(images.iterdir()):
        for label, cls in enumerate(sorted(p.name for p in split_dir.iterdir())):
            for image in sorted((split_dir / cls).iterdir()):
                entries.setdefault(split_dir.name, []).append([f"{split_dir.name}/{cls}/{image.name}", label, cls])
    (tmp_path / "split.json").write_text(json.dumps(entries))
    with (tmp_path / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "filename", "class"])
        writer.writerows([split, path, name] for split, rows in entries.items() for path, _, name in rows)
    return ({"root": str(images), "split_file": str(tmp_path / "split.json")},
            {"root": str(images), "split_file": str(tmp_path / "split.csv")})


def bench_file(tmp_path: Path, models, datasets: dict, **keys) -> Path:
    base = tiny_config(models, Path("unused"))
    base["data"] = {"shots": 2}
    base["synthesize"] = {**base["synthesize"], "images_per_class": 2}
    base["classifier"] = {**base["classifier"], "epochs": 1}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, "base": base, **keys}, sort_keys=False))
    return path


@pytest.mark.slow
def test_benchmark_over_every_source_format(tmp_path, tiny_models):
    folders = write_toy_dataset(tmp_path / "folders", {"train": 4, "val": 2, "test": 2}, size=40)
    coop, table = coop_and_csv(tmp_path)
    bench = bench_file(tmp_path, tiny_models, {"folders": {"root": str(folders)}, "coop": coop, "csv": table},
                       methods=["zero-shot", "real", "datadream-class"], seeds=[0, 1])
    out = tmp_path / "out"
    results = run_benchmark(bench, out)

    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 3 * 2 * (1 + 1 + 2)
    for row in runs:  # every number in the tables comes from a run's metrics.json
        metrics = json.loads((Path(row["run"]) / "classifier" / "metrics.json").read_text())
        assert float(row["top1"]) == metrics["top1"]
    table = {r["method_setting"]: r for r in csv.DictReader((out / "results.csv").open()) if r["source"] == "ours"}
    assert list(table) == ["zero-shot", "real", "datadream-class / synthetic", "datadream-class / synthetic+real"]
    for name, row in table.items():
        for dataset in ("folders", "coop", "csv"):
            values = [float(r["top1"]) for r in runs if r["dataset"] == dataset and
                      (r["method"] if not r["setting"] else f"{r['method']} / {r['setting']}") == name]
            assert float(row[dataset]) == pytest.approx(sum(values) / 2)
        assert float(row["average"]) == pytest.approx(sum(float(row[d]) for d in ("folders", "coop", "csv")) / 3)
    text = results.read_text()
    assert "| ours | datadream-class / synthetic+real |" in text and "±" in text
    # Beside the tables, every run on one comparison page (a bar chart of top-1) and its CSV.
    compared = list(csv.DictReader((out / "compare" / "compare.csv").open(encoding="utf-8")))
    assert len(compared) == len(runs) and "<svg" in (out / "compare" / "index.html").read_text()

    # Adapters and images are made once per (dataset, seed), in the benchmark's store, and shared
    # across settings: the two cells show the very same files.
    cells = [out / "coop" / "seed0" / name for name in ("datadream-class--synthetic", "datadream-class--synthetic-real")]
    for name in ("adapters/000-circle/pytorch_lora_weights.safetensors", "synthetic/001-square/00000.png"):
        assert os.path.samefile(cells[0] / name, cells[1] / name)
    assert (out / "datadream-store" / "adapters").is_dir()
    # The few-shot draw depends only on (dataset, seed).
    manifests = {p.parent.name: json.loads(p.read_text())["classes"] for p in (out / "coop" / "seed0").glob("*/fewshot.json")}
    assert len({json.dumps(m) for m in manifests.values()}) == 1

    # Resumable: a second invocation finds everything complete and writes the same tables.
    before = (out / "results.csv").read_text()
    result = run_cli("-q", "benchmark", bench, out)
    assert result.returncode == 0, result.stderr
    assert (out / "results.csv").read_text() == before


def test_benchmark_with_every_method_and_published_rows(tmp_path, tiny_models):
    coop, _ = coop_and_csv(tmp_path)
    bench = bench_file(tmp_path, tiny_models, {"eurosat_like": coop}, seeds=[0])
    run_benchmark(bench, tmp_path / "out")
    rows = [r["method_setting"] for r in csv.DictReader((tmp_path / "out" / "results.csv").open())]
    assert rows[:8] == ["zero-shot", "real", "sd / synthetic", "sd / synthetic+real", "datadream-class / synthetic",
                        "datadream-class / synthetic+real", "datadream-dataset / synthetic",
                        "datadream-dataset / synthetic+real"]
    # A dataset not in the catalog has no published numbers; the published rows stay out.
    assert len(rows) == 8


def test_published_numbers_sit_beside_ours_for_catalog_datasets(tmp_path):
    from datadream.benchmark import Benchmark, Cell, write_tables

    bench = Benchmark({"eurosat": {}, "dtd": {}}, ["zero-shot"], ["synthetic"], [0, 1], {}, tmp_path)
    results = [(Cell(d, s, "zero-shot", None), {"top1": 40.0 + s}, tmp_path) for d in ("eurosat", "dtd") for s in (0, 1)]
    write_tables(bench, tmp_path, results)
    rows = {(r["source"], r["method_setting"]): r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert float(rows[("ours", "zero-shot")]["eurosat"]) == 40.5
    assert float(rows[("ours", "zero-shot")]["eurosat_std"]) == pytest.approx(0.7071, abs=1e-4)
    assert float(rows[("published", "zero-shot")]["eurosat"]) == 38.1
    assert float(rows[("published", "datadream-dataset / synthetic+real")]["dtd"]) == 74.1
    assert float(rows[("published", "real")]["average"]) == pytest.approx((93.5 + 73.9) / 2)
    # DTD and EuroSAT were published on the train split with test-based selection: marked.
    table = (tmp_path / "results.md").read_text()
    assert "| published | real | 93.5 † | 73.9 † |" in table
    assert "| published | zero-shot | 38.1 | 46.1 |" in table
    assert "† published with the reference code's protocol" in table


def test_a_dataset_entry_may_carry_its_own_settings(tmp_path):
    from datadream.benchmark import Cell, read_benchmark

    path = tmp_path / "bench.yaml"
    path.write_text("datasets:\n"
                    "  a: {train: A, classifier: {epochs: 7}, adapt: {rank: 4}}\n"
                    "  b: {train: B, data: {shots: 4}}\n"
                    "base: {classifier: {epochs: 3, lr: 0.01}, data: {shots: 8}}\n")
    bench = read_benchmark(path)
    a = bench.config(Cell("a", 0, "datadream-class", "synthetic"), [])
    b = bench.config(Cell("b", 1, "real", None), [])
    assert (a.classifier.epochs, a.classifier.lr, a.adapt.rank, a.data.shots) == (7, 0.01, 4, 8)
    assert (b.classifier.epochs, b.classifier.lr, b.adapt.rank, b.data.shots, b.data.seed) == (3, 0.01, 16, 4, 1)
    assert a.classifier.train_on == "synthetic" and b.classifier.train_on == "real"
    path.write_text("datasets:\n  a: {train: A, classifier: 7}\n")
    with pytest.raises(Exception, match="'classifier' must hold config keys"):
        read_benchmark(path).config(Cell("a", 0, "real", None), [])


def test_bad_benchmark_files(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("datasets: {a: {}}\nmethods: [dreambooth]\n")
    result = run_cli("benchmark", path, tmp_path / "out")
    assert result.returncode == 2 and "methods entry 'dreambooth' is not one of" in result.stderr
    path.write_text("datasets: {a: {}}\nseedz: [1]\n")
    assert "unknown key 'seedz'" in run_cli("benchmark", path, tmp_path / "out").stderr


@pytest.mark.parametrize("text, message", [
    ("datasets: {a: [unclosed\n", "is not valid YAML"),
    ("datasets: {eurosat: /data/eurosat}\n", "'datasets' must map each dataset name to its data.* settings"),
    ("datasets: {a: {}}\nseeds: 3\n", "seeds must be a list of non-negative integers"),
    ("datasets: {'../up': {}}\n", "dataset name '../up' becomes a folder name"),
    ("datasets: {a: {}}\nmethods: real\n", "methods must be a list"),
])
def test_malformed_benchmark_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    result = run_cli("benchmark", path, tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_benchmark_refuses_seed_overrides(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("datasets: {a: {}}\nseeds: [0, 1]\n")
    result = run_cli("benchmark", path, tmp_path / "out", "--set", "runtime.seed=3")
    assert result.returncode == 2 and "sets the seeds of its runs" in result.stderr


def test_a_benchmark_is_done_by_one_runner(tmp_path):
    """One runner does every cell (so that it can share work between them): datasets that name
    different runners are refused before any run folder is made."""
    from datadream.errors import UserError

    path = tmp_path / "bench.yaml"
    path.write_text("datasets:\n  a: {train: A}\n  b: {train: B, runtime: {runner: ray}}\nmethods: [real]\n")
    with pytest.raises(UserError, match=r"need one runtime.runner; its datasets name local \(a\), ray \(b\)"):
        run_benchmark(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
