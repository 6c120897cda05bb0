"""What every benchmark records beside its numbers: device, versions, command."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers", "peft"))


def append_report(title: str, what: str, table: str, device: str, software: str, command: str) -> None:
    today = datetime.date.today().isoformat()
    section = (f"\n## {title} — {today}\n\n{what}.\n\n- device: {device}\n- software: {software}\n"
               f"- command: `{command}`\n\n{table}\n")
    with REPORT.open("a", encoding="utf-8") as handle:
        handle.write(section)
    print(f"appended to {REPORT}")


def utilisation(flops_per_item: float, items_per_second: float, peak_tflops: float) -> str:
    """The share of the device's dense peak that a measured rate reaches, given the FLOPs `plan`
    counts per item (datadream.costs): the figure that replaces plan's assumed utilisation
    (costs.UTILISATION) once measured on a GPU."""
    return f"{100 * items_per_second * flops_per_item / (peak_tflops * 1e12):.0f}%"
