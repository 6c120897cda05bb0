"""The toy world drawn by code: one simple shape per class, with random sizes, positions and
backgrounds, and random colours or a given hue. Shared by the toy dataset (data/toy.py) and the
toy generator's pretraining (toy_pretrain.py), so both draw the same world. For the demo and
tests only."""

from __future__ import annotations

import colorsys
import random

from PIL import Image, ImageDraw

TOY_CLASSES = ("circle", "square", "triangle", "stripes")
# The hue of each toy class in a `distinct` dataset: red, green, magenta, yellow. Not blue or cyan,
# which the demo's pretrained toy generator draws most without adaptation: a class it already
# draws could not show what adaptation changes.
TOY_HUES = {"circle": 0.0, "square": 0.33, "triangle": 0.83, "stripes": 0.15}


def draw_shape(kind: str, size: int, rng: random.Random, hue: float | None = None) -> Image.Image:
    """One toy image; with `hue`, a bright shape of about that hue on a dark, greyish background."""
    if hue is None:
        background = tuple(rng.randrange(0, 256) for _ in range(3))
        colour = tuple((c + 128 + rng.randrange(-40, 40)) % 256 for c in background)
    else:
        background = _rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.05, 0.35))
        colour = _rgb((hue + rng.uniform(-0.03, 0.03)) % 1, rng.uniform(0.75, 1), rng.uniform(0.75, 1))
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


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))
