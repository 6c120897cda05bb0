"""`datadream demo DIR`: the whole pipeline offline, on tiny models and a toy dataset drawn by code.

Two runs on four toy classes that differ in shape and colour, both training the classifier on
synthetic images only: `run` adapts the generator to each class's 4 shots, `run-unadapted` uses the
generator as it is (adapt.mode=none). The generator is tiny and was pretrained in code on toy images
whose captions never name a shape (components/testmodels/toy_pretrain.py), so whatever tells a class apart in
the synthetic images was learned from the shots. The summary says whether adaptation moved the
synthetic images toward held-out real images of their class, and what a classifier trained on them
alone scores on real test images, against chance and against the un-adapted generator. The CLIP
classifier is a tiny random-weight model. Nothing here says how well a real checkpoint does on
real photographs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from datadream.components.testmodels.tiny import TINY_RESOLUTION

DEMO_NOTE = (
    "NOTE: the demo uses tiny models built in code (a generator pretrained for a few CPU minutes on toy"
    " shapes, a random-weight CLIP): it shows that adaptation and training learn, not how good a real"
    " checkpoint is on real photographs."
)
SHOTS = 4
SPLITS = {"train": 8, "val": 8, "test": 16}


def demo_config(generator: Path, clip: Path, data: Path, adapt_mode: str = "class") -> dict:
    return {
        "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test"),
                 "shots": SHOTS},
        "generator": {"model": str(generator)},
        # The published lr (1e-4) barely moves a tiny generator in a demo's 100 steps.
        "adapt": {"mode": adapt_mode, "epochs": 100, "batch_size": 4, "lr": 5e-3, "warmup_steps": 5,
                  "resolution": TINY_RESOLUTION},
        "synthesize": {"images_per_class": 16, "steps": 20, "batch_size": 16, "resolution": TINY_RESOLUTION},
        # Synthetic images only, so that the test score measures what the synthetic set taught. A
        # random tiny CLIP needs a larger step than the published 1e-4 to move in a few epochs.
        "classifier": {"model": str(clip), "train_on": "synthetic", "epochs": 8, "warmup": 0.125,
                       "batch_size": 16, "lr": 3e-3, "workers": 0},
        "runtime": {"device": "cpu"},
    }


def run_demo(folder: Path) -> int:
    from datadream.compare import compare
    from datadream.components.testmodels.tiny import build_tiny_clip
    from datadream.components.testmodels.toy_pretrain import toy_generator
    from datadream.config import load_config
    from datadream.data.toy import write_toy_dataset
    from datadream.pipeline import print_summary, run_all

    started = time.time()
    folder = folder.resolve()
    print(DEMO_NOTE, flush=True)
    generator = toy_generator()
    clip = folder / "models" / "clip"
    if not (clip / "config.json").is_file():
        build_tiny_clip(clip)
    data = folder / "data"
    if not (data / "train").is_dir():
        write_toy_dataset(data, SPLITS, distinct=True)
    summaries = {}
    for name, mode in (("run", "class"), ("run-unadapted", "none")):
        config_path = folder / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(demo_config(generator, clip, data, mode), sort_keys=False))
        summaries[name] = run_all(load_config(config_path), folder / name)
    page = compare([folder / "run", folder / "run-unadapted"], folder / "compare",
                   title="datadream demo: adapted vs un-adapted generator")
    print()
    print_summary(summaries["run"])
    print(f"compared:     {page}")
    for line in learning_summary(folder / "run", folder / "run-unadapted"):
        print(line)
    print(f"done in {time.time() - started:.0f}s. {DEMO_NOTE}")
    return 0


def learning_evidence(adapted: Path, unadapted: Path) -> dict:
    """What the two demo runs show: per class, the Fréchet distance of the synthetic images to
    held-out real images of the class with and without adaptation, and each classifier's test top-1."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8"))

    distances = {}
    for run, key in ((adapted, "adapted"), (unadapted, "unadapted")):
        for name, figures in read(run / "inspect.json")["against_heldout"]["classes"].items():
            distances.setdefault(name, {})[key] = figures["fd"]
    metrics = {key: read(run / "classifier" / "metrics.json") for run, key in
               ((adapted, "adapted"), (unadapted, "unadapted"))}
    return {"fd_to_heldout": distances, "top1": {k: m["top1"] for k, m in metrics.items()},
            "chance": 100 / len(distances)}


def learning_summary(adapted: Path, unadapted: Path) -> list[str]:
    evidence = learning_evidence(adapted, unadapted)
    distances = evidence["fd_to_heldout"]
    closer = [name for name, d in distances.items() if d["adapted"] < d["unadapted"]]
    pairs = ", ".join(f"{name} {d['adapted']:.3g} vs {d['unadapted']:.3g}" for name, d in distances.items())
    top1 = evidence["top1"]
    return [
        f"learning:     adaptation to {SHOTS} shots moved the synthetic images toward held-out real images of"
        f" their class in {len(closer)} of {len(distances)} classes (Fréchet distance in CLIP space, adapted vs"
        f" un-adapted: {pairs})",
        f"              a classifier trained on synthetic images only: {top1['adapted']:.1f}% top-1 on real test"
        f" images (un-adapted generator: {top1['unadapted']:.1f}%; chance: {evidence['chance']:.0f}%)",
    ]
