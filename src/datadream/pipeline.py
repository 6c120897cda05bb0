"""`datadream run`: every stage in order, each skipping what is already complete."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datadream.config import Config

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
    from datadream.components.models import check_models_reachable
    from datadream.data.sources import load_view
    from datadream.report import write_report
    from datadream.stages.adapt import adapt
    from datadream.stages.evaluate import evaluate
    from datadream.stages.run import init_run
    from datadream.stages.synthesize import synthesize
    from datadream.stages.train import train

    run = init_run(config, root)
    root = run.layout.root
    adapters, index = [], None
    needs_generator = config.classifier.train_on in ("synthetic", "synthetic+real")
    check_models_reachable(config.generator.model if needs_generator else None, config.classifier.model,
                           config.generator.config)
    if needs_generator:
        adapters = adapt(root)
        index = synthesize(root)
    else:
        log.info("run: classifier.train_on=%s needs no synthetic images; adapt and synthesize skipped",
                 config.classifier.train_on)
    classifier = train(root)
    metrics = evaluate(root) if load_view(config.data, splits=("test",)).split("test") else None
    return Summary(root, config.classifier.train_on, len(adapters), index, classifier, metrics, write_report(root))


def print_summary(summary: Summary) -> None:
    print(f"run:          {summary.run}")
    if summary.synthetic_index:
        print(f"adapters:     {summary.adapters} in {summary.run / 'adapters'}")
        print(f"synthetic:    {summary.synthetic_index}")
    print(f"classifier:   {summary.classifier} (trained on: {summary.train_on})")
    if summary.metrics:
        m = summary.metrics
        print(f"test top-1:   {m['top1']:.2f}%  (top-5 {m['top5']:.2f}%, {m['n']} images)")
    else:
        print("test top-1:   not evaluated (the dataset has no test split)")
    print(f"report:       {summary.report}")
