"""FLOP and memory constants of the full-size models, for `datadream plan` (src/datadream/costs.py).

    python benchmarks/cost_constants.py            # CPU, about 2-4 minutes and ~8 GB of RAM
    python benchmarks/cost_constants.py --check    # and compare with src/datadream/costs.py
    python benchmarks/cost_constants.py --families [--check]   # each family record's costs, on the meta device (~40 s)

Builds SD 2.1-base (UNet, VAE, OpenCLIP ViT-H text encoder) and CLIP ViT-B/16 at full size with
random weights (FLOPs and activation sizes do not depend on the weight values), then counts with
torch's FlopCounterMode, per sample:
- forward FLOPs of each model at the sizes the pipeline uses (512 px / 64x64 latents, 77 tokens
  for SD; 224 px and 20 tokens, about a class prompt's padded length, for CLIP);
- forward+backward FLOPs with the pipeline's LoRA (frozen base: no weight gradients);
- activation bytes kept for the backward pass (bf16 autocast; every saved tensor's storage
  counted once), and the peak bytes of live tensors of a no-grad forward (bf16 weights), both
  measured on the CPU.
Prints the dictionary that src/datadream/costs.py holds. Attention on a GPU (flash / memory-
efficient kernels) keeps no more than the CPU kernels do, so these activation figures are a fair
estimate for a GPU, not a measurement on one.
"""

from __future__ import annotations

import json
import os
import sys
import time
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

CLIP_TEXT_TOKENS = 20


class LivePeak(TorchDispatchMode):
    """Peak bytes of tensors created inside the mode and still referenced (no-grad forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, python references]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                key = t.untyped_storage().data_ptr()
                if key not in self.live:
                    self.live[key] = [t.untyped_storage().nbytes(), 0]
                    self.current += self.live[key][0]
                    self.peak = max(self.peak, self.current)
                self.live[key][1] += 1
                weakref.finalize(t, self._release, key)
        return out


def saved_bytes(module: torch.nn.Module, run) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of `run()`, the
    module's own weights left out (they are counted as weights)."""
    weights = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    total = sum(seen.values())
    del out
    return total


def flops(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def params(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def measure_sd() -> dict[str, float]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from datadream.components.generators.families.sd.testmodel import SD21_BASE_TEXT, SD21_BASE_UNET
    from datadream.components.testmodels.parts import SD21_BASE_VAE
    from types import SimpleNamespace

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.families.model import family_model

    bf16 = torch.bfloat16
    out: dict[str, float] = {}
    unet = UNet2DConditionModel(**SD21_BASE_UNET).to(bf16).eval()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **SD21_BASE_TEXT)).to(bf16).eval()
    vae = AutoencoderKL(**SD21_BASE_VAE).to(bf16).eval()
    out.update(sd_unet_params=params(unet), sd_text_params=params(text), sd_vae_params=params(vae))
    latents = torch.randn(1, 4, 64, 64, dtype=bf16)
    tokens = torch.randint(0, 49408, (1, 77))
    context = torch.randn(1, 77, 1024, dtype=bf16)
    t = torch.tensor([500])
    with torch.no_grad():
        out["sd_unet_fwd_flops"] = flops(lambda: unet(latents, t, context))
        out["sd_text_fwd_flops"] = flops(lambda: text(tokens))
        pixels = torch.randn(1, 3, 512, 512, dtype=bf16)
        out["sd_vae_encode_flops"] = flops(lambda: vae.encode(pixels))
        out["sd_vae_decode_flops"] = flops(lambda: vae.decode(latents))
        pair = torch.cat([latents] * 2), torch.cat([context] * 2)  # the guidance pair of one image
        for name, run in (("sd_unet_infer_peak_bytes", lambda: unet(pair[0], t, pair[1])),
                          ("sd_vae_decode_peak_bytes", lambda: vae.decode(latents))):
            tracker = LivePeak()
            with tracker:
                run()
            out[name] = tracker.peak / (2 if "unet" in name else 1)  # per UNet evaluation / per image
    sd = family_model(SimpleNamespace(unet=unet, text_encoder=text, vae=vae), FAMILIES["sd"], torch.device("cpu"), bf16)
    sd.add_lora(rank=16, alpha=16, train_text_encoder=True)
    out["sd_lora_params"] = params(unet, trainable=True) + params(text, trainable=True)
    unet.train()
    text.train()
    with torch.autocast("cpu", dtype=bf16):
        def unet_step():
            unet(latents, t, context).sample.float().pow(2).mean().backward()

        def text_step():
            text(tokens)[0].float().pow(2).mean().backward()

        out["sd_unet_lora_train_flops"] = flops(unet_step)
        out["sd_text_lora_train_flops"] = flops(text_step)
        out["sd_unet_train_activation_bytes"] = saved_bytes(unet, lambda: unet(latents, t, context).sample)
        out["sd_text_train_activation_bytes"] = saved_bytes(text, lambda: text(tokens)[0])
    return out


