import subprocess
import sys

import pytest
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


@pytest.mark.slow
def test_demo_learns_and_says_what_it_shows(tmp_path, toy_generator):
    """The evidence that the method learns, on the CPU: adapting the pretrained tiny generator to
    4 shots moves every class's synthetic images toward held-out real images of the class, and a
    classifier trained on those images alone beats chance clearly (and the un-adapted generator)."""
    from datadream.demo import learning_evidence

    result = run_cli("demo", tmp_path / "demo", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "tiny models built in code" in result.stdout and "learning:" in result.stdout
    demo = tmp_path / "demo"
    evidence = learning_evidence(demo / "run", demo / "run-unadapted")
    for name, distance in evidence["fd_to_heldout"].items():
        assert distance["adapted"] < distance["unadapted"], (name, evidence)
    assert evidence["top1"]["adapted"] >= evidence["chance"] + 25, evidence  # 64 test images: chance ± 5.4
    assert evidence["top1"]["adapted"] > evidence["top1"]["unadapted"], evidence
    run = demo / "run"
    assert len((run / "synthetic" / "index.jsonl").read_text().splitlines()) == 4 * 16
    assert (demo / "compare" / "index.html").is_file() and (run / "report" / "index.html").is_file()
    for stage in ("adapt", "synthesize", "index", "train", "evaluate", "run"):  # what a batch budget is planned from
        assert f"{stage}: wall time" in result.stderr
    again = run_cli("demo", tmp_path / "demo")  # idempotent: everything is already complete
    assert again.returncode == 0 and "0 of 4 shard(s) to generate" in again.stderr
    assert "pretraining the tiny generator" not in again.stdout


def test_tiny_models_command_writes_standard_folders(tmp_path):
    result = run_cli("tiny-models", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "sd" / "model_index.json").is_file()
    assert (tmp_path / "m" / "clip" / "config.json").is_file()
    from transformers import CLIPModel, CLIPTokenizer

    CLIPModel.from_pretrained(tmp_path / "m" / "clip")
    assert len(CLIPTokenizer.from_pretrained(tmp_path / "m" / "clip")) > 2
