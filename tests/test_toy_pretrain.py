"""The demo's pretrained tiny generator: captions that never name a shape, a build that is cached
by recipe and safe against a killed build, a marker that says what the model is. (That it learns
is the demo test's job, tests/test_cli.py.)"""

from __future__ import annotations

import pytest

from datadream.components.testmodels import toy_pretrain


@pytest.fixture()
def quick_recipe(monkeypatch):
    monkeypatch.setitem(toy_pretrain.RECIPE, "images", 16)
    monkeypatch.setitem(toy_pretrain.RECIPE, "vae_steps", 2)
    monkeypatch.setitem(toy_pretrain.RECIPE, "unet_steps", 2)
    monkeypatch.setitem(toy_pretrain.RECIPE, "batch_size", 4)


def test_captions_name_colours_never_shapes():
    from datadream.components.testmodels.toy_world import TOY_CLASSES

    images, captions = toy_pretrain.toy_world(200, seed=1)
    assert images.shape == (200, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    assert not any(shape in caption for caption in captions for shape in TOY_CLASSES)
    named = [c for c in captions if any(f" {colour} " in c for colour in toy_pretrain.COLOURS)]
    assert 0.5 < len(named) / len(captions) < 0.9  # often, not always: "a photo of a thing" stays generic


def test_build_is_cached_by_recipe_and_replaces_leftovers(tmp_path, monkeypatch, quick_recipe, capsys):
    from diffusers import StableDiffusionPipeline

    from datadream.components.testmodels.tiny import tiny_model_note

    monkeypatch.setenv("DATADREAM_CACHE", str(tmp_path))
    folder = toy_pretrain.toy_generator()
    assert "pretraining the tiny generator" in capsys.readouterr().out
    assert "pretrained for a few CPU minutes on toy shapes" in tiny_model_note(str(folder))
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the trained latents
    weights = sorted(folder.rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    assert toy_pretrain.toy_generator() == folder and "pretraining" not in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in weights] == stamps  # reused, not rebuilt
    (folder / toy_pretrain.RECIPE_FILE).unlink()  # as a build killed before its last write
    assert toy_pretrain.toy_generator() == folder and (folder / toy_pretrain.RECIPE_FILE).is_file()
    assert not list(tmp_path.glob("*.building-*"))
    monkeypatch.setitem(toy_pretrain.RECIPE, "unet_steps", 3)
    assert toy_pretrain.toy_generator() != folder  # another recipe, another folder


def test_the_shipped_generator_is_the_one_this_recipe_builds(capsys):
    """The package ships the recipe's folder (the demo starts at once). A changed recipe ships its
    own build: toy_pretrain.build_pretrained_tiny_stable_diffusion(FOLDER), then FOLDER's files
    replace src/datadream/resources/toy-generator's."""
    assert toy_pretrain.is_built(toy_pretrain.SHIPPED), "resources/toy-generator was built by another recipe"
    assert toy_pretrain.toy_generator() == toy_pretrain.SHIPPED
    assert "pretraining" not in capsys.readouterr().out
