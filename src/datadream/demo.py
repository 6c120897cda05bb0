"""`datadream demo DIR`: the whole pipeline offline, on tiny random-weight models and a toy
dataset drawn by code. It shows that everything runs and what a run folder holds; the images it
generates are noise, and nothing it measures says anything about model quality."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from datadream.components.tiny import TINY_RESOLUTION, build_tiny_models

DEMO_NOTE = (
    "NOTE: the demo uses tiny RANDOM-WEIGHT models; its images are noise and its numbers say"
    " nothing about model quality. Use a real checkpoint (the default generator.model) for that."
)


def demo_config(models: dict[str, Path], data: Path) -> dict:
    return {
        "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"), "shots": 4},
        "generator": {"model": str(models["sd"])},
        "adapt": {"epochs": 25, "batch_size": 4, "warmup_steps": 5, "resolution": TINY_RESOLUTION},
        "synthesize": {"images_per_class": 8, "steps": 20, "batch_size": 8, "resolution": TINY_RESOLUTION},
        # A random tiny CLIP needs a larger step than the published 1e-4 to move visibly in a
        # few epochs; the demo shows the pipeline working, not the published recipe.
        "classifier": {"model": str(models["clip"]), "epochs": 8, "warmup": 0.125, "batch_size": 16,
                       "lr": 3e-3, "workers": 0},
        "runtime": {"device": "cpu"},
    }


def run_demo(folder: Path) -> int:
    from datadream.config import load_config
    from datadream.data.toy import write_toy_dataset
    from datadream.pipeline import print_summary, run_all

    started = time.time()
    folder = folder.resolve()
    print(DEMO_NOTE)
    models = build_tiny_models(folder / "models")
    data = folder / "data"
    if not (data / "train").is_dir():
        write_toy_dataset(data, {"train": 8, "val": 4, "test": 8})
    config_path = folder / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(models, data), sort_keys=False))
    summary = run_all(load_config(config_path), folder / "run")
    print(f"\nconfig:       {config_path}")
    print_summary(summary)
    print(f"done in {time.time() - started:.0f}s. {DEMO_NOTE}")
    return 0
