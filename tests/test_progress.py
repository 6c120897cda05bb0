"""Progress in batch logs (timed plain lines, on a fake clock) and on terminals (tqdm), and the
CLI's -v switch for library logs. Nothing here sleeps."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from datadream.progress import INTERVAL_ENV, LineProgress, format_duration, progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "datadream.progress"]


def test_batch_log_gets_a_line_every_interval_with_rate_eta_and_loss(caplog, monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="datadream.progress")
    clock = FakeClock()
    bar = progress(total=400, desc="adapt [1/2] cat", unit="step", stream=io.StringIO(), clock=clock)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        clock.now += 1.0  # one step per second: a line every 30 steps
        bar.update()
        bar.set_postfix(loss="0.1432")
    lines = progress_lines(caplog)
    assert len(lines) == 3
    assert lines[0] == "adapt [1/2] cat: 30/400 step (8%), 1 step/s, ETA 6m10s, loss 0.1432"
    bar.close()
    final = progress_lines(caplog)[-1]
    assert final.startswith("adapt [1/2] cat: 100/400 step (25%)") and "took 1m40s" in final


def test_interval_comes_from_the_environment(caplog, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    caplog.set_level(logging.INFO, logger="datadream.progress")
    clock = FakeClock()
    bar = progress(total=20, desc="synthesize", unit="img", stream=io.StringIO(), clock=clock)
    for _ in range(20):
        clock.now += 1.0
        bar.update()
    assert len(progress_lines(caplog)) == 3  # at 5, 10 and 15 images; the end is close()'s
    bar.close()
    assert len(progress_lines(caplog)) == 4
    assert "ETA" in progress_lines(caplog)[0] and "img/s" in progress_lines(caplog)[0]


def test_wrapping_an_iterable_counts_it_and_closes(caplog, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    caplog.set_level(logging.INFO, logger="datadream.progress")
    clock = FakeClock()
    seen = []
    for item in progress(range(7), desc="evaluate", unit="batch", stream=io.StringIO(), clock=clock):
        seen.append(item)
        clock.now += 1.0
    assert seen == list(range(7))
    lines = progress_lines(caplog)
    assert lines[0].startswith("evaluate: 5/7 batch (71%)")
    assert lines[-1].startswith("evaluate: 7/7 batch (100%)") and "took 7s" in lines[-1]
    assert len(lines) == 2  # the end is reported once, by close()


def test_a_short_loop_leaves_the_log_alone(caplog):
    caplog.set_level(logging.INFO, logger="datadream.progress")
    clock = FakeClock()
    assert [i for i in progress(range(3), desc="validate", stream=io.StringIO(), clock=clock)] == [0, 1, 2]
    assert not progress_lines(caplog)


def test_resumed_bar_rates_only_new_work(caplog):
    caplog.set_level(logging.INFO, logger="datadream.progress")
    clock = FakeClock()
    bar = progress(total=100, initial=60, desc="adapt", unit="step", stream=io.StringIO(), clock=clock)
    clock.now += 40
    bar.update(40)
    bar.close()
    assert "100/100 step (100%), 1 step/s" in progress_lines(caplog)[-1]


def test_terminal_gets_a_tqdm_bar_and_disabled_gets_nothing(caplog):
    from tqdm import tqdm

    caplog.set_level(logging.INFO, logger="datadream.progress")
    stream = Terminal()
    bar = progress(total=3, desc="adapt", stream=stream)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "adapt" in stream.getvalue()
    silent = progress(total=3, desc="probe", disable=True, stream=io.StringIO())
    silent.update(3)
    silent.close()
    assert not progress_lines(caplog)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 * 2 + 5)] == ["0s", "59s", "1m01s", "2h00m05s"]


LIBRARY_LOG = (
    "import sys, warnings\n"
    "from datadream.cli import _configure_logging\n"
    "_configure_logging(quiet=False, verbose={verbose})\n"
    "import transformers\n"
    "transformers.utils.logging.get_logger('transformers.modeling_utils').warning('LIBRARY-CHATTER')\n"
    "warnings.warn('LIBRARY-DEPRECATION', FutureWarning)\n"
)


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_shows_library_logs_and_default_hides_them(verbose):
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", LIBRARY_LOG.format(verbose=verbose)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("LIBRARY-CHATTER" in done.stderr) == verbose
    assert ("LIBRARY-DEPRECATION" in done.stderr) == verbose


def test_cli_accepts_verbose():
    from datadream.cli import build_parser

    assert build_parser().parse_args(["-v", "plan", "--classes", "2"]).verbose


class FakeTensorBoard:
    def __init__(self) -> None:
        self.scalars: list[tuple] = []
        self.closed = False

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_wandb_gets_the_curves_when_asked_for(monkeypatch):
    import types

    from datadream import tracking
    from datadream.config import load_config

    calls: dict = {"log": []}

    class FakeRun:
        def log(self, values, step):
            calls["log"].append((values, step))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    config = load_config(None, ["runtime.wandb_project=dd"])
    writer = tracking.CurveWriter(FakeTensorBoard(), tracking._wandb_run(config, "pets run"))
    writer.add_scalar("train/loss", 0.5, 3)
    writer.close()
    assert calls["init"]["project"] == "dd" and calls["init"]["config"]["runtime"]["wandb_project"] == "dd"
    assert calls["init"]["id"].startswith("pets-run-")
    assert calls["log"] == [({"train/loss": 0.5}, 3)] and calls["finished"]
    assert writer.tensorboard.scalars == [("train/loss", 0.5, 3)] and writer.tensorboard.closed


def test_wandb_off_by_default_and_skipped_when_missing(monkeypatch, caplog):
    from datadream import tracking
    from datadream.config import load_config

    assert tracking._wandb_run(load_config(None), "run") is None
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with caplog.at_level(logging.WARNING, logger="datadream.tracking"):
        assert tracking._wandb_run(load_config(None, ["runtime.wandb_project=dd"]), "run") is None
    assert "wandb is not installed" in caplog.text
