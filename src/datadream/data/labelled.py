"""Labelled image lists for the classifier, each sample carrying its origin explicitly, and the
torch datasets that decode them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from datadream.components.augment import center_crop, random_resized_crop, to_uint8_tensor
from datadream.components.seeds import derive_seed
from datadream.data.fewshot import FewShotManifest
from datadream.data.images import list_images, load_rgb
from datadream.errors import UserError

REAL, SYNTHETIC = "real", "synthetic"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    origin: str  # REAL or SYNTHETIC: never inferred from the path


def real_shots(manifest: FewShotManifest, repeats: int = 1) -> list[Sample]:
    """The manifest's shots (hashes checked), each repeated `repeats` times."""
    shots = [Sample(str(manifest.verified_path(s)), c.label, REAL) for c in manifest.classes for s in c.images]
    return [sample for sample in shots for _ in range(repeats)]


def synthetic_images(index: Path) -> list[Sample]:
    rows = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line]
    samples = [Sample(str(index.parent / row["file"]), row["label"], SYNTHETIC) for row in rows]
    missing = next((s.path for s in samples if not Path(s.path).is_file()), None)
    if missing:
        raise UserError(f"synthetic image listed in {index} is missing: {missing}; run `datadream synthesize RUN`")
    return samples


def folder_split(root: Path, manifest: FewShotManifest, key: str) -> list[Sample]:
    """An evaluation split laid out like the training folder (ROOT/<class folder>/<images>).
    A class without a folder simply has no images; a folder that is no class is an error."""
    if not root.is_dir():
        raise UserError(f"{key}: folder not found: {root}")
    by_folder = {c.folder: c.label for c in manifest.classes}
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in by_folder)
    if unknown:
        raise UserError(f"{key}: folder '{unknown[0]}' in {root} is not one of the run's classes; remove or rename it")
    samples = [
        Sample(str(path), label, REAL)
        for folder, label in by_folder.items() if (root / folder).is_dir()
        for path in list_images(root / folder)
    ]
    if not samples:
        raise UserError(f"{key}: no images found in the class folders of {root}")
    return samples


class TrainImages(torch.utils.data.Dataset):
    """Decoded, randomly cropped uint8 images; the crop of sample i in epoch e depends only on
    (seed, e, i), so a resumed epoch sees the same crops in any worker."""

    def __init__(self, samples: list[Sample], size: int, seed: int, epoch: int):
        self.samples, self.size, self.seed, self.epoch = samples, size, seed, epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        rng = random.Random(derive_seed(self.seed, "crop", self.epoch, i))
        image = random_resized_crop(load_rgb(Path(sample.path)), self.size, rng)
        return to_uint8_tensor(image), sample.label, sample.origin == REAL


class EvalImages(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], size: int):
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        return to_uint8_tensor(center_crop(load_rgb(Path(sample.path)), self.size)), sample.label
