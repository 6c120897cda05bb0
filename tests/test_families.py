"""Generator families: each tiny family model loads with its stock diffusers pipeline and samples,
its family is read from model_index.json, and a family the stages do not train yet stops a run
before any work with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, run_cli, tiny_config, write_config
from datadream.errors import UserError

PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    from datadream.components.tiny_families import BUILDERS

    root = tmp_path_factory.mktemp("tiny-families")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_tiny_family_model_samples_with_its_stock_pipeline(family_models, name):
    import diffusers
    import torch

    from datadream.components.tiny import tiny_model_note

    pipeline_class = getattr(diffusers, PIPELINES[name])
    pipeline = pipeline_class.from_pretrained(family_models[name])
    pipeline.set_progress_bar_config(disable=True)
    # The T5 families take a prompt length; the tiny T5 is built for 32 tokens.
    extra = {} if name == "sdxl" else {"max_sequence_length": 32}
    image = pipeline("a photo of a cat", height=TINY, width=TINY, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0), **extra).images[0]
    assert image.size == (TINY, TINY)
    assert tiny_model_note(str(family_models[name])) is not None


def test_family_is_read_from_model_index(family_models, tiny_models, tmp_path):
    from datadream.components.families import FAMILIES, family_of

    for name, folder in family_models.items():
        assert family_of(str(folder)) is FAMILIES[name]
    assert family_of(str(tiny_models["sd"])) is FAMILIES["sd"]
    # The name says SDXL; the folder is SD: the folder decides.
    misleading = tmp_path / "stable-diffusion-xl-base-1.0"
    shutil.copytree(tiny_models["sd"], misleading)
    assert family_of(str(misleading)).name == "sd"
    assert family_of(str(tmp_path / "v2-1_512-ema-pruned.safetensors")).name == "sd"


def test_family_targets_and_text_encoders_follow_the_published_recipes():
    from datadream.components.families import FAMILIES

    assert FAMILIES["sd"].denoiser == FAMILIES["sdxl"].denoiser == "unet"
    assert FAMILIES["sd3"].denoiser == FAMILIES["flux"].denoiser == "transformer"
    assert set(FAMILIES["sdxl"].text_lora_targets) == {"text_encoder", "text_encoder_2"}
    # T5 stays frozen: only the CLIP encoders take LoRA.
    assert set(FAMILIES["sd3"].text_lora_targets) == {"text_encoder", "text_encoder_2"}
    assert set(FAMILIES["flux"].text_lora_targets) == {"text_encoder"}
    assert "ff.net.2" in FAMILIES["flux"].denoiser_targets and "ff.net.2" not in FAMILIES["sd3"].denoiser_targets
    assert {f.objective for f in (FAMILIES["sd3"], FAMILIES["flux"])} == {"flow_matching"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_family_denoiser_targets_exist_in_the_tiny_model(family_models, name):
    import diffusers

    from datadream.components.families import FAMILIES

    family = FAMILIES[name]
    pipeline = getattr(diffusers, PIPELINES[name]).from_pretrained(family_models[name])
    modules = [module_name for module_name, _ in getattr(pipeline, family.denoiser).named_modules()]
    for target in family.denoiser_targets:
        assert any(module_name.endswith(target) for module_name in modules), target
    for attribute, targets in family.text_lora_targets.items():
        encoder_modules = [n for n, _ in getattr(pipeline, attribute).named_modules()]
        assert all(any(n.endswith(t) for n in encoder_modules) for t in targets), attribute


def test_unknown_pipeline_class_is_one_line(tmp_path):
    from datadream.components.families import family_of

    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}), encoding="utf-8")
    with pytest.raises(UserError, match=r"is a KandinskyPipeline model .*StableDiffusionXLPipeline \(sdxl\)") as err:
        family_of(str(folder))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no model_index.json"):
        family_of(str(tmp_path))


def test_uncached_hub_id_is_one_line_offline():
    from datadream.components.families import family_of

    with pytest.raises(UserError, match="offline") as err:
        family_of("no-such-org/no-such-model")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, title", [("sdxl", "an SDXL model"), ("sd3", "an SD 3/3.5 model"),
                                         ("flux", "a FLUX.1 model")])
def test_run_on_another_family_stops_before_any_work(family_models, tiny_models, toy_data, tmp_path, name, title):
    config = write_config(tmp_path / "exp.yaml", tiny_config({**tiny_models, "sd": family_models[name]},
                                                             toy_data / "train"))
    run = tmp_path / "run"
    result = run_cli("run", config, run)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("datadream: error:")]
    assert errors == [f"datadream: error: generator.model: {family_models[name]} is {title} ({PIPELINES[name]});"
                      " this version trains and samples the sd family only (SD 1.x/2.x); see docs/models.md"], errors
    assert not run.exists()


def test_loading_another_family_as_stable_diffusion_is_refused(family_models):
    from datadream.components.models import load_stable_diffusion

    # Stock StableDiffusionPipeline.from_pretrained would load the SDXL folder, minus its second
    # text encoder, without a word.
    with pytest.raises(UserError, match=r"is an SDXL model \(StableDiffusionXLPipeline\); this version") as err:
        load_stable_diffusion(str(family_models["sdxl"]))
    assert "\n" not in str(err.value)
