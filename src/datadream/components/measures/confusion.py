"""The confusion matrix, with classes that are confused with each other side by side, drawn as
an image: what the report shows, as readable for 1,000 classes as for 10.

Rows are true classes, columns predicted ones, each row divided by the class's test images (a
share, so that classes with many test images do not dominate). The order comes from average-linkage
agglomerative clustering on how much two classes take each other's images, (share a->b + share
b->a) / 2: the leaves of the tree, read left to right, are the order, and the clusters that are
still separate when the link falls below GROUP_LINK are the groups the report lists.

Written with numpy because scipy (linkage, optimal leaf ordering) is not a dependency. The
merge loop keeps every cluster's most similar neighbour, so a merge costs O(classes) plus one row
per cluster whose neighbour it took: 1,000 classes cluster in a fraction of a second.

Torch-free: the report is written where no GPU stack is installed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Classes form a group while, on average over the group's pairs, each takes at least 2% of the
# other's test images: strong enough that scattered single mistakes among 1,000 classes (each
# worth about 1% with 50 test images a class) do not chain everything into one group.
GROUP_LINK = 0.02

# Sequential ramp from pale yellow through orange and red to dark purple: lightness falls
# steadily, so darker always means more, in colour and in greyscale prints. A cell nobody was
# predicted as stays white, so that any mistake at all is visible.
RAMP = ((255, 237, 160), (254, 178, 76), (240, 59, 32), (150, 0, 60), (40, 0, 60))
EMPTY = (255, 255, 255)
MARKS = ((31, 119, 180), (120, 180, 230))  # blues, which no ramp colour is close to


def confusion_counts(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[t, p]: test images of class t predicted as p."""
    cells = np.asarray(true, dtype=np.int64) * classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(cells, minlength=classes * classes).reshape(classes, classes)


def row_shares(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its class's test images (a class without any keeps a row of zeros)."""
    support = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(support, 1)


@dataclass
class Seriation:
    order: list[int]  # labels in the heatmap's row (and column) order
    groups: list[list[int]]  # labels of each group, in heatmap order; most mistakes within first


def seriate(counts: np.ndarray, link: float = GROUP_LINK) -> Seriation:
    n = len(counts)
    shares = row_shares(counts)
    similar = (shares + shares.T) / 2
    linkage = similar.copy()
    np.fill_diagonal(linkage, -np.inf)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    members: list[list[int]] = [[i] for i in range(n)]
    best = linkage.max(axis=1) if n > 1 else np.full(n, -np.inf)
    nearest = linkage.argmax(axis=1) if n > 1 else np.zeros(n, dtype=np.int64)
    groups: list[list[int]] | None = None
    while n:
        first = int(best.argmax())
        level = best[first]
        if groups is None and not level >= link:  # average linkage never rises: the groups are final
            groups = [m for k, m in enumerate(members) if alive[k] and len(m) > 1]
        if not level > 0:  # what is left never confuses one cluster with another
            break
        a, b = sorted((first, int(nearest[first])))
        # Lance-Williams update for average linkage; dead rows and columns stay -inf.
        row = (size[a] * linkage[a] + size[b] * linkage[b]) / (size[a] + size[b])
        linkage[a], linkage[:, a] = row, row
        linkage[b], linkage[:, b] = -np.inf, -np.inf
        linkage[a, a] = -np.inf
        members[a], members[b] = _join(members[a], members[b], similar), []
        size[a] += size[b]
        alive[b], best[b] = False, -np.inf
        stale = np.flatnonzero(alive & ((nearest == a) | (nearest == b)))
        stale = np.union1d(stale, [a])
        best[stale], nearest[stale] = linkage[stale].max(axis=1), linkage[stale].argmax(axis=1)
        closer = alive & (linkage[:, a] > best)
        best[closer], nearest[closer] = linkage[closer, a], a
    clusters = sorted((m for k, m in enumerate(members) if n and alive[k]), key=lambda m: (-_mass(counts, m), min(m)))
    order = [label for cluster in clusters for label in cluster]
    position = {label: i for i, label in enumerate(order)}
    groups = sorted(([sorted(g, key=position.__getitem__) for g in groups or []]),
                    key=lambda g: (-_mass(counts, g), position[g[0]]))
    return Seriation(order, [g for g in groups if _mass(counts, g) > 0])


def _join(left: list[int], right: list[int], similar: np.ndarray) -> list[int]:
    """The two leaf lists end to end, each turned so that the two most similar ends meet."""
    options = [(left, right), (left, right[::-1]), (left[::-1], right), (left[::-1], right[::-1])]
    first, second = max(options, key=lambda o: similar[o[0][-1], o[1][0]])
    return first + second


def _mass(counts: np.ndarray, labels: list[int]) -> int:
    """Test images of these classes taken for another of them."""
    block = counts[np.ix_(labels, labels)]
    return int(block.sum() - np.trace(block))


def mistakes_within(counts: np.ndarray, labels: list[int]) -> tuple[int, int, int]:
    """(images taken for another class of the group, all mistakes of the group's classes, their
    test images)."""
    rows = counts[labels]
    images = int(rows.sum())
    return _mass(counts, labels), images - int(rows[:, labels].diagonal().sum()), images


def colours(shares: np.ndarray) -> np.ndarray:
    """RGB (uint8) of each share in [0, 1]: the ramp on a square-root scale, which spreads the
    small shares (mistakes) that a linear scale would paint all alike next to a 90% diagonal."""
    position = np.sqrt(np.clip(shares, 0, 1)) * (len(RAMP) - 1)
    stops = np.arange(len(RAMP))
    rgb = np.stack([np.interp(position, stops, [c[k] for c in RAMP]) for k in range(3)], axis=-1)
    rgb[shares <= 0] = EMPTY
    return np.rint(rgb).astype(np.uint8)


def hex_colours(shares: np.ndarray) -> list[str]:
    """`colours` as CSS colours, in the order of `shares` flattened."""
    return ["#%02x%02x%02x" % tuple(rgb) for rgb in colours(shares).reshape(-1, 3)]


MARGIN = 6  # pixels left of and above the matrix, where the groups are marked


def heatmap_png(shares: np.ndarray, cell: int, spans: list[tuple[int, int]] = ()) -> bytes:
    """The (already ordered) share matrix as a PNG, `cell` x `cell` pixels a class, each group's
    rows [start, stop) marked by a bar beside and above the matrix: a box drawn on the matrix
    would hide the very cells of a small group at one pixel a class."""
    n = len(shares)
    image = Image.new("RGB", (MARGIN + n * cell,) * 2, EMPTY)
    image.paste(Image.fromarray(colours(shares), "RGB").resize((n * cell, n * cell), Image.NEAREST), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(image)
    for k, (start, stop) in enumerate(spans):
        colour = MARKS[k % len(MARKS)]  # alternating, so that two groups side by side stay two
        low, high = MARGIN + start * cell, MARGIN + stop * cell - 1
        draw.rectangle((0, low, MARGIN - 3, high), fill=colour)
        draw.rectangle((low, 0, high, MARGIN - 3), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
