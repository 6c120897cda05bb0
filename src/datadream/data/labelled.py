"""The torch datasets that decode labelled samples (datadream.data.samples) for the classifier."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from datadream.components.classifiers.augment import center_crop, random_resized_crop, to_uint8_tensor
from datadream.components.seeds import derive_seed
from datadream.data.images import load_rgb
from datadream.data.samples import REAL, Sample


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
        return to_uint8_tensor(center_crop(load_rgb(Path(sample.path), sha256=sample.sha256), self.size)), sample.label
