"""`python -m datadream ARGS` (and the benchmark scripts) for the tests, without paying their
imports each time.

Importing torch, diffusers, transformers and peft takes about 5 s of a tiny command's 6 on the
2-core machine, and the suite runs over a hundred commands. So a command runs in a process forked
from a server that imported them once (multiprocessing's forkserver): a process of its own, with
its own exit code, signals, threads, stdout and stderr, started from an interpreter that has done
nothing but import. Where that could differ from a fresh interpreter, a fresh one runs the command:
when the environment differs from the server's in a variable a library reads while it is imported
(HF_HUB_OFFLINE, HF_HOME, OMP_NUM_THREADS, ...), and always with DATADREAM_TEST_SUBPROCESS=1, which
runs the whole suite the slow, literal way. tests/test_cli.py starts the real console entry point
itself."""

from __future__ import annotations

import atexit
import collections
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# What a command imports before its work starts; the server imports these once.
PRELOAD = [
    "torch", "diffusers", "transformers", "peft", "safetensors.torch", "PIL.Image", "yaml",
    "diffusers.models", "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "transformers.models.clip.modeling_clip",
    "datadream.cli", "datadream.api", "datadream.pipeline", "datadream.stages.adapt",
    "datadream.stages.synthesize", "datadream.stages.train", "datadream.stages.evaluate",
    "datadream.stages.inspect", "datadream.components.loading.models", "datadream.report",
]
# Read by a library when it is imported, so the server's value would win over the command's.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "DIFFUSERS", "TORCH", "PYTORCH", "XDG_",
                        "OMP_", "MKL_", "CUDA", "TOKENIZERS", "LC_", "LANG", "PYTHONPATH", "PYTHONHASHSEED")

# What the CLI sets itself before it loads a library, and, for libraries already loaded, through
# their loggers (cli._configure_logging): a server started with them behaves as a fresh process.
CLI_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

# Set by a library in the test process to the value it would take anyway (torch's compile cache).
LIBRARY_SET = {"TORCHINDUCTOR_CACHE_DIR"}

_server: multiprocessing.context.BaseContext | None = None
_server_env: dict[str, str] = {}
last_way = ""  # "forked" or "fresh": how the last command ran, for the test that keeps this fast
ways: collections.Counter = collections.Counter()  # shown at the end of the session (conftest)


def set_session_environment(env: dict[str, str]) -> None:
    """The environment the server imports under (conftest's, before any test changes it)."""
    global _server_env
    _server_env = {**CLI_DEFAULTS, **env}


def _forked_server() -> multiprocessing.context.BaseContext:
    """The server, started on the first command that it can run."""
    global _server
    if _server is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(_server_env)
        try:
            multiprocessing.forkserver.ensure_running()  # it inherits this environment
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _server = context
    return _server


def _import_time_difference(env: dict[str, str]) -> list[str]:
    names = (set(env) | set(_server_env)) - LIBRARY_SET
    return sorted(name for name in names
                  if name.startswith(IMPORT_TIME_PREFIXES) and env.get(name) != _server_env.get(name))


def _command(target: str, args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """The forked process: `python -m TARGET ARGS` (or `python TARGET.py ARGS`) from here on, exit
    code included."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    script = target.endswith(".py")
    sys.argv = [target, *args]
    code = 0
    try:
        if script:
            sys.path.insert(0, str(Path(target).parent))  # as `python script.py` puts its folder first
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = 1 if isinstance(stop.code, str) else (stop.code or 0)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # os._exit skips them, and a fresh interpreter would run them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ForkedCommand:
    """A started command with the parts of subprocess.Popen's interface the tests use."""

    def __init__(self, server, target: str, args: list[str], env: dict[str, str]):
        self.args = _command_line(target, args)
        self._folder = tempfile.TemporaryDirectory(prefix="datadream-cli-")
        self._out, self._err = Path(self._folder.name, "stdout"), Path(self._folder.name, "stderr")
        self._out.touch()
        self._err.touch()
        self._process = server.Process(target=_command,
                                              args=(target, args, env, os.getcwd(), str(self._out), str(self._err)))
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired as stopped:
            stopped.output, stopped.stderr = self._read()
            raise
        return self._read()

    def _read(self) -> tuple[str, str]:
        return (self._out.read_text(encoding="utf-8", errors="replace"),
                self._err.read_text(encoding="utf-8", errors="replace"))

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _command_line(target: str, args: list[str]) -> list[str]:
    return [sys.executable, target, *args] if target.endswith(".py") else [sys.executable, "-m", target, *args]


def start_python(target: str, args: list[str], env: dict[str, str]) -> ForkedCommand | subprocess.Popen:
    """`python -m TARGET ARGS` (a module) or `python TARGET ARGS` (a .py script) started, forked
    where a fresh interpreter would do the same."""
    global last_way
    effective = {**CLI_DEFAULTS, **env}
    if env.get("DATADREAM_TEST_SUBPROCESS") == "1":
        why = "asked for"
    elif sys.platform != "linux" or not _server_env:
        why = "no session environment" if sys.platform == "linux" else "not Linux: no fork"
    else:
        why = ", ".join(_import_time_difference(effective))
    last_way = "fresh" if why else "forked"
    ways[f"fresh ({why})" if why else "forked"] += 1
    if why:
        return subprocess.Popen(_command_line(target, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    return ForkedCommand(_forked_server(), target, args, env)


def run_python(target: str, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    process = start_python(target, args, env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
