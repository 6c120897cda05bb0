#!/usr/bin/env python3
"""Set up a local virtual environment and run the demo or the tests.

    python3 dev.py demo [RUN_DIR]   # install, then run the offline end-to-end demo on tiny models
    python3 dev.py test [PYTEST_ARGS...]   # install (with test extras), then run the test suite

Needs nothing but Python >= 3.10. The environment lives in .venv and is reinstalled only when
pyproject.toml or constraints-cpu.txt change. torch is pinned to the CPU build through
constraints-cpu.txt; GPU users install the package into their own environment instead
(`pip install -e .`) and keep their CUDA build of torch.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".datadream-install"
INSTALL_INPUTS = ("pyproject.toml", "constraints-cpu.txt")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_environment() -> Path:
    python = venv_python()
    if not python.exists():
        print(f"dev.py: creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = install_fingerprint()
    if not STAMP.exists() or STAMP.read_text() != fingerprint:
        print("dev.py: installing datadream and its dependencies (first run: ~2 minutes)", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run(
            [*pip, "-c", str(ROOT / "constraints-cpu.txt"), "-e", f"{ROOT}[test]"], check=True
        )
        STAMP.write_text(fingerprint)
    return python


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    python = ensure_environment()
    if command == "demo":
        run_dir = rest[0] if rest else str(ROOT / "demo-run")
        cmd = [str(python), "-m", "datadream", "demo", run_dir, *rest[1:]]
    else:
        cmd = [str(python), "-m", "pytest", *rest]
    return subprocess.run(cmd, cwd=ROOT, env=offline_env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
