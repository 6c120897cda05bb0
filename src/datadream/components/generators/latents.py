"""VAE posterior moments for the crops of a training step, without encoding the same pixels
again and again.

- exact reuse (on by default): an image whose resized size equals the crop size has exactly one
  possible crop, so its moments are computed once and reused in every step;
- `cache_latents` (opt-in, an approximation): every image is encoded once at full resized size
  and its moments are cropped on the latent grid. The VAE encoder sees the whole image instead of
  the crop (its receptive field and its attention block cross the crop border), so results differ
  from the published recipe; it is named as such in the config.
Other crops are encoded every step, batched, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ShotImage:
    pixels: torch.Tensor  # uint8 (3, H, W), shorter side = the training resolution
    prompt: int  # index of its prompt in the unit
    key: str  # content hash: identifies the image across steps
    original_size: tuple[int, int] = (0, 0)  # (height, width) of the file before resizing (SDXL's conditioning)


class LatentEncoder:
    def __init__(self, vae, resolution: int, reuse_exact: bool, approximate: bool):
        self.vae = vae
        self.resolution = resolution
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.reuse_exact = reuse_exact
        self.approximate = approximate
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def moments(self, shots: list[ShotImage], offsets: list[tuple[int, int]], crops: torch.Tensor):
        """(mean, std) of the posterior of each crop, shape (B, C, h, w)."""
        size, factor = self.resolution, self.factor
        means: list[torch.Tensor | None] = [None] * len(shots)
        stds: list[torch.Tensor | None] = [None] * len(shots)
        to_encode = []
        for i, (shot, (top, left)) in enumerate(zip(shots, offsets)):
            whole = tuple(shot.pixels.shape[1:]) == (size, size)
            if (whole and self.reuse_exact) or self.approximate:
                mean, std = self._full_image(shot)
                if not whole:
                    rows = slice(top // factor, top // factor + size // factor)
                    cols = slice(left // factor, left // factor + size // factor)
                    mean, std = mean[:, rows, cols], std[:, rows, cols]
                means[i], stds[i] = mean, std
            else:
                to_encode.append(i)
        if to_encode:
            mean, std = self._encode(crops[to_encode])
            for j, i in enumerate(to_encode):
                means[i], stds[i] = mean[j], std[j]
        return torch.stack(means), torch.stack(stds)

    def _full_image(self, shot: ShotImage) -> tuple[torch.Tensor, torch.Tensor]:
        if shot.key not in self._cache:
            mean, std = self._encode(shot.pixels.unsqueeze(0))
            self._cache[shot.key] = (mean[0], std[0])
        return self._cache[shot.key]

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.vae.parameters()).device
        scaled = pixels.to(device, self.vae.dtype, non_blocking=True) / 127.5 - 1.0
        posterior = self.vae.encode(scaled).latent_dist
        return posterior.mean, posterior.std
