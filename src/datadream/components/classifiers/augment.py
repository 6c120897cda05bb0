"""Classifier augmentation as published: RandAugment(2, 9) -> RandomResizedCrop(scale 0.25-1,
bicubic) -> flip -> ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 -> grayscale p 0.2 -> Gaussian blur
p 0.2 (sigma 0.1-2) -> solarize p 0.2 -> the model's own normalisation; Mixup/CutMix on a fraction of batches.

Split in two so that the GPU does the heavy part: the crop runs on the CPU in the loader workers
(images arrive in all sizes and must leave in one), everything else runs batched on the device:
RandAugment with torchvision's definition (components/classifiers/randaugment.py, per image), the rest with
kornia, whose ColorJitter follows torchvision's formulas. Deliberate difference: RandAugment runs
after the crop instead of before it.
"""

from __future__ import annotations

import math
import random

import torch
from PIL import Image

from datadream.components.classifiers.randaugment import rand_augment

CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """torchvision's RandomResizedCrop sampling: up to ten tries for a box of random area and
    aspect ratio inside the image, else the largest centred box of an allowed ratio. Written
    here because torchvision cannot be installed beside the CPU torch; bicubic as published."""
    width, height = image.size
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            break
    else:
        w, h = width, height
        if width / height < CROP_RATIO[0]:
            h = round(width / CROP_RATIO[0])
        elif width / height > CROP_RATIO[1]:
            w = round(height * CROP_RATIO[1])
        left, top = (width - w) // 2, (height - h) // 2
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Test transform: shorter side to `size` (bicubic), centre crop `size` x `size`."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).contiguous()


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float normalised with the model's mean and std."""
    return standardize(images.float() / 255.0, mean, std)


def standardize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images in [0, 1] -> the model's mean and std (per channel)."""
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class TrainAugment(torch.nn.Module):
    """The batched, on-device part of the training augmentation (uint8 in, normalised out)."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        import kornia.augmentation as K

        blur_kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the side, odd
        self.photometric = torch.nn.Sequential(
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((blur_kernel, blur_kernel), (0.1, 2.0), p=0.2),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.2),  # threshold 0.5, as torchvision's 128
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return standardize(self.photometric(rand_augment(x, num_ops=2, magnitude=9)).clamp(0, 1), self.mean, self.std)


def mix_within(images: torch.Tensor, targets: torch.Tensor, groups: list[torch.Tensor],
               rng: random.Random, alpha: float = 1.0) -> str:
    """Mixup or CutMix (one of them, chosen at random) applied in place separately inside each
    group of sample indices, so real images are only mixed with real ones and synthetic with
    synthetic. `targets` are soft labels (B, C). Returns which one was applied. Hand-written:
    kornia's mixing works on the whole batch and cannot keep the groups apart."""
    mode = rng.choice(("mixup", "cutmix"))
    height, width = images.shape[-2:]
    for index in groups:
        if len(index) < 2:
            continue
        lam = rng.betavariate(alpha, alpha)
        partner = index[torch.tensor(rng.sample(range(len(index)), len(index)), device=index.device)]
        if mode == "mixup":
            images[index] = lam * images[index] + (1 - lam) * images[partner]
        else:
            cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
            cy, cx = rng.randrange(height), rng.randrange(width)
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            patched = images[index].clone()
            patched[..., top:bottom, left:right] = images[partner][..., top:bottom, left:right]
            images[index] = patched
            lam = 1 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
        targets[index] = lam * targets[index] + (1 - lam) * targets[partner]
    return mode
