"""A toy image-classification dataset drawn by code (no download): one simple shape per class,
with random colours, sizes, positions and backgrounds. For the demo and tests only."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

TOY_CLASSES = ("circle", "square", "triangle", "stripes")


def draw_shape(kind: str, size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randrange(0, 256) for _ in range(3))
    colour = tuple((c + 128 + rng.randrange(-40, 40)) % 256 for c in background)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.35, 0.8) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent / 2, y0)], fill=colour)
    elif kind == "stripes":
        step = max(2, int(rng.uniform(0.05, 0.15) * size))
        for x in range(0, size, 2 * step):
            draw.rectangle((x, 0, x + step - 1, size), fill=colour)
    else:
        raise ValueError(f"unknown toy class {kind!r}")
    return image


def write_toy_dataset(root: Path, per_class: dict[str, int], size: int = 48, seed: int = 0,
                      classes: tuple[str, ...] = TOY_CLASSES) -> Path:
    """Write root/<split>/<class>/<i>.png for each split in `per_class` (e.g. {"train": 8,
    "test": 8}); deterministic for a given seed. A class named after a toy shape draws that
    shape; any other name draws the shapes in turn (for datasets of many classes)."""
    for split, count in per_class.items():
        rng = random.Random(f"{seed}/{split}")
        for position, name in enumerate(classes):
            kind = name if name in TOY_CLASSES else TOY_CLASSES[position % len(TOY_CLASSES)]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw_shape(kind, size, rng).save(folder / f"{index:03d}.png")
    return root
