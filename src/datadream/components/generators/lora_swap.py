"""Swapping class adapters in a loaded pipeline by copying weights in place.

The first adapter is loaded with diffusers' own `load_lora_weights`, which builds the LoRA
layers; every later adapter of the same shape is copied into those very tensors. Nothing in the
module structure changes, so a compiled denoiser is not recompiled (diffusers' own hot-swap covers
the denoiser but not the text encoders), and a swap is one file read and a memory copy. The same
for every generator family: the components and key names come from its FamilyModel. Adapters are
read when their class starts rather than all kept in memory: 1,000 full-size class adapters
would hold ~13 GB, and one read is negligible next to generating a class's 500 images.

`disabled()` samples the un-adapted generator without unloading anything: peft's LoRA layers,
switched off, compute their base layer alone, so the images are those of a pipeline that never
had an adapter (adapt.mode=none).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

from datadream.components.generators.families.model import FamilyModel
from datadream.layout import LORA_WEIGHTS

ACTIVE = "active"


def _components(model: FamilyModel) -> dict[str, torch.nn.Module]:
    """The pipeline's components that may carry an adapter: the denoiser and the CLIP encoders
    (the compiled denoiser's module itself, not torch.compile's wrapper)."""
    names = [model.family.denoiser, *model.family.text_lora_targets]
    modules = {name: getattr(model.pipeline, name) for name in names}
    return {name: getattr(module, "_orig_mod", module) for name, module in modules.items()}


def _targets(model: FamilyModel) -> dict[str, torch.Tensor]:
    """The adapter file's key -> the live LoRA tensor it is loaded into."""
    from peft.utils import get_peft_model_state_dict

    targets: dict[str, torch.Tensor] = {}
    for prefix, module in _components(model).items():
        if not getattr(module, "peft_config", None) or ACTIVE not in module.peft_config:
            continue
        # get_peft_model_state_dict returns the live parameters (detached views share storage).
        live = get_peft_model_state_dict(module, adapter_name=ACTIVE)
        for tensor, key in zip(live.values(), model.file_keys(live)):
            targets[f"{prefix}.{key}"] = tensor
    return targets


class AdapterSwapper:
    def __init__(self, model: FamilyModel, folders: dict[str, Path], scale: float):
        self.model = model
        self.pipeline = model.pipeline
        self.scale = scale
        self.folders = folders
        self.active: str | None = None
        self._targets: dict[str, torch.Tensor] | None = None

    def activate(self, name: str | None) -> None:
        """Make adapter `name` the one the pipeline samples with (None: the un-adapted generator,
        for a run without adapters)."""
        if name == self.active:
            return
        if name is None:
            raise RuntimeError("a run either has adapters for every class or none")
        if self._targets is None:
            self.pipeline.load_lora_weights(str(self.folders[name]), adapter_name=ACTIVE)
            self.pipeline.set_adapters([ACTIVE], adapter_weights=[self.scale])
            self._targets = _targets(self.model)
        else:
            self._copy(load_file(self.folders[name] / LORA_WEIGHTS))
        self.active = name

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the pipeline samples without its LoRA (the base model's output)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._targets is None:  # no adapter loaded yet: the pipeline is the base model
            yield
            return
        # Not pipeline.disable_lora(): it passes over a compiled denoiser (torch.compile's wrapper
        # is no diffusers model) and would leave it adapted without a word.
        layers = [layer for module in _components(self.model).values()
                  for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    @torch.no_grad()
    def _copy(self, weights: dict[str, torch.Tensor]) -> None:
        if weights.keys() != self._targets.keys():
            missing = sorted(set(self._targets) ^ set(weights))[:1]
            raise RuntimeError(f"adapter layouts differ (e.g. {missing}); adapters of one run share one layout")
        for key, target in self._targets.items():
            target.copy_(weights[key])
