"""The benchmark scripts run end to end (tiny settings, nothing appended to the docs), so the GPU
commands in docs/benchmarks.md keep working."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("adapt_throughput.py", ["--classes", "2", "--epochs", "1", "--groups", "2", "--repeats", "1"]),
    ("synthesize_throughput.py", ["--tiny", "--device", "cpu", "--classes", "2", "--images", "2", "--steps", "2",
                                  "--batch", "2", "--repeats", "1"]),
])
def test_benchmark_script_runs(script, args):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--no-report"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed-up vs reference" in result.stdout
