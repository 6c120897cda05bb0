"""LoRA weights of the generator: the published init (gaussian A, zero B) drawn from a seed alone,
and adapter files whose bytes do not depend on the process that wrote them. What carries LoRA and
the file layout of each family are in components/generators/families/ (the FamilyModel of each)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER = "default"


def reset_lora(modules: list[torch.nn.Module], seed: int) -> None:
    """Fresh LoRA weights, gaussian A (std 1/r, as peft's "gaussian" init) and zero B, from `seed`
    alone, without touching the global RNG."""
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                # Drawn on the CPU so that a seed gives the same weights on any device.
                down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                std = 1.0 / layer.r[ADAPTER]
                down.data.copy_(torch.randn(down.shape, generator=generator) * std)
                up.data.zero_()


def sort_safetensors_metadata(path: Path) -> None:
    """safetensors writes its metadata map in hash order, which differs from process to process,
    so two identical trainings would give files that differ in their header. Rewritten with sorted
    keys, identical runs give identical bytes. The header is the format's length-prefixed JSON;
    only the order inside `__metadata__` changes, so its padded length and every offset stay."""
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        if not metadata:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > length:  # another serialiser's escaping: leave the file as it is
            return
        handle.seek(8)
        handle.write(text + b" " * (length - len(text)))
