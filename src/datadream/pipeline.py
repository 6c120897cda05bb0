"""`datadream run`: every stage in order, each skipping what is already complete."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from datadream.config import Config
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


def run_all(config: Config, root: Path) -> Summary:
    from datadream.data.sources import load_view
    from datadream.report import write_report
    from datadream.stages.adapt import adapt
    from datadream.stages.evaluate import evaluate
    from datadream.stages.run import init_run
    from datadream.stages.synthesize import synthesize
    from datadream.stages.train import train

    started = time.monotonic()
    run = init_run(config, root)  # checks that the models can be loaded before anything is written
    root = run.layout.root
    adapters, index = [], None
    if config.classifier.train_on in ("synthetic", "synthetic+real"):
        adapters = _timed("adapt", adapt, root)
        index = _timed("synthesize", synthesize, root)
    else:
        log.info("run: classifier.train_on=%s needs no synthetic images; adapt and synthesize skipped",
                 config.classifier.train_on)
    classifier = _timed("train", train, root)
    has_test = load_view(config.data, splits=("test",)).split("test")
    metrics = _timed("evaluate", evaluate, root) if has_test else None
    report = write_report(root)
    log.info("run: wall time %s", format_duration(time.monotonic() - started))
    return Summary(root, config.classifier.train_on, len(adapters), index, classifier, metrics, report)


def _timed(stage: str, function, root: Path):
    """Each stage's wall time in the log: what a batch job's budget is planned from."""
    started = time.monotonic()
    result = function(root)
    log.info("%s: wall time %s", stage, format_duration(time.monotonic() - started))
    return result


def print_summary(summary: Summary) -> None:
    print(f"run:          {summary.run}")
    if summary.synthetic_index:
        print(f"adapters:     {summary.adapters} in {summary.run / 'adapters'}")
        print(f"synthetic:    {summary.synthetic_index}")
    print(f"classifier:   {summary.classifier} (trained on: {summary.train_on})")
    if summary.metrics:
        m = summary.metrics
        top5 = "" if m.get("top5") is None else f"top-5 {m['top5']:.2f}%, "
        print(f"test top-1:   {m['top1']:.2f}%  ({top5}{m['n']} images)")
    else:
        print("test top-1:   not evaluated (the dataset has no test split)")
    print(f"report:       {summary.report}")
