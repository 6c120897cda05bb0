import subprocess
import sys

from conftest import run_cli


def test_help_is_fast_and_light():
    code = (
        "import sys\nfrom datadream.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "datadream init" in result.stdout
    run_help = subprocess.run([sys.executable, "-m", "datadream", "run", "--help"], capture_output=True, text=True)
    assert "report" in run_help.stdout and "RUN/report/index.html" in run_help.stdout


def test_demo_runs_end_to_end_and_says_its_models_are_random(tmp_path):
    result = run_cli("demo", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "tiny RANDOM-WEIGHT models" in result.stdout
    run = tmp_path / "demo" / "run"
    assert len(list((run / "synthetic").rglob("*.png"))) == 4 * 8
    assert len((run / "synthetic" / "index.jsonl").read_text().splitlines()) == 4 * 8
    again = run_cli("demo", tmp_path / "demo")  # idempotent: everything is already complete
    assert again.returncode == 0 and "0 of 4 shard(s) to generate" in again.stderr
    for stage in ("adapt", "synthesize", "index", "train", "evaluate", "run"):  # what a batch budget is planned from
        assert f"{stage}: wall time" in result.stderr


def test_tiny_models_command_writes_standard_folders(tmp_path):
    result = run_cli("tiny-models", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "sd" / "model_index.json").is_file()
    assert (tmp_path / "m" / "clip" / "config.json").is_file()
    from transformers import CLIPModel, CLIPTokenizer

    CLIPModel.from_pretrained(tmp_path / "m" / "clip")
    assert len(CLIPTokenizer.from_pretrained(tmp_path / "m" / "clip")) > 2
