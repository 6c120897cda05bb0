"""Stage-1 throughput: class-wise adaptation, the reference's way against ours, in one run.

    # CPU, tiny random models at 32 px, 10 classes (about 3 minutes on 2 cores):
    python benchmarks/adapt_throughput.py --classes 10 --repeats 3
    # GPU, full-size random SD 2.1-base at 512 px:
    python benchmarks/adapt_throughput.py --full --device cuda --classes 32 --epochs 2 --groups 8,16,32
    # GPU, another family at its published architecture (sdxl, sd3 = SD 3.5 Medium, flux = FLUX.1-dev):
    python benchmarks/adapt_throughput.py --full --family sdxl --device cuda --classes 8 --epochs 1 --groups 4,8 \
        --set adapt.gradient_checkpointing=true

Configurations, each on the same toy few-shot set (16 shots per class):
- reference: sequential engine, fp32, every crop VAE-encoded every step (the reference's way);
- sequential: sequential engine with our defaults (bf16 on GPU, VAE moments reused where exact);
- batched K: the batched engine, K classes per forward/backward.
The reference row is SD's alone (the reference implementation is SD 2.1 code); for another
family the sequential engine is the baseline.
Prints a table (median of --repeats) and appends it to docs/benchmarks.md with the device,
versions and command. With --full, the FLOP utilisation column (samples/s x the FLOPs `datadream
plan` counts per sample / --peak-tflops) is the measured figure that replaces plan's assumed 35%. Numbers from random weights measure speed only, never quality.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_report, device_description, utilisation, versions  # noqa: E402


def configs(groups: list[int], precision_auto: str, family: str) -> list[tuple[str, list[str]]]:
    reference = ["adapt.engine=sequential", "runtime.precision=fp32", "adapt.reuse_vae_moments=false"]
    ours = [("sequential", ["adapt.engine=sequential", f"runtime.precision={precision_auto}"])]
    ours += [(f"batched K={k}", ["adapt.engine=batched", f"adapt.group_size={k}",
                                 f"runtime.precision={precision_auto}"]) for k in groups]
    return [("reference (sequential, fp32, no reuse)", reference), *ours] if family == "sd" else ours


def flops_per_sample(config, family: str, resolution: int) -> float:
    """What `datadream plan` prices one training sample at: the family's denoiser step and the
    VAE encode, plus the text encoders' step shared by the batch's samples (class-wise: one
    prompt per step)."""
    from datadream import costs

    text = (costs.family_value(family, "text_lora_train_flops") / config.adapt.batch_size
            if config.adapt.train_text_encoder else 0.0)
    return costs.adapt_sample_flops(family, resolution) + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size random weights at the family's size (GPU)")
    parser.add_argument("--family", default="sd", choices=("sd", "sdxl", "sd3", "flux"),
                        help="generator family (full size: SD 2.1-base, SDXL base, SD 3.5 Medium, FLUX.1-dev)")
    parser.add_argument("--resolution", type=int, default=0, help="training crop (default: 32 tiny, the family's full)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="200 in the paper; fewer suffice to time a step")
    parser.add_argument("--groups", default="2,5,10", help="batched group sizes K to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-report", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense bf16 peak, for the FLOP utilisation column (989: H100 SXM)")
    args = parser.parse_args()

    from datadream.components.generators.families import FAMILIES
    from datadream.components.testmodels.families import build_random_family, full_size_name, tiny_builders
    from datadream.components.testmodels.tiny import build_tiny_clip
    from datadream.config import load_config
    from datadream.data.toy import write_toy_dataset
    from datadream.runs import init_run
    from datadream.stages.adapt import adapt

    family = FAMILIES[args.family]
    resolution = args.resolution or (family.resolution if args.full else 32)
    work = Path(tempfile.mkdtemp(prefix="datadream-bench-"))
    try:
        # init checks every model a run needs; this benchmark never trains the classifier.
        classifier = build_tiny_clip(work / "clip")
        if args.full:
            model = build_random_family(args.family, work / args.family)
        else:
            model = tiny_builders()[args.family](work / args.family)
        classes = tuple(f"class{i:03d}" for i in range(args.classes))
        data = write_toy_dataset(work / "data", {"train": 16}, size=resolution, classes=classes)
        precision = "auto"
        common = [f"data.train={data / 'train'}", "data.shots=16", f"generator.model={model}",
                  f"classifier.model={classifier}",
                  f"adapt.resolution={resolution}", f"adapt.epochs={args.epochs}", f"runtime.device={args.device}",
                  *args.set]
        groups = [int(k) for k in args.groups.split(",") if k]
        per_sample = flops_per_sample(load_config(None, common), args.family, resolution)
        rows = []
        samples = args.classes * 16 * args.epochs
        for name, overrides in configs(groups, precision, args.family):
            times = []
            for repeat in range(args.repeats):
                run_dir, store = work / f"run-{len(rows)}-{repeat}", work / f"store-{len(rows)}-{repeat}"
                # A store of its own: engines make the same adapters, so a shared one would reuse them.
                init_run(load_config(None, common + overrides + [f"runtime.store={store}"]), run_dir)
                started = time.perf_counter()
                adapt(run_dir)
                times.append(time.perf_counter() - started)
                shutil.rmtree(run_dir)
                shutil.rmtree(store)
            seconds = statistics.median(times)
            rows.append((name, seconds, samples / seconds, seconds / args.classes))
            print(f"{name:<40} {seconds:8.1f} s  {samples / seconds:8.1f} samples/s  {seconds / args.classes:7.2f} s/class",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sequential = next(sec for name, sec, _, _ in rows if name == "sequential")
    # SD's table also compares with the reference implementation's way (its first row).
    reference = rows[0][1] if args.family == "sd" else None
    lines = ["| configuration | wall s (median) | samples/s | s per class | est. FLOP utilisation |"
             + (" speed-up vs reference |" if reference else "") + " speed-up vs sequential |",
             "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if reference else "") + " ---: |"]
    lines += [f"| {name} | {sec:.1f} | {sps:.1f} | {spc:.2f} | {utilisation(per_sample, sps, args.peak_tflops) if args.full else 'n/a'} |"
              + (f" {reference / sec:.2f}x |" if reference else "") + f" {sequential / sec:.2f}x |"
              for name, sec, sps, spc in rows]
    size = f"full-size random {full_size_name(args.family)}" if args.full else f"tiny random {family.title}"
    what = (f"{size} at {resolution} px{''.join(' ' + o for o in args.set)}, "
            f"{args.classes} classes x 16 shots, {args.epochs} epochs at batch 8, median of {args.repeats}; "
            "wall time of `adapt` including model loading")
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_report:
        append_report("Stage 1: class-wise adaptation throughput", what, table,
                      device_description(args.device), versions(), " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
