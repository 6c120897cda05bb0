"""`datadream benchmark BENCH.yaml OUT`: the paper's table as one resumable command.

    datasets:                        # name -> data.* keys (a catalog key as name fills data.dataset)
      eurosat: {root: DATA/eurosat/2750, split_file: DATA/split_zhou_EuroSAT.json}
      dtd:                           # config sections beside the data keys: this dataset only
        root: DATA/dtd/images
        split_file: DATA/dtd/split_zhou_DescribableTextures.json
        classifier: {epochs: 30}
    methods: [zero-shot, real, sd, datadream-class, datadream-dataset]
    settings: [synthetic, synthetic+real]
    seeds: [0, 1, 2]
    base:                            # overrides for every run, as in an experiment config
      classifier: {epochs: 60}

Every cell is an ordinary run folder, OUT/<dataset>/seed<k>/<method>[--<setting>], so any of them
can be inspected, resumed or re-run alone. What can be shared is: the few-shot draw depends only
on (dataset, seed); adapters and synthetic images live in one store, OUT/datadream-store (unless
runtime.store names another), under their fingerprint, so the two settings of a generator method
share one set of adapters and one synthetic set, made once. With `--runner ray` every cell's
units are submitted as one dependency graph, so a cluster stays busy across cells. Tables: OUT/results.md and OUT/results.csv (mean ± std
over seeds, the published numbers beside ours), and OUT/runs.csv (one row per run).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datadream import atomic
from datadream.config import SECTIONS, Config, RuntimeConfig, config_from_raw, read_yaml
from datadream.catalog import CATALOG
from datadream.errors import UserError

GENERATOR_METHODS = {"sd": "none", "datadream-class": "class", "datadream-dataset": "dataset"}
METHODS = ("zero-shot", "real", *GENERATOR_METHODS)
SETTINGS = ("synthetic", "synthetic+real")
BENCH_KEYS = {"datasets", "methods", "settings", "seeds", "base"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    seed: int
    method: str
    setting: str | None  # None for zero-shot and real

    @property
    def row(self) -> str:
        return self.method if self.setting is None else f"{self.method} / {self.setting}"

    @property
    def folder(self) -> str:
        return self.method if self.setting is None else f"{self.method}--{self.setting.replace('+', '-')}"


@dataclass
class Benchmark:
    datasets: dict[str, dict]
    methods: list[str]
    settings: list[str]
    seeds: list[int]
    base: dict
    base_dir: Path  # relative dataset paths are relative to the benchmark file

    def cells(self) -> list[Cell]:
        cells = []
        for dataset in self.datasets:
            for seed in self.seeds:
                for method in self.methods:
                    settings = self.settings if method in GENERATOR_METHODS else [None]
                    cells += [Cell(dataset, seed, method, s) for s in settings]
        return cells

    def config(self, cell: Cell, overrides: list[str]) -> Config:
        """base, then the dataset's own sections, then what the cell itself decides."""
        entry = self.datasets[cell.dataset]
        sections = {key: value for key, value in entry.items() if key in SECTIONS}
        bad = next((key for key, value in sections.items() if not isinstance(value, dict)), None)
        if bad is not None:
            raise UserError(f"benchmark dataset '{cell.dataset}': '{bad}' must hold config keys, e.g. {bad}: {{...}}")
        data = {**sections.pop("data", {}), **{k: v for k, v in entry.items() if k not in SECTIONS}, "seed": cell.seed}
        if cell.dataset in CATALOG:
            data.setdefault("dataset", cell.dataset)
        raw = {**self.base}
        for section, values in sections.items():
            raw[section] = {**self.base.get(section, {}), **values}
        raw["data"] = {**self.base.get("data", {}), **data}
        raw["runtime"] = {**raw.get("runtime", {}), "seed": cell.seed}
        raw["classifier"] = {**raw.get("classifier", {}), "train_on": cell.setting or (
            "none" if cell.method == "zero-shot" else "real")}
        if cell.method in GENERATOR_METHODS:
            raw["adapt"] = {**raw.get("adapt", {}), "mode": GENERATOR_METHODS[cell.method]}
        return config_from_raw(raw, f"benchmark {cell.dataset}/{cell.row}", self.base_dir, overrides)


def read_benchmark(path: Path) -> Benchmark:
    raw = read_yaml(path)
    unknown = sorted(set(raw) - BENCH_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'; known: {', '.join(sorted(BENCH_KEYS))}")
    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict) or not datasets or not all(isinstance(v, dict) for v in datasets.values()):
        raise UserError(f"{path}: 'datasets' must map each dataset name to its data.* settings, e.g."
                        " eurosat: {root: DIR, split_file: FILE}")
    bad_name = next((name for name in datasets if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name))), None)
    if bad_name is not None:
        raise UserError(f"{path}: dataset name '{bad_name}' becomes a folder name; use letters, digits, '_', '-', '.'")
    methods = raw.get("methods") or list(METHODS)
    settings = raw.get("settings") or list(SETTINGS)
    for value, known, key in ((methods, METHODS, "methods"), (settings, SETTINGS, "settings")):
        if not isinstance(value, list):
            raise UserError(f"{path}: {key} must be a list, e.g. [{known[0]}]")
        bad = next((v for v in value if v not in known), None)
        if bad is not None:
            raise UserError(f"{path}: {key} entry '{bad}' is not one of {', '.join(known)}")
    seeds = raw.get("seeds") or [0]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise UserError(f"{path}: seeds must be a list of non-negative integers, e.g. [0, 1, 2]")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise UserError(f"{path}: 'base' must hold config sections, e.g. classifier: {{epochs: 60}}")
    return Benchmark({str(k): v for k, v in datasets.items()}, list(methods), list(settings), list(seeds), base,
                     path.resolve().parent)


