"""Refuse to evaluate on images the classifier may have been trained on.

What is trained on is the few-shot set and the synthetic set. The few-shot draw passes over any
training image that is also a test or validation image (same path or same content) and records it
(`build_manifest`); `init` then checks the drawn shots once more, and `train` refuses when a test or validation image has the
same content as a synthetic image. Both checks are cheap at any scale: only the evaluation files
whose size equals a training file's size are hashed. Duplicates between the evaluation splits and
the rest of the training split (never trained on) are reported by `datadream datasets check`,
which reads everything.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from datadream.config import DataConfig
from datadream.data.fewshot import FewShotManifest
from datadream.data.images import sha256_file
from datadream.data.samples import Sample
from datadream.data.sources import DatasetView, load_view
from datadream.errors import UserError

EVALUATION = ("val", "test")


def find_leaks(view: DatasetView, manifest: FewShotManifest) -> list[tuple[Path, Path]]:
    """(evaluation file, few-shot file) pairs: a shot listed in an evaluation split too, or a
    shot's content under another name. The draw avoids both (`build_manifest`), so at `init`
    this is a safety net; for a manifest from elsewhere it is the check."""
    leaks = []
    shot_paths = {os.path.normpath(manifest.image_path(shot)) for cls in manifest.classes for shot in cls.images}
    shots: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for cls in manifest.classes:
        for shot in cls.images:
            shots[_size(manifest.image_path(shot))].append((shot.sha256, manifest.image_path(shot)))
    for split in EVALUATION:
        for item in view.split(split):
            if os.path.normpath(item.path) in shot_paths:
                leaks.append((item.path, item.path))
                continue
            size = _size(item.path)
            candidates = shots.get(size) if size >= 0 else None
            if candidates:
                digest = sha256_file(item.path)
                match = next((path for sha, path in candidates if sha == digest), None)
                if match is not None:
                    leaks.append((item.path, match))
    return leaks


def check_no_leaks(view: DatasetView, manifest: FewShotManifest) -> None:
    leaks = find_leaks(view, manifest)
    if leaks:
        evaluation, training = leaks[0]
        what = "is also a few-shot image" if evaluation == training else f"has the same content as the few-shot image {training}"
        raise UserError(f"{len(leaks)} evaluation image(s) leak from training, e.g. {evaluation} {what}; remove"
                        " the duplicates from one side")


def check_synthetic_not_in_evaluation(data: DataConfig, synthetic: list[Sample]) -> None:
    """A test or validation image with the content of a synthetic image (copied there, or a
    synthetic folder given as an evaluation split) would be trained on: refuse it."""
    known: dict[int, dict[str, str]] = defaultdict(dict)
    for sample in synthetic:
        size = _size(Path(sample.path))
        if size >= 0 and sample.sha256:
            known[size][sample.sha256] = sample.path
    view = load_view(data, splits=EVALUATION)
    for split in EVALUATION:
        for item in view.split(split):
            candidates = known.get(_size(item.path))
            if candidates:
                match = candidates.get(sha256_file(item.path))
                if match is not None:
                    raise UserError(f"{split} image {item.path} has the same content as the synthetic image {match};"
                                    " an image the classifier trains on cannot be evaluated on: remove it from"
                                    f" the {split} split")


def content_duplicates(view: DatasetView) -> list[tuple[Path, Path]]:
    """(evaluation file, training file) pairs with identical content, over the whole training
    split: the thorough check of `datadream datasets check`. Size-bucketed, so only files whose
    sizes collide are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for item in view.split("train"):
        by_size[_size(item.path)].append(item.path)
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in hashes:
            hashes[path] = sha256_file(path)
        return hashes[path]

    found = []
    for split in EVALUATION:
        for item in view.split(split):
            size = _size(item.path)
            if size < 0:
                continue
            match = next((p for p in by_size.get(size, ()) if digest(p) == digest(item.path)), None)
            if match is not None:
                found.append((item.path, match))
    return found


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # a missing file leaks nothing; it is reported where it is read
