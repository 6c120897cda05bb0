"""RandAugment as torchvision defines it (Cubuk et al. 2020; torchvision.transforms.RandAugment),
batched on the device: every image draws its own `num_ops` operations and signs.

Written here because the published recipe is torchvision's RandAugment and torchvision cannot be
installed beside the CPU build of torch, while kornia's RandAugment differs in ways that change
the training distribution: one draw of operations per call, one-sided magnitudes (brightness
always darker at m=9), Invert instead of Identity, another solarize threshold.

torchvision's settings with 31 magnitude bins, at magnitude m:
shear x/y 0.3*m/30 (signed), translate x/y (150/331)*size*m/30 px (signed), rotate 30*m/30 deg
(signed), brightness/color/contrast/sharpness factor 1 +- 0.9*m/30, posterize 8 - round(m/7.5) bits,
solarize threshold (255 - 8.5*m)/255, autocontrast, equalize, identity. Geometric operations use
nearest sampling with black fill, as torchvision's defaults do.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * degenerate).clamp(0, 1)


def _sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    smooth = F.conv2d(x, kernel.expand(3, 1, 3, 3), groups=3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = smooth  # torchvision keeps the border pixels
    return out


def _affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Warp by per-image 2x3 pixel-space matrices (source -> output), nearest, black fill. (The
    magnitudes are symmetric in sign, so the direction convention does not matter.)"""
    from kornia.geometry.transform import warp_affine

    return warp_affine(x, matrix, x.shape[-2:], mode="nearest", padding_mode="zeros", align_corners=True)


def _geometric(op: str, x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    n, _, height, width = x.shape
    matrix = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1
    if op == "shear_x":
        matrix[:, 0, 1] = magnitude
    elif op == "shear_y":
        matrix[:, 1, 0] = magnitude
    elif op == "translate_x":
        matrix[:, 0, 2] = magnitude * width
    elif op == "translate_y":
        matrix[:, 1, 2] = magnitude * height
    else:  # rotate about the centre
        angle = torch.deg2rad(magnitude)
        cos, sin = torch.cos(angle), torch.sin(angle)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, -sin, sin, cos
        matrix[:, 0, 2] = cx - cos * cx + sin * cy
        matrix[:, 1, 2] = cy - sin * cx - cos * cy
    return _affine(x, matrix)


def apply_op(op: str, x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """One operation on images in [0, 1]; `magnitude` is per image, already signed."""
    factor = (1 + magnitude).view(-1, 1, 1, 1)
    if op == "identity":
        return x
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _geometric(op, x, magnitude)
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if op == "color":
        return _blend(x, _grey(x).expand_as(x), factor)
    if op == "contrast":
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
    if op == "sharpness":
        return _blend(x, _sharpness_degenerate(x), factor)
    if op == "posterize":
        bits = magnitude.view(-1, 1, 1, 1)
        step = 2 ** (8 - bits)
        return torch.floor(torch.floor(x * 255) / step) * step / 255
    if op == "solarize":
        threshold = magnitude.view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 1 - x, x)
    if op == "autocontrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-12), torch.ones_like(high))
        low = torch.where(high > low, low, torch.zeros_like(low))
        return ((x - low) * scale).clamp(0, 1)
    if op == "equalize":
        from kornia.enhance import equalize

        return equalize(x)
    raise ValueError(op)


def magnitudes(op: str, m: int, signs: torch.Tensor) -> torch.Tensor:
    """torchvision's magnitude of `op` at bin m for each image, signed where torchvision signs it."""
    unsigned = {
        "shear_x": 0.3 * m / (BINS - 1), "shear_y": 0.3 * m / (BINS - 1),
        "translate_x": 150.0 / 331.0 * m / (BINS - 1), "translate_y": 150.0 / 331.0 * m / (BINS - 1),
        "rotate": 30.0 * m / (BINS - 1),
        "brightness": 0.9 * m / (BINS - 1), "color": 0.9 * m / (BINS - 1),
        "contrast": 0.9 * m / (BINS - 1), "sharpness": 0.9 * m / (BINS - 1),
    }
    if op in unsigned:
        return unsigned[op] * signs
    if op == "posterize":
        return torch.full_like(signs, 8 - round(m / ((BINS - 1) / 4)))
    if op == "solarize":
        return torch.full_like(signs, (255.0 - 255.0 * m / (BINS - 1)) / 255.0)
    return torch.zeros_like(signs)


@torch.no_grad()
def rand_augment(x: torch.Tensor, num_ops: int = 2, magnitude: int = 9) -> torch.Tensor:
    """Per-image RandAugment of a batch in [0, 1] (B, 3, H, W); randomness from torch's RNG."""
    n = len(x)
    for _ in range(num_ops):
        choice = torch.randint(len(OPS), (n,))
        signs = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        out = x.clone()
        for index, op in enumerate(OPS):
            chosen = (choice == index).nonzero().flatten()
            if len(chosen):
                mags = magnitudes(op, magnitude, signs[chosen]).to(x.device, x.dtype)
                out[chosen.to(x.device)] = apply_op(op, x[chosen.to(x.device)], mags)
        x = out
    return x
