"""Refuse to evaluate on images the classifier may have seen: a test image whose content equals
a training image or a few-shot image (an exact copy under another name or split)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from datadream.data.fewshot import FewShotManifest
from datadream.data.images import sha256_file
from datadream.data.sources import DatasetView
from datadream.errors import UserError


def find_leaks(view: DatasetView, manifest: FewShotManifest) -> list[tuple[Path, Path]]:
    """(test file, training or few-shot file with identical content) pairs, the same file listed
    in both splits included. Files are compared by
    size first, so only the few whose sizes collide are hashed: cheap even for ImageNet."""
    train = [item.path for item in view.split("train")] + [manifest.image_path(s) for c in manifest.classes
                                                            for s in c.images]
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in set(train):
        by_size[_size(path)].append(path)
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in hashes:
            hashes[path] = sha256_file(path)
        return hashes[path]

    leaks = []
    for item in view.split("test"):
        for other in by_size.get(_size(item.path), ()):
            if other == item.path or digest(other) == digest(item.path):
                leaks.append((item.path, other))
                break
    return leaks


def check_no_leaks(view: DatasetView, manifest: FewShotManifest) -> None:
    leaks = find_leaks(view, manifest)
    if leaks:
        test, other = leaks[0]
        raise UserError(f"{len(leaks)} test image(s) also appear in the training data, e.g. {test} has the"
                        f" same content as {other}; remove the duplicates from one side")


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # a missing file leaks nothing; it is reported where it is read