def run_benchmark(path: Path, out: Path, overrides: list[str] = ()) -> Path:
    from datadream.layout import STORE_FOLDER, RunLayout
    from datadream.markers import read_marker
    from datadream.report import write_report
    from datadream.registry import get_runner
    from datadream.runs import init_run

    bench = read_benchmark(path)
    seeded = next((o for o in overrides if o.split("=", 1)[0].strip() in ("data.seed", "runtime.seed")), None)
    if seeded is not None:
        raise UserError(f"--set {seeded}: a benchmark sets the seeds of its runs from 'seeds' in {path}")
    out = out.resolve()
    cells = bench.cells()
    configs = {cell: bench.config(cell, list(overrides)) for cell in cells}  # all validated up front
    for config in configs.values():
        config.runtime.store = config.runtime.store or str(out / STORE_FOLDER)  # one store for every cell
    folders = {cell: out / cell.dataset / f"seed{cell.seed}" / cell.folder for cell in cells}
    runtime = one_runtime(path, configs)
    roots = [init_run(configs[cell], folders[cell]).layout.root for cell in cells]  # every cell checked first
    get_runner(runtime.runner)(roots, runtime)
    for root in roots:
        write_report(root)
    results = [(cell, read_marker(RunLayout(folders[cell]).metrics), folders[cell]) for cell in cells]
    tables = write_tables(bench, out, results)
    from datadream.compare import compare

    compare([folders[c] for c in cells], out / "compare", title=f"datadream benchmark {path.name}: every run")
    return tables


def one_runtime(path: Path, configs: dict[Cell, Config]) -> RuntimeConfig:
    """The runtime section the runner of every cell is chosen and set up by: one runner does the
    whole table, so that it can share work between cells and keep every GPU busy across them."""
    runners = {config.runtime.runner: cell for cell, config in configs.items()}
    if len(runners) > 1:
        named = ", ".join(f"{name} ({cell.dataset})" for name, cell in runners.items())
        raise UserError(f"{path}: the runs of a benchmark need one runtime.runner; its datasets name {named}:"
                        " set runtime.runner in 'base' (or --runner) only")
    return next(iter(configs.values())).runtime


def published_rows() -> tuple[str, dict[str, dict[str, float]], dict]:
    raw = json.loads(resources.files("datadream").joinpath("resources/published.json").read_text(encoding="utf-8"))
    return raw["source"], raw["rows"], raw.get("protocol_differs", {})


def write_tables(bench: Benchmark, out: Path, results: list[tuple[Cell, dict | None, Path]]) -> Path:
    datasets = list(bench.datasets)
    scores: dict[str, dict[str, list[float]]] = {}
    for cell, metrics, _ in results:
        if metrics and metrics.get("top1") is not None:
            scores.setdefault(cell.row, {}).setdefault(cell.dataset, []).append(metrics["top1"])
    rows = list(dict.fromkeys(cell.row for cell, _, _ in results))
    source, published, differs = published_rows()
    marked = {(row, d) for row in differs.get("rows", []) for d in differs.get("datasets", [])}

    def stats(values: list[float]) -> tuple[float, float | None]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    table = []
    for row in rows:
        per = {d: stats(scores[row][d]) for d in datasets if scores.get(row, {}).get(d)}
        average = statistics.fmean(m for m, _ in per.values()) if len(per) == len(datasets) else None
        table.append(("ours", row, per, average))
    for row, values in published.items():
        per = {d: (values[d], None) for d in datasets if d in values}
        if per:
            average = values.get("average") if set(datasets) == set(CATALOG) else (
                statistics.fmean(m for m, _ in per.values()) if len(per) == len(datasets) else None)
            table.append(("published", row, per, average))

    def cell_text(value: tuple[float, float | None] | None, mark: bool = False) -> str:
        if value is None:
            return "–"
        mean, std = value
        return (f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}") + (" †" if mark else "")

    header = ["source", "method / setting", *datasets, "average"]
    lines = [f"# Benchmark results (top-1 %, {len(bench.seeds)} seed(s): {', '.join(map(str, bench.seeds))})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for origin, row, per, average in table:
        cells = [cell_text(per.get(d), origin == "published" and (row, d) in marked) for d in datasets]
        lines.append(f"| {origin} | {row} | " + " | ".join(cells) + f" | {'–' if average is None else f'{average:.1f}'} |")
    lines += ["", f"Published: {source}. The average over the datasets shown is computed from the per-dataset",
              "means; the published average is shown only when all ten datasets are in the table.",
              *([f"† {differs['note']}."] if any((row, d) in marked for row in published for d in datasets) else []),
              "Numbers from tiny random-weight models say nothing about model quality."]
    atomic.write_text(out / "results.md", "\n".join(lines) + "\n")

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "method_setting", *[c for d in datasets for c in (d, f"{d}_std")], "average"])
    for origin, row, per, average in table:
        values = []
        for d in datasets:
            mean, std = per.get(d, (None, None))
            values += ["" if mean is None else round(mean, 4), "" if std is None else round(std, 4)]
        writer.writerow([origin, row, *values, "" if average is None else round(average, 4)])
    atomic.write_text(out / "results.csv", buffer.getvalue())

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "seed", "method", "setting", "top1", "top5", "n", "run"])
    for cell, metrics, folder in results:
        m = metrics or {}
        writer.writerow([cell.dataset, cell.seed, cell.method, cell.setting or "", m.get("top1", ""),
                         m.get("top5", ""), m.get("n", ""), folder])
    atomic.write_text(out / "runs.csv", buffer.getvalue())
    return out / "results.md"