def measure_clip() -> dict[str, float]:
    from transformers import CLIPConfig, CLIPModel

    from datadream.components.classifiers.backbones import ClipClassifier

    bf16 = torch.bfloat16
    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16),
        projection_dim=512,
    )
    clip = CLIPModel(config).to(bf16).eval()
    out: dict[str, float] = {"clip_params": params(clip)}
    pixels = torch.randn(1, 3, 224, 224, dtype=bf16)
    tokens = torch.randint(0, 49408, (1, CLIP_TEXT_TOKENS))
    with torch.no_grad():
        out["clip_image_fwd_flops"] = flops(lambda: clip.get_image_features(pixel_values=pixels))
        out["clip_text_fwd_flops"] = flops(lambda: clip.get_text_features(input_ids=tokens))
    classifier = ClipClassifier("random ViT-B/16", clip, tokenizer=None, image_size=224,
                                normalisation=((0.0,) * 3, (1.0,) * 3))
    classifier.add_lora(rank=16, alpha=32, dropout=0.1)
    model = classifier.model
    out["clip_lora_params"] = params(model, trainable=True)
    model.train()

    def image():
        return model.get_image_features(pixel_values=pixels)

    def text():
        return model.get_text_features(input_ids=tokens)

    with torch.autocast("cpu", dtype=bf16):
        out["clip_image_lora_train_flops"] = flops(lambda: _feature(image()).backward())
        out["clip_text_lora_train_flops"] = flops(lambda: _feature(text()).backward())
        out["clip_image_train_activation_bytes"] = saved_bytes(model, image)
        out["clip_text_train_activation_bytes"] = saved_bytes(model, text)
    return out


def _feature(output) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else getattr(output, "pooler_output", output[0])
    return tensor.float().pow(2).mean()


def main() -> None:
    check = "--check" in sys.argv[1:]
    torch.manual_seed(0)
    started = time.time()
    if "--families" in sys.argv[1:]:
        return families(check)
    # The generator's FLOPs and parameters are counted on the meta device (--families), which
    # counts attention too; this CPU pass gives the figures the meta device cannot (bytes) and CLIP's.
    counted_elsewhere = {f"sd_{part}_{kind}" for part in ("unet", "text") for kind in ("fwd_flops", "lora_train_flops",
                                                                                      "params")} | {"sd_lora_params"}
    constants = {**measure_clip(), **measure_sd()}
    constants = {k: int(v) for k, v in sorted(constants.items()) if k not in counted_elsewhere}
    print(json.dumps(constants, indent=4))
    print(f"# {time.time() - started:.0f}s on {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
          file=sys.stderr)
    if check:
        from datadream.costs import MEASURED

        # Counts are exact; byte figures depend on which kernels the installed torch picks.
        stale = [k for k, v in constants.items()
                 if abs(v - MEASURED.get(k, 0)) > (0.05 * v if k.endswith("_bytes") else 0)]
        if stale:
            sys.exit(f"src/datadream/costs.py is stale for: {', '.join(stale)}; paste the dictionary above")
        print("src/datadream/costs.py matches")


def families(check: bool) -> None:
    """The `costs` of every family record (components/generators/families/<name>/__init__.py),
    counted on the meta device (seconds)."""
    from datadream.components.generators.families import FAMILIES
    from datadream.components.testmodels.families import count_family_flops

    counted = {family: count_family_flops(family) for family in FAMILIES}
    print(json.dumps(counted, indent=4))
    if check:
        stale = [f"{family}.{k}" for family, values in counted.items() for k, v in values.items()
                 if v != FAMILIES[family].costs.get(k)]
        if stale:
            sys.exit(f"family costs are stale for: {', '.join(stale)}; paste each family's dictionary above into"
                     " its record's costs (components/generators/families/<name>/__init__.py)")
        print("every family record's costs match")


if __name__ == "__main__":
    main()
