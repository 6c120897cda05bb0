"""A toy image-classification dataset drawn by code (no download): the toy world's shapes
(components/testmodels/toy_world.py) written as a folder per class, with random colours or, with
`distinct=True`, a hue of the class's own, so that the classes differ in colour as well as shape.
For the demo and tests only."""

from __future__ import annotations

import random
from pathlib import Path

from datadream.components.testmodels.toy_world import TOY_CLASSES, TOY_HUES, draw_shape


def write_toy_dataset(root: Path, per_class: dict[str, int], size: int = 48, seed: int = 0,
                      classes: tuple[str, ...] = TOY_CLASSES, distinct: bool = False) -> Path:
    """Write root/<split>/<class>/<i>.png for each split in `per_class` (e.g. {"train": 8,
    "test": 8}); deterministic for a given seed. A class named after a toy shape draws that
    shape; any other name draws the shapes in turn (for datasets of many classes). `distinct`
    gives each toy shape its own hue (TOY_HUES)."""
    for split, count in per_class.items():
        rng = random.Random(f"{seed}/{split}")
        for position, name in enumerate(classes):
            kind = name if name in TOY_CLASSES else TOY_CLASSES[position % len(TOY_CLASSES)]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                hue = TOY_HUES[kind] if distinct else None
                draw_shape(kind, size, rng, hue).save(folder / f"{index:03d}.png")
    return root
