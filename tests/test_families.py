"""Generator families: each tiny family model loads with its stock diffusers pipeline and samples,
its family is read from model_index.json, and `datadream run` adapts and samples every family,
with adapters that stock diffusers loads and reproduces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_cli, tiny_config, write_config
from datadream.config import read_config_file
from datadream.errors import UserError
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER

PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_tiny_family_model_samples_with_its_stock_pipeline(family_models, name):
    import diffusers
    import torch

    from datadream.components.testmodels.tiny import tiny_model_note

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
    from datadream.components.generators.families import FAMILIES, family_of

    for name, folder in family_models.items():
        assert family_of(str(folder)) is FAMILIES[name]
    assert family_of(str(tiny_models["sd"])) is FAMILIES["sd"]
    # The name says SDXL; the folder is SD: the folder decides.
    misleading = tmp_path / "stable-diffusion-xl-base-1.0"
    shutil.copytree(tiny_models["sd"], misleading)
    assert family_of(str(misleading)).name == "sd"
    assert family_of(str(tmp_path / "v2-1_512-ema-pruned.safetensors")).name == "sd"


def test_family_targets_and_text_encoders_follow_the_published_recipes():
    from datadream.components.generators.families import FAMILIES

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

    from datadream.components.generators.families import FAMILIES

    family = FAMILIES[name]
    pipeline = getattr(diffusers, PIPELINES[name]).from_pretrained(family_models[name])
    modules = [module_name for module_name, _ in getattr(pipeline, family.denoiser).named_modules()]
    for target in family.denoiser_targets:
        assert any(module_name.endswith(target) for module_name in modules), target
    for attribute, targets in family.text_lora_targets.items():
        encoder_modules = [n for n, _ in getattr(pipeline, attribute).named_modules()]
        assert all(any(n.endswith(t) for n in encoder_modules) for t in targets), attribute


def test_unknown_pipeline_class_is_one_line(tmp_path):
    from datadream.components.generators.families import family_of

    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}), encoding="utf-8")
    with pytest.raises(UserError, match=r"is a KandinskyPipeline model .*StableDiffusionXLPipeline \(sdxl\)") as err:
        family_of(str(folder))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no model_index.json"):
        family_of(str(tmp_path))


def test_uncached_hub_id_is_one_line_offline():
    from datadream.components.generators.families import family_of

    with pytest.raises(UserError, match="offline") as err:
        family_of("no-such-org/no-such-model")
    assert "\n" not in str(err.value)


def stock_image(folder: Path, name: str, adapter: Path | None, prompt: str, seed: int,
                guidance: float = 2.0) -> np.ndarray:
    """The image stock diffusers makes with the family's own pipeline and `load_lora_weights`."""
    import diffusers
    import torch

    pipeline = getattr(diffusers, PIPELINES[name]).from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipeline.load_lora_weights(adapter)
    extra = {} if name == "sdxl" else {"max_sequence_length": 32}
    image = pipeline(prompt, num_inference_steps=3, guidance_scale=guidance, height=TINY, width=TINY,
                     generator=torch.Generator().manual_seed(seed), **extra).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_family_runs_end_to_end_and_stock_diffusers_reproduces_its_images(family_models, tiny_models, toy_data,
                                                                         tmp_path, name):
    """`datadream run` class-wise (batched engine) and dataset-wise on the family's tiny model;
    the adapter files hold the family's published targets and load with the stock pipeline's
    `load_lora_weights`, which reproduces our images (the first adapter loaded, a later one
    swapped in place)."""
    from safetensors import safe_open

    from datadream.components.generators.families import FAMILIES

    family = FAMILIES[name]
    models = {**tiny_models, "sd": family_models[name]}
    # A high learning rate makes the adapters change the images visibly, so that a LoRA lost or
    # mis-scaled on loading (alpha != rank here) cannot go unnoticed.
    config = write_config(tmp_path / "exp.yaml", tiny_config(models, toy_data / "train", adapt={"lr": 1e-2}))
    run = tmp_path / "run"
    result = run_cli("run", config, run)
    assert result.returncode == 0, result.stderr[-3000:]
    adapters = sorted((run / "adapters").iterdir())
    assert len(adapters) == 4
    assert json.loads((adapters[0] / UNIT_MARKER).read_text())["engine"] == "batched"
    with safe_open(adapters[0] / LORA_WEIGHTS, "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
        prefixes = {key.split(".")[0] for key in handle.keys()}
    trained_text = {enc.attribute for enc in family.text_encoders if enc.lora}
    assert prefixes == {family.denoiser, *trained_text}  # T5 stays frozen
    assert set(metadata[f"{family.denoiser}.target_modules"]) == set(family.denoiser_targets)
    assert metadata[f"{family.denoiser}.lora_alpha"] == 8 and metadata[f"{family.denoiser}.r"] == 4

    rows = [json.loads(line) for line in (run / "synthetic" / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 3
    # Guidance is not set: the run samples with the family's (recorded in its config).
    guidance = read_config_file(run / "config.yaml").synthesize.guidance
    assert guidance == family.guidance
    for row in (rows[0], rows[-1]):
        ours = np.asarray(Image.open(run / "synthetic" / row["file"]), dtype=np.int16)
        stock = stock_image(family_models[name], name, run / "adapters" / row["adapter"], row["prompt"], row["seed"],
                            guidance)
        assert np.abs(ours - stock).max() <= 2, "stock load_lora_weights must reproduce our image"
        base = stock_image(family_models[name], name, None, row["prompt"], row["seed"], guidance)
        assert np.abs(ours - base).mean() > 1, "the adapter should change the image"

    dataset = tmp_path / "dataset"
    result = run_cli("run", config, dataset, "--set", "adapt.mode=dataset")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (dataset / "adapters").iterdir()] == ["dataset"]
    assert len((dataset / "synthetic" / "index.jsonl").read_text().splitlines()) == 4 * 3


def test_loading_a_family_folder_gives_its_own_pipeline(family_models):
    from datadream.components.loading.models import load_generator, pipeline_family

    # Stock StableDiffusionPipeline.from_pretrained would load the SDXL folder, minus its second
    # text encoder, without a word: the folder's model_index.json decides the class.
    for name, folder in family_models.items():
        pipeline = load_generator(str(folder))
        assert type(pipeline).__name__ == PIPELINES[name]
        assert pipeline_family(pipeline).name == name


def test_sdxl_adapters_export_to_kohya_and_reproduce_in_stock_diffusers(family_models, tiny_models, toy_data,
                                                                       tmp_path):
    """SDXL's kohya file (lora_unet_, lora_te1_, lora_te2_) loads with stock
    StableDiffusionXLPipeline.load_lora_weights into the same weights as our diffusers file."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    from datadream.config import load_config
    from datadream.export import export
    from datadream.runs import init_run
    from datadream.stages.adapt import adapt

    models = {**tiny_models, "sd": family_models["sdxl"]}
    config = write_config(tmp_path / "exp.yaml", tiny_config(models, toy_data / "train", adapt={"lr": 1e-2}))
    run = init_run(load_config(config), tmp_path / "run").layout.root
    adapt(run)
    out = export(run, tmp_path / "export", "adapters")
    unit = "000-circle"
    kohya_file = out / "kohya" / f"{unit}.safetensors"
    with safe_open(kohya_file, "pt") as handle:
        prefixes = {key.split("_text_model_")[0] if "_text_model_" in key else key[:10] for key in handle.keys()}
        assert handle.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {"lora_te1", "lora_te2", "lora_unet_"} == prefixes
    # The SDXL marker comes from the run's family, so a UNet-only adapter gets it too.
    from datadream.export import _is_sdxl

    assert _is_sdxl(str(family_models["sdxl"])) is True and _is_sdxl(str(tiny_models["sd"])) is False
    assert _is_sdxl("no-such-org/uncached-model") is None

    def loaded(adapter: Path):
        pipe = StableDiffusionXLPipeline.from_pretrained(family_models["sdxl"])
        pipe.load_lora_weights(str(adapter), adapter_name="x")
        return pipe

    ours, stock = loaded(out / "diffusers" / unit), loaded(kohya_file)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        a = get_peft_model_state_dict(getattr(ours, part), adapter_name="x")
        b = get_peft_model_state_dict(getattr(stock, part), adapter_name="x")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        assert (getattr(stock, part).peft_config["x"].r, getattr(stock, part).peft_config["x"].lora_alpha) == (4, 8)


def test_transformer_family_export_writes_diffusers_files_only(family_models, tiny_models, toy_data, tmp_path):
    from datadream.config import load_config
    from datadream.export import export
    from datadream.runs import init_run
    from datadream.stages.adapt import adapt

    models = {**tiny_models, "sd": family_models["sd3"]}
    config = write_config(tmp_path / "exp.yaml", tiny_config(models, toy_data / "train",
                                                             adapt={"mode": "dataset", "epochs": 1}))
    run = init_run(load_config(config), tmp_path / "run").layout.root
    adapt(run)
    out = export(run, tmp_path / "export", "adapters")
    assert sorted(p.name for p in out.iterdir()) == ["diffusers"]
    assert (out / "diffusers" / "dataset" / LORA_WEIGHTS).is_file()


class _Encoder:
    """Stands in for a text encoder: records where it is moved and where it runs."""

    def __init__(self, log: list, name: str):
        self.log, self.name, self.device = log, name, "cpu"

    def to(self, device):
        self.device = str(device)
        self.log.append((self.name, "to", self.device))
        return self

    def __call__(self, ids, **kwargs):
        self.log.append((self.name, "runs on", self.device))
        return (ids,)


@pytest.mark.parametrize("train_text_encoder, offloaded", [
    (True, {"text_encoder_3"}), (False, {"text_encoder", "text_encoder_2", "text_encoder_3"})])
def test_offloaded_text_encoders_visit_the_device_only_to_encode(train_text_encoder, offloaded):
    from types import SimpleNamespace

    import torch

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.families.model import family_model

    log: list = []
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    pipeline = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(block_out_channels=(1, 2))),
                               **{name: _Encoder(log, name) for name in names})
    model = family_model(pipeline, FAMILIES["sd3"], torch.device("cuda:0"), torch.float32)
    model.place_encoders(offload=True, train_text_encoder=train_text_encoder)
    assert model.offloaded == offloaded
    assert {name: getattr(pipeline, name).device for name in names} == {
        name: "cpu" if name in offloaded else "cuda:0" for name in names}
    log.clear()
    model.run_encoder("text_encoder_3", torch.zeros(1))
    assert log == [("text_encoder_3", "to", "cuda:0"), ("text_encoder_3", "runs on", "cuda:0"),
                   ("text_encoder_3", "to", "cpu")]


def test_eight_bit_adam_without_bitsandbytes_is_one_line_before_any_work(tiny_models, toy_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train",
                                                             adapt={"optimizer": "adamw8bit"}))
    result = run_cli("run", config, tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "adapt.optimizer=adamw8bit needs bitsandbytes" in result.stderr
    assert not (tmp_path / "run").exists()


def test_single_file_checkpoint_with_another_familys_configs_is_refused(family_models, tmp_path):
    from datadream.components.loading.models import check_generator_reachable, load_generator

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    for call in (lambda: check_generator_reachable(str(checkpoint), str(family_models["sdxl"])),
                 lambda: load_generator(str(checkpoint), config=str(family_models["sdxl"]))):
        with pytest.raises(UserError, match="is a model of the SDXL family; single-file checkpoints are read as SD 1.x/2.x only"):
            call()


@pytest.mark.parametrize("name, expected", [
    # Millions of parameters of the published models (SDXL base 1.0, SD 3.5 Medium, FLUX.1-dev).
    ("sdxl", {"unet": 2567.5, "text_encoder": 123.1, "text_encoder_2": 694.7}),
    ("sd3", {"transformer": 2243.2, "text_encoder": 123.7, "text_encoder_2": 694.7, "text_encoder_3": 4762.3}),
    ("flux", {"transformer": 11901.4, "text_encoder": 123.1, "text_encoder_2": 4762.3}),
])
def test_full_size_random_family_models_have_the_published_sizes(name, expected):
    """The GPU benchmarks' random models are the published architectures (counted on the meta
    device: nothing is allocated)."""
    from datadream.components.testmodels.families import random_family_pipeline

    pipeline = random_family_pipeline(name, "meta")
    counts = {part: round(sum(p.numel() for p in getattr(pipeline, part).parameters()) / 1e6, 1) for part in expected}
    assert counts == expected


def test_plan_prices_each_family_with_its_own_counted_costs(family_models, tiny_models, toy_data, tmp_path):
    """FLUX's step is priced from FLUX's count, not SD 2.1's; a family that cannot be read here is
    priced as SD 2.1 and said to be."""
    from datadream import costs
    from datadream.config import load_config
    from datadream.plan import make_plan
    from datadream.plan import with_family_defaults

    def adapt_flops(models, **overrides):
        config = load_config(write_config(tmp_path / "exp.yaml", tiny_config(models, toy_data / "train", **overrides)))
        with_family_defaults(config)
        return config, make_plan(config, gpu="80").stage("adapt").flops

    flux_config, flux = adapt_flops({**tiny_models, "sd": family_models["flux"]}, adapt={"train_text_encoder": False})
    sd_config, sd = adapt_flops(tiny_models, adapt={"train_text_encoder": False})
    assert (flux_config.generator.family, sd_config.generator.family) == ("flux", "sd")
    # Same shots, steps and crop size: the ratio is the denoisers' at that size (VAE aside).
    vae = costs.value("sd_vae_encode_flops") * (32 / 512) ** 2
    ratio = ((costs.family_value("flux", "denoiser_lora_train_flops") * (32 / 1024) ** 2 + vae)
             / (costs.family_value("sd", "denoiser_lora_train_flops") * (32 / 512) ** 2 + vae))
    assert flux / sd == pytest.approx(ratio, rel=1e-9)
    result = run_cli("plan", write_config(tmp_path / "gone.yaml", tiny_config(
        {**tiny_models, "sd": tmp_path / "no-such-model"}, toy_data / "train")), "--gpu", "80")
    assert "could not be read here" in result.stdout and "priced as SD 2.1-base" in result.stdout


@pytest.mark.parametrize("name, dynamic, shift", [("sd3", False, 3.0), ("flux", True, 3.0), ("flux", False, 1.0)])
def test_training_sigmas_are_shifted_as_the_sampler_shifts_them(family_models, name, dynamic, shift):
    """The flow families draw σ = shift(sigmoid(n)) with the very shift the scheduler applies to
    its sampling sigmas (FLUX.1-dev: the resolution-dependent mu; SD 3: its fixed shift;
    FLUX.1-schnell: shift 1, none), so training visits the noise levels sampling visits."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.families.model import family_model
    from datadream.components.loading.models import load_generator
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipeline = load_generator(str(family_models[name]))
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipeline.scheduler.config, use_dynamic_shifting=dynamic, shift=shift)
    model = family_model(pipeline, FAMILIES[name], torch.device("cpu"), torch.float32, resolution=TINY)
    steps = 8
    unshifted = np.linspace(1.0, 1 / steps, steps)
    if dynamic:
        config = pipeline.scheduler.config
        mu = calculate_shift(model.tokens_per_side() ** 2, config.base_image_seq_len, config.max_image_seq_len,
                             config.base_shift, config.max_shift)
        pipeline.scheduler.set_timesteps(sigmas=unshifted, mu=mu)
    else:
        pipeline.scheduler.set_timesteps(sigmas=unshifted)
    sampling = pipeline.scheduler.sigmas[:-1].double()  # the last one is the final 0
    ours = model.shift(torch.tensor(unshifted)).double()
    assert torch.allclose(ours, sampling, atol=1e-5), (ours, sampling)
    if shift == 1.0 and not dynamic:
        assert torch.allclose(ours, torch.tensor(unshifted), atol=1e-6)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_training_conditioning_is_the_stock_pipelines_encode_prompt(family_models, tiny_models, name):
    """What the denoiser is trained on is, bit for bit, what the stock pipeline feeds it at sampling."""
    import torch

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.families.model import family_model
    from datadream.components.loading.models import load_generator

    pipeline = load_generator(str(tiny_models["sd"] if name == "sd" else family_models[name]))
    model = family_model(pipeline, FAMILIES[name], torch.device("cpu"), torch.float32, resolution=TINY)
    prompts = ["a photo of a circle", "a pet photo of a Maine Coon"]
    with torch.no_grad():
        ours = model.encode(model.prompts(prompts))
        if name == "sd":
            stock = {"text": pipeline.encode_prompt(prompts, "cpu", 1, False)[0]}
        elif name == "sdxl":
            text, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
            stock = {"text": text, "pooled": pooled}
        elif name == "sd3":
            text, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device="cpu", do_classifier_free_guidance=False,
                                                        max_sequence_length=model.t5_length())
            stock = {"text": text, "pooled": pooled}
        else:
            text, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", max_sequence_length=model.t5_length())
            stock = {"text": text, "pooled": pooled}
    assert set(ours.tensors) == set(stock)
    for key, value in stock.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name, guidance_embeds, tokens", [("flux", True, 512), ("flux", False, 256),
                                                          ("sd3", None, 256)])
