"""`datadream run`: every stage in order, each skipping what is already complete."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from datadream.config import Config
from datadream.layout import RunLayout
from datadream.progress import format_duration

log = logging.getLogger(__name__)


@dataclass
class Summary:
    run: Path
    train_on: str
    adapters: int
    synthetic_index: Path | None
    classifier: Path
    metrics: dict | None
    report: Path
    until: str = "evaluate"  # the last stage done (runtime.until)


def run_all(config: Config, root: Path) -> Summary:
    """Initialise RUN (or accept it unchanged), do every unit that is not complete with the
    configured runner, and write the report."""
    from datadream.markers import read_marker
    from datadream.report import write_report
    from datadream.registry import get_runner
    from datadream.runs import init_run
    from datadream.units import adapter_specs, needs_generator

    started = time.monotonic()
    run = init_run(config, root)  # checks that the models can be loaded before anything is written
    root = run.layout.root
    if not needs_generator(run):
        log.info("run: classifier.train_on=%s needs no synthetic images; adapt and synthesize skipped",
                 config.classifier.train_on)
    get_runner(config.runtime.runner)([root], config.runtime)
    report = write_report(root)
    log.info("run: wall time %s", format_duration(time.monotonic() - started))
    index = run.layout.synthetic_index if needs_generator(run) and config.runtime.until != "adapt" else None
    return Summary(root, config.classifier.train_on, len(adapter_specs(run)), index, run.layout.classifier,
                   read_marker(run.layout.metrics), report, config.runtime.until)


def print_summary(summary: Summary) -> None:
    print(f"run:          {summary.run}")
    if summary.synthetic_index or summary.until == "adapt":
        print(f"adapters:     {summary.adapters} in {RunLayout(summary.run).adapters}")
    if summary.synthetic_index:
        print(f"synthetic:    {summary.synthetic_index}")
    if summary.until != "evaluate":
        if summary.synthetic_index:
            print(f"export:       datadream export {summary.run} OUT --what dataset   (an image folder with class names)")
        print(f"stopped after {summary.until} (--until); the same `datadream run` without --until continues with"
              " the classifier, reusing everything above")
        print(f"report:       {summary.report}")
        return
    print(f"classifier:   {summary.classifier} (trained on: {summary.train_on})")
    if summary.metrics:
        m = summary.metrics
        top5 = "" if m.get("top5") is None else f"top-5 {m['top5']:.2f}%, "
        print(f"test top-1:   {m['top1']:.2f}%  ({top5}{m['n']} images)")
    else:
        print("test top-1:   not evaluated: the dataset has no test split (set data.test to measure the classifier)")
    print(f"report:       {summary.report}")
