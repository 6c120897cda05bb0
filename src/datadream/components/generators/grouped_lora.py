"""K LoRA adapters trained in one forward/backward: each targeted layer holds K stacked (A, B)
pairs and applies pair k to the k-th contiguous group of the batch with two batched matmuls.

peft supports mixed-adapter batches for inference only; training many small adapters at once is
what no library does, so the grouping is written here. It plugs into peft's own LoRA layers: the
`lora_A` / `lora_B` modules of the "default" adapter are swapped for grouped ones, so peft's
forward (base output + scale * B(A(x))) and its state-dict helpers keep working, and adapter k is
exported by slicing index k out of every tensor.

The batch must be laid out as K equal, contiguous groups along dim 0 (group k = adapter k).
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER = "default"


class GroupedLinear(nn.Module):
    """y[k] = x[k] @ weight[k].T for each of the K groups of x (no bias)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, out_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.weight.shape[0]
        flat = x.reshape(groups, -1, x.shape[-1])  # (K, tokens of the group, in)
        out = torch.bmm(flat, self.weight.transpose(1, 2).to(flat.dtype))
        return out.reshape(*x.shape[:-1], self.weight.shape[1])


def lora_layers(modules: list[nn.Module]):
    from peft.tuners.lora import LoraLayer

    return [layer for module in modules for layer in module.modules() if isinstance(layer, LoraLayer)]


def make_grouped(modules: list[nn.Module], groups: int, seeds: list[int]) -> list[nn.Parameter]:
    """Give every LoRA layer `groups` adapters, adapter k initialised exactly as a single adapter
    from seeds[k] would be (see lora_weights.reset_lora: gaussian A, std 1/r, zero B, drawn on the CPU
    in module order). Returns the trainable parameters."""
    layers = lora_layers(modules)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    params = []
    for layer in layers:
        down, up = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        if isinstance(down, GroupedLinear):
            down_shape, up_shape = down.weight.shape[1:], up.weight.shape[1:]
        else:
            down_shape, up_shape = down.weight.shape, up.weight.shape
        device = down.weight.device
        std = 1.0 / layer.r[ADAPTER]
        a = torch.stack([torch.randn(down_shape, generator=g) * std for g in generators]).to(device)
        b = torch.zeros((groups, *up_shape), device=device)
        layer.lora_A[ADAPTER] = GroupedLinear(a)
        layer.lora_B[ADAPTER] = GroupedLinear(b)
        params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
    return params


def make_single(modules: list[nn.Module]) -> list[nn.Parameter]:
    """Back to one ordinary adapter per layer (peft's nn.Linear modules), trainable, fp32."""
    params = []
    for layer in lora_layers(modules):
        for table in (layer.lora_A, layer.lora_B):
            module = table[ADAPTER]
            if isinstance(module, GroupedLinear):
                out_features, in_features = module.weight.shape[1:]
                table[ADAPTER] = nn.Linear(in_features, out_features, bias=False, device=module.weight.device)
            params.append(table[ADAPTER].weight)
    return params


def adapter_state(module: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """Adapter `index` of a grouped model as peft's state dict of a single adapter."""
    from peft.utils import get_peft_model_state_dict

    return {key: value[index] for key, value in get_peft_model_state_dict(module).items()}


@torch.no_grad()
def clip_grad_norm_per_group(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each adapter separately: adapter k's gradient is
    scaled by min(1, max_norm / (||g_k|| + 1e-6)). Returns the K norms."""
    grads = [p.grad for p in params if p.grad is not None]
    groups = grads[0].shape[0]
    squares = torch.stack([g.reshape(groups, -1).float().pow(2).sum(dim=1) for g in grads]).sum(dim=0)
    norms = squares.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(scale.view(groups, *([1] * (grad.dim() - 1))).to(grad.dtype))
    return norms
