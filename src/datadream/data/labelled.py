"""Labelled image lists for the classifier, each sample carrying its origin explicitly, and the
torch datasets that decode them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from datadream.components.augment import center_crop, random_resized_crop, to_uint8_tensor
from datadream.components.seeds import derive_seed
from datadream.config import DataConfig
from datadream.data.fewshot import FewShotManifest
from datadream.data.images import load_rgb
from datadream.data.sources import load_view
from datadream.errors import UserError

REAL, SYNTHETIC = "real", "synthetic"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    origin: str  # REAL or SYNTHETIC: never inferred from the path
    sha256: str | None = None  # when known, the image is checked against it as it is read


def real_shots(manifest: FewShotManifest, repeats: int = 1) -> list[Sample]:
    """The manifest's shots (hashes checked), each repeated `repeats` times."""
    shots = [Sample(str(manifest.verified_path(s)), c.label, REAL, sha256=s.sha256)
             for c in manifest.classes for s in c.images]
    return [sample for sample in shots for _ in range(repeats)]


def split_samples(data: DataConfig, manifest: FewShotManifest, split: str) -> list[Sample]:
    """The labelled images of a split ("val" or "test") of the run's dataset, with the labels the
    manifest uses; an empty list when the dataset has no such split."""
    view = load_view(data, splits=(split,))
    if view.keys != [c.key for c in manifest.classes]:
        raise UserError("the dataset's classes differ from those in fewshot.json (changed since init?);"
                        " restore the data or start a new run")
    return [Sample(str(item.path), item.label, REAL) for item in view.split(split)]


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
        image = random_resized_crop(load_rgb(Path(sample.path), sha256=sample.sha256), self.size, rng)
        return to_uint8_tensor(image), sample.label, sample.origin == REAL


class EvalImages(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], size: int):
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        return to_uint8_tensor(center_crop(load_rgb(Path(sample.path)), self.size)), sample.label
