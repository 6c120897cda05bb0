"""The batched engine is the same optimisation as K sequential runs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config, write_config
from datadream.components.generators.grouped_lora import GroupedLinear, clip_grad_norm_per_group
from datadream.config import load_config
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER
from datadream.runs import init_run
from datadream.stages.adapt import adapt


def test_grouped_linear_applies_each_groups_weights():
    torch.manual_seed(0)
    weight = torch.randn(3, 5, 4)
    x = torch.randn(6, 7, 4)  # 3 groups of 2 samples, 7 tokens each
    out = GroupedLinear(weight)(x)
    for k in range(3):
        assert torch.allclose(out[2 * k:2 * k + 2], x[2 * k:2 * k + 2] @ weight[k].T, atol=1e-6)


def test_per_group_clipping_equals_torch_clipping_of_each_adapter():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5) * s for s in (0.1, 10.0)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_grad_norm_per_group(params, 1.0)
    for k in range(3):
        single = [torch.nn.Parameter(torch.zeros(g.shape[1:])) for g in grads]
        for p, g in zip(single, grads):
            p.grad = g[k].clone()
        torch.nn.utils.clip_grad_norm_(single, 1.0)
        for p, s in zip(params, single):
            assert torch.allclose(p.grad[k], s.grad, atol=1e-6)


@pytest.mark.parametrize("family, train_text_encoder", [("sd", True), ("sd", False), ("sdxl", True), ("sdxl", False),
                                                       ("sd3", True), ("flux", True)])
def test_batched_equals_sequential(tmp_path, generator_models, toy_data, family, train_text_encoder):
    """Per family: its conditioning (SDXL's time ids, the T5 features) and objective (flow
    matching) go through the grouped layers unchanged."""
    adapt_cfg = {"epochs": 3, "batch_size": 2, "warmup_steps": 2, "lr": 1e-3, "max_grad_norm": 0.05,
                 "train_text_encoder": train_text_encoder}
    config = write_config(tmp_path / "exp.yaml", tiny_config(generator_models, toy_data / "train", adapt=adapt_cfg))
    runs = {}
    for engine, group in (("sequential", 0), ("batched", 3)):  # 4 classes: groups of 3 and 1
        # A store each: a shared one would hand the second run the first run's adapters.
        runs[engine] = init_run(load_config(config, [f"adapt.engine={engine}", f"adapt.group_size={group}",
                                                     f"runtime.store={tmp_path / engine}-store"]),
                                tmp_path / engine).layout.root
        adapt(runs[engine])
    for unit in ("000-circle", "001-square", "002-stripes", "003-triangle"):
        ours = load_file(runs["batched"] / "adapters" / unit / LORA_WEIGHTS)
        reference = load_file(runs["sequential"] / "adapters" / unit / LORA_WEIGHTS)
        assert ours.keys() == reference.keys()
        # B (lora.up in diffusers' names, lora_B in peft's) starts at zero.
        moved = max(float(reference[k].abs().max()) for k in reference if ".up." in k or "lora_B" in k)
        assert moved > 1e-4, "the adapters must have trained for the comparison to mean anything"
        for key in reference:
            assert torch.allclose(ours[key], reference[key], rtol=1e-4, atol=1e-6), (unit, key)
        marker = json.loads((runs["batched"] / "adapters" / unit / UNIT_MARKER).read_text())
        reference_marker = json.loads((runs["sequential"] / "adapters" / unit / UNIT_MARKER).read_text())
        assert marker["engine"] == "batched" and marker["steps"] == reference_marker["steps"] == 3 * 2
        assert marker["loss_per_epoch"] == pytest.approx(reference_marker["loss_per_epoch"], rel=1e-4)


def test_batched_adapters_resume_and_are_reused_by_sequential(tmp_path, tiny_models, toy_data):
    """The engine is not part of an adapter's identity: a run can switch engines and keep its
    complete adapters."""
    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train"))
    run = init_run(load_config(config), tmp_path / "run").layout.root
    adapt(run)
    shutil.rmtree(run / "adapters" / "002-stripes")
    before = (run / "adapters" / "000-circle" / LORA_WEIGHTS).stat().st_mtime_ns
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("engine: auto", "engine: sequential"))
    adapt(run)
    assert (run / "adapters" / "002-stripes" / LORA_WEIGHTS).is_file()
    assert (run / "adapters" / "000-circle" / LORA_WEIGHTS).stat().st_mtime_ns == before


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_compiled_denoiser_gives_the_same_adapters_and_images(tmp_path, generator_models, toy_data, monkeypatch,
                                                              family):
    """torch.compile traced with the eager backend (no kernel generation, fast on a CPU): the
    compiled paths of adapt (batched) and synthesize (swapping adapters in place, switching them
    off for the un-adapted previews) stay correct, for a UNet and for an MMDiT transformer."""
    import numpy as np
    from PIL import Image

    from datadream.stages.synthesize import synthesize

    monkeypatch.setenv("DATADREAM_COMPILE_BACKEND", "eager")
    config = write_config(tmp_path / "exp.yaml", tiny_config(generator_models, toy_data / "train",
                                                              synthesize={"images_per_class": 2},
                                                              adapt={"lr": 1e-2}))  # adapters that show
    runs = {}
    for name, flag in (("plain", "false"), ("compiled", "true")):
        runs[name] = init_run(load_config(config, [f"adapt.compile={flag}", f"synthesize.compile={flag}",
                                                   f"runtime.store={tmp_path / name}-store"]),
                              tmp_path / name).layout.root
        adapt(runs[name])
        synthesize(runs[name])
    for unit in ("000-circle", "003-triangle"):
        a = load_file(runs["plain"] / "adapters" / unit / LORA_WEIGHTS)
        b = load_file(runs["compiled"] / "adapters" / unit / LORA_WEIGHTS)
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
        image = f"synthetic/{unit}/00001.png"
        diff = np.abs(np.asarray(Image.open(runs["plain"] / image), dtype=np.int16)
                      - np.asarray(Image.open(runs["compiled"] / image), dtype=np.int16))
        assert diff.max() <= 2
    previews = sorted((tmp_path / "plain-store" / "previews").glob("*/unadapted-*.png"))
    assert len(previews) == 4 * 2
    for plain in previews:
        name = plain.relative_to(tmp_path / "plain-store")
        ours = np.asarray(Image.open(tmp_path / "compiled-store" / name), dtype=np.int16)
        assert np.abs(np.asarray(Image.open(plain), dtype=np.int16) - ours).max() <= 2
        adapted = tmp_path / "compiled-store" / "synthetic" / name.parent.name / name.name.removeprefix("unadapted-")
        assert np.abs(np.asarray(Image.open(adapted), dtype=np.int16) - ours).mean() > 1, "the compiled denoiser kept its adapter"


def test_bf16_paths_run_on_the_cpu(tmp_path, tiny_models, toy_data):
    """The GPU default is bf16 (frozen weights in bf16, LoRA weights and optimiser state in fp32,
    autocast); the same code runs in bf16 on a CPU, so it is exercised here."""
    from datadream.pipeline import run_all

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        runtime={"device": "cpu", "precision": "bf16"}, classifier={"epochs": 1}))
    for engine in ("batched", "sequential"):
        summary = run_all(load_config(config, [f"adapt.engine={engine}", f"runtime.store={tmp_path / engine}-store"]),
                          tmp_path / engine)
        assert summary.metrics["n"] == 12
        weights = load_file(summary.run / "adapters" / "001-square" / LORA_WEIGHTS)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
        marker = json.loads((summary.run / "adapters" / "001-square" / UNIT_MARKER).read_text())
        assert marker["precision"] == "bfloat16" and marker["engine"] == engine
