import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, tiny_config, write_config


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


# What the command may import of datadream: the API it is a layer over, the error it turns into an
# exit status, and the runner registry whose names `--runner` offers when the parser is built.
CLI_MAY_IMPORT = {"datadream.api", "datadream.errors", "datadream.registry"}


def test_the_command_line_is_a_layer_over_the_api_only():
    import ast

    import datadream.cli

    imported = set()
    for node in ast.walk(ast.parse(Path(datadream.cli.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "datadream":
            imported |= {f"datadream.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    ours = {name for name in imported if name.split(".")[0] == "datadream"}
    assert "datadream.api" in ours and ours <= CLI_MAY_IMPORT, sorted(ours - CLI_MAY_IMPORT)


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


def start_run(config, run, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datadream", "-q", "run", str(config), str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, **popen)


def wait_for(process: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the run ended or stalled before {what}: {process.communicate()[1][-2000:]}")


def assert_stopped_with_resume_line(process: subprocess.Popen, code: int) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "datadream: interrupted; run the same command again to resume"


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_run_says_how_to_resume_and_keeps_its_files(tmp_path, tiny_models, toy_data, stop, code):
    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train", adapt={"epochs": 500}))
    run = tmp_path / "run"
    process = start_run(config, run)
    wait_for(process, (run / "fewshot.json").is_file, "it was initialised")  # then on its way to the adapters
    process.send_signal(stop)
    assert_stopped_with_resume_line(process, code)
    assert (run / "config.yaml").is_file() and (run / "fewshot.json").is_file()


def loader_workers_started(pid: int) -> int:
    """Children of `pid` whose SIGTERM handler is set (SigCgt): loader workers past their start."""
    count = 0
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        caught, blocked = (int(fields[key], 16) & 1 << (signal.SIGTERM - 1) for key in ("SigCgt", "SigBlk"))
        count += bool(caught and not blocked)
    return count


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from /proc")
def test_sigterm_to_the_whole_job_with_loader_workers_is_the_same_one_line(tmp_path, tiny_models, toy_data):
    """A batch scheduler stops every process of a job: the DataLoader workers too."""
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", classifier={"train_on": "real", "epochs": 500, "workers": 2}))
    process = start_run(config, tmp_path / "run", start_new_session=True)
    wait_for(process, lambda: loader_workers_started(process.pid) >= 2, "its loader workers started")
    os.killpg(process.pid, signal.SIGTERM)
    assert_stopped_with_resume_line(process, 143)


def test_a_stop_that_a_finalizer_swallowed_is_sent_again():
    """Python drops an exception raised in a finalizer or an at-fork hook; the stop it carried is not."""
    from types import SimpleNamespace

    from datadream.cli import Terminated, _resend_stops

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        hook = _resend_stops(lambda unraisable: seen.append(type(unraisable.exc_value).__name__))
        hook(SimpleNamespace(exc_value=ValueError()))  # anything else goes to the hook as before
        hook(SimpleNamespace(exc_value=Terminated()))
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["ValueError", signal.SIGTERM]


def test_the_suite_runs_commands_forked_where_a_fresh_interpreter_would_do_the_same(monkeypatch, tiny_models):
    """Forked from a server that imported the libraries once (cli_process.py); what the CLI sets
    itself (an in-process main() leaves it in os.environ) and what torch set while the tiny models
    were built do not force a fresh interpreter, a variable a library reads while it is imported
    does."""
    import cli_process

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    result = run_cli("--help")
    assert (result.returncode, cli_process.last_way) == (0, "forked"), result.stderr
    assert "usage: datadream" in result.stdout
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    assert run_cli("--help").returncode == 0
    assert cli_process.last_way == "fresh"