def test_t5_reads_the_published_prompt_length(family_models, name, guidance_embeds, tokens):
    """FLUX.1-dev reads 512 T5 tokens, FLUX.1-schnell (no guidance embedding) 256, SD 3 256; the
    tiny models' tokenizers take fewer, so their limit is lifted here to see the published one."""
    import torch

    from datadream.components.generators.families import FAMILIES
    from datadream.components.generators.families.model import family_model
    from datadream.components.loading.models import load_generator

    pipeline = load_generator(str(family_models[name]))
    if guidance_embeds is not None:
        pipeline.transformer.register_to_config(guidance_embeds=guidance_embeds)
    model = family_model(pipeline, FAMILIES[name], torch.device("cpu"), torch.float32, resolution=TINY)
    model.t5_tokenizer.model_max_length = 10_000
    assert model.t5_length() == tokens
    assert model.sample_kwargs()["max_sequence_length"] == tokens


@pytest.mark.parametrize("overrides, message", [
    ({"adapt": {"resolution": 40}}, "adapt.resolution=40: SD 3/3.5 takes images whose sides are multiples of 16"),
    ({"synthesize": {"resolution": 24}}, "synthesize.resolution=24: SD 3/3.5 takes images whose sides are multiples"),
    ({"synthesize": {"sampler": "dpm++"}}, "synthesize.sampler=dpm++: SD 3/3.5 samples by flow matching"),
])
def test_settings_a_flow_family_cannot_take_stop_the_run_before_any_work(family_models, tiny_models, toy_data,
                                                                         tmp_path, overrides, message):
    config = write_config(tmp_path / "exp.yaml", tiny_config({**tiny_models, "sd": family_models["sd3"]},
                                                             toy_data / "train", **overrides))
    result = run_cli("run", config, tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_sd3_folder_without_t5_is_one_line(family_models, tmp_path):
    """SD 3 saved without T5 (its pipeline can feed zeros instead): datadream loads every text
    encoder of a family, and stock from_pretrained refuses the folder; that is one line."""
    from diffusers import StableDiffusion3Pipeline

    from datadream.components.loading.models import load_generator

    pipeline = StableDiffusion3Pipeline.from_pretrained(family_models["sd3"])
    pipeline.text_encoder_3 = pipeline.tokenizer_3 = None
    pipeline.register_modules(text_encoder_3=None, tokenizer_3=None)
    pipeline.save_pretrained(tmp_path / "no-t5")
    with pytest.raises(UserError, match=r"cannot load SD 3/3.5 model .*text_encoder_3.*complete diffusers model") as err:
        load_generator(str(tmp_path / "no-t5"))
    assert "\n" not in str(err.value)


def test_hub_downloads_fetch_sharded_weights_and_the_t5_tokenizer():
    """SD 3's and FLUX's transformers and T5 come in shards, T5's tokenizer as spiece.model; the
    original single files at the repository root are not fetched."""
    from fnmatch import fnmatch

    from datadream.components.loading.hub import NEEDED_PATTERNS

    def fetched(path: str) -> bool:
        return any(fnmatch(path, pattern) for pattern in NEEDED_PATTERNS)

    for path in ("transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
                 "text_encoder_3/model-00002-of-00002.safetensors", "tokenizer_3/spiece.model",
                 "transformer/diffusion_pytorch_model.safetensors.index.json", "unet/diffusion_pytorch_model.safetensors"):
        assert fetched(path), path
    for path in ("sd3.5_medium.safetensors", "flux1-dev.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"):
        assert not fetched(path), path


def _config_without(models, toy_data, tmp_path, drop: dict[str, list[str]], **sections):
    """A tiny config whose listed keys are left unset (as a user who never wrote them)."""
    from conftest import tiny_config, write_config
    from datadream.config import load_config

    raw = tiny_config(models, toy_data / "train", **sections)
    for section, keys in drop.items():
        for key in keys:
            raw[section].pop(key, None)
    return load_config(write_config(tmp_path / "exp.yaml", raw))


UNSET = {"adapt": ["resolution"], "synthesize": ["resolution", "steps", "guidance"]}


def test_unset_settings_follow_the_generator_family_and_are_recorded(family_models, tiny_models, toy_data, tmp_path):
    from datadream.config import read_config_file
    from datadream.runs import init_run

    config = _config_without({**tiny_models, "sd": family_models["sdxl"]}, toy_data, tmp_path, UNSET)
    run = init_run(config, tmp_path / "run")
    recorded = read_config_file(run.layout.config)
    assert recorded.generator.family == "sdxl"
    assert (recorded.adapt.resolution, recorded.synthesize.resolution) == (32, 32)  # the tiny UNet's native size
    assert (recorded.synthesize.steps, recorded.synthesize.guidance) == (50, 5.0)  # SDXL's, not SD 2.1's
    # The method's family keeps the method's guidance and steps.
    config = _config_without(tiny_models, toy_data, tmp_path, UNSET)
    sd = read_config_file(init_run(config, tmp_path / "sd-run").layout.config)
    assert (sd.generator.family, sd.synthesize.steps, sd.synthesize.guidance) == ("sd", 50, 2.0)


def test_set_settings_that_differ_from_the_family_are_kept_with_one_warning(family_models, tiny_models, toy_data,
                                                                             tmp_path, caplog):
    import logging

    from datadream.runs import init_run

    config = _config_without({**tiny_models, "sd": family_models["sdxl"]}, toy_data, tmp_path, {},
                             synthesize={"guidance": 2.0})
    with caplog.at_level(logging.WARNING, logger="datadream"):
        run = init_run(config, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "synthesize.guidance=2 (trained: 5)" in warnings[0] and "SDXL" in warnings[0]
    assert run.config.synthesize.guidance == 2.0


def test_native_resolution_is_read_from_the_denoiser_and_vae_configs(tmp_path):
    """SD 2.1 (768-v) is trained at 768 px: 96 latent pixels x 8."""
    import json

    from datadream.components.generators.families import FAMILIES, native_resolution

    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"sample_size": 96}))
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
    assert native_resolution(str(tmp_path), FAMILIES["sd"]) == 768
    (tmp_path / "unet" / "config.json").unlink()  # unreadable: the family's usual size
    assert native_resolution(str(tmp_path), FAMILIES["sdxl"]) == 1024


def test_flux_trains_and_samples_with_one_guidance(family_models, tiny_models, toy_data, tmp_path):
    """FLUX.1-dev's embedded guidance is synthesize.guidance in training too: it is part of the
    adapter's fingerprint there, and only there."""
    from datadream.runs import init_run
    from datadream.units import adapter_specs

    def fingerprints(models, name, guidance):
        config = _config_without(models, toy_data, tmp_path, {}, synthesize={"guidance": guidance})
        return [s.fingerprint for s in adapter_specs(init_run(config, tmp_path / name))]

    flux = {**tiny_models, "sd": family_models["flux"]}
    assert fingerprints(flux, "flux-a", 3.5) != fingerprints(flux, "flux-b", 2.0)
    assert fingerprints(tiny_models, "sd-a", 3.5) == fingerprints(tiny_models, "sd-b", 2.0)
    from datadream.runs import open_run
    from datadream.stages.adapt import _trainer

    run = open_run(tmp_path / "flux-b")
    assert _trainer(run).model.guidance == 2.0  # what the transformer's guidance input gets
