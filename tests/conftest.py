"""Shared fixtures: tiny random models (built once per session), toy image folders, and helpers
that run `python -m datadream` and the benchmark scripts in processes of their own (forked, see
cli_process.py). Nothing here touches the network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import cli_process

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
cli_process.set_session_environment({**os.environ, "PYTHONUNBUFFERED": "1"})



def pytest_terminal_summary(terminalreporter) -> None:
    if cli_process.ways:
        terminalreporter.write_line("commands the tests ran: " + ", ".join(
            f"{count} {way}" for way, count in cli_process.ways.most_common()))


TINY = 32  # pixels: the resolution the tiny generator is built for


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from datadream.components.testmodels.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SDXL, SD 3 and FLUX models (each family folder's testmodel.py); SD's is in
    tiny_models."""
    from datadream.components.testmodels.families import tiny_builders

    root = tmp_path_factory.mktemp("tiny-families")
    return {name: build(root / name) for name, build in tiny_builders().items() if name != "sd"}


@pytest.fixture()
def generator_models(request, tiny_models, family_models) -> dict[str, Path]:
    """tiny_models with the generator of the family the test is parametrized with (`family`)."""
    family = request.getfixturevalue("family")
    return tiny_models if family == "sd" else {**tiny_models, "sd": family_models[family]}


@pytest.fixture(scope="session")
def toy_generator(request) -> Path:
    """The tiny generator pretrained on toy images (components/testmodels/toy_pretrain.py): the
    shipped one, or, for a changed recipe, built once into pytest's cache folder, where
    DATADREAM_CACHE points the demo's subprocesses."""
    from datadream.components.testmodels.toy_pretrain import toy_generator as build

    os.environ["DATADREAM_CACHE"] = str(request.config.cache.mkdir("datadream"))
    return build()


@pytest.fixture()
def toy_data(tmp_path) -> Path:
    from datadream.data.toy import write_toy_dataset

    return write_toy_dataset(tmp_path / "data", {"train": 5, "val": 2, "test": 3}, size=40)


def tiny_config(models: dict[str, Path], train: Path, **sections) -> dict:
    """A config dict for a fast run on the tiny generator; `sections` override per section."""
    config = {
        "data": {"train": str(train), "shots": 3},
        "generator": {"model": str(models["sd"])},
        "adapt": {"epochs": 2, "batch_size": 2, "warmup_steps": 1, "resolution": TINY, "rank": 4, "alpha": 8},
        "synthesize": {"images_per_class": 3, "steps": 3, "batch_size": 2, "resolution": TINY},
        "classifier": {"model": str(models["clip"]), "epochs": 2, "warmup": 0.5, "batch_size": 8,
                       "workers": 0, "eval_batch_size": 16},
        "runtime": {"device": "cpu"},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_config(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_cli(*args: str, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m datadream ARGS` in a process of its own, as a user runs it (cli_process.py: forked
    from a server that imported torch and diffusers once; `fresh`: a fresh interpreter, with its own
    hash seed, for tests of what two processes do alike)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if fresh:
        env["DATADREAM_TEST_SUBPROCESS"] = "1"
    return cli_process.run_python("datadream", [str(arg) for arg in args], env, timeout)


def start_cli(*args: str):
    """`python -m datadream ARGS` started as run_cli runs it; a Popen-like handle (poll, wait,
    communicate, send_signal, kill, pid, returncode)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return cli_process.start_python("datadream", [str(arg) for arg in args], env)


def run_script(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (a benchmark script), as run_cli runs a command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return cli_process.run_python(str(script), [str(arg) for arg in args], env, timeout)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its content, for before/after comparisons."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
