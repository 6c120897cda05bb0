"""Stage-2 throughput on a GPU: images/s at the published settings (50 steps, guidance 2.0,
512 px) with full-size random SD 2.1-base, the reference's way against ours, in one run.

    python benchmarks/synthesize_throughput.py --device cuda --classes 4 --images 40 --batch 10,40
    # another family at its published architecture and size (sdxl, sd3 = SD 3.5 Medium, flux = FLUX.1-dev):
    python benchmarks/synthesize_throughput.py --family flux --device cuda --classes 2 --images 8 --steps 28 --batch 4

- reference: the pipeline reloaded from disk for every class, fp16, batch 10, images saved
  one by one on the main thread (the reference implementation's way);
- ours: `datadream synthesize` — pipeline loaded once, adapters swapped in place, bf16, batch B,
  PNG encoding on a background writer.
Both use class-wise adapters of rank 16 (random, untrained: speed does not depend on them).
The reference row is SD 2.1's alone; for another family the first batch size is the baseline.
FLOP utilisation (full-size models): images/s x the FLOPs `datadream plan` counts per image (the
family's denoiser evaluations per image, from datadream.costs, + the VAE decode) / the device's
dense bf16 peak (--peak-tflops, 989 for an H100 SXM): on a GPU, the measured figure that replaces
plan's assumed 35% (costs.UTILISATION).
Appends the table to docs/benchmarks.md.
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

def reference_way(model: Path, adapters: list[Path], prompts: list[str], images: int, steps: int,
                  resolution: int, out: Path, device: str) -> float:
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    for adapter, prompt in zip(adapters, prompts):
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(adapter)
        generator = torch.Generator(device).manual_seed(0)  # the reference re-seeded per class
        for start in range(0, images, 10):
            batch = pipe([prompt] * min(10, images - start), num_inference_steps=steps, guidance_scale=2.0,
                         height=resolution, width=resolution, generator=generator).images
            for i, image in enumerate(batch):
                image.save(out / f"{adapter.name}-{start + i}.png")
        del pipe
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--images", type=int, default=40, help="images per class")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", default="10,40", help="our batch sizes to time")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--tiny", action="store_true", help="tiny random models at 32 px: a smoke test on a CPU")
    parser.add_argument("--family", default="sd", choices=("sd", "sdxl", "sd3", "flux"),
                        help="generator family (full size: SD 2.1-base, SDXL base, SD 3.5 Medium, FLUX.1-dev)")
    parser.add_argument("--resolution", type=int, default=0, help="image size (default: 32 tiny, the family's full)")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()

    from datadream.components.generators.families import FAMILIES
    from datadream.components.testmodels.families import build_random_family, full_size_name, tiny_builders
    from datadream.components.testmodels.tiny import TINY_RESOLUTION, build_tiny_clip
    from datadream.config import load_config
    from datadream.data.toy import write_toy_dataset
    from datadream.runs import init_run
    from datadream.stages.adapt import adapt
    from datadream.stages.synthesize import synthesize

    work = Path(tempfile.mkdtemp(prefix="datadream-bench-"))
    try:
        # init checks every model a run needs; this benchmark never trains the classifier.
        classifier = build_tiny_clip(work / "clip")
        if args.tiny:
            model = tiny_builders()[args.family](work / args.family)
        else:
            model = build_random_family(args.family, work / args.family)
        family = FAMILIES[args.family]
        resolution = args.resolution or (TINY_RESOLUTION if args.tiny else family.resolution)
        data = write_toy_dataset(work / "data", {"train": 2}, size=64,
                                 classes=tuple(f"class{i:03d}" for i in range(args.classes)))
        common = [f"data.train={data / 'train'}", "data.shots=2", f"generator.model={model}",
                  f"classifier.model={classifier}",
                  "adapt.epochs=1", "adapt.batch_size=2", f"adapt.resolution={min(64, resolution)}",
                  f"runtime.device={args.device}", f"synthesize.images_per_class={args.images}",
                  f"synthesize.steps={args.steps}", f"synthesize.resolution={resolution}",
                  "synthesize.guidance=2.0"]  # the method's, for every family (theirs differ: configs/families/)
        source = work / "adapted"
        init_run(load_config(None, common), source)
        adapters = adapt(source)  # untrained-quality adapters of the right shape, for swapping
        prompts = [f"a photo of a class{i:03d}" for i in range(args.classes)]
        total = args.classes * args.images
        from datadream import costs

        # What `datadream plan` prices one image at (this benchmark samples at guidance 2.0).
        per_image = costs.image_flops(args.family, resolution, costs.denoiser_evaluations(args.family, args.steps, 2.0))
        rows = []
        if args.family == "sd":
            out = work / "reference-images"
            out.mkdir()
            seconds = statistics.median(reference_way(model, adapters, prompts, args.images, args.steps, resolution,
                                                      out, args.device) for _ in range(args.repeats))
            rows.append(("reference (reload per class, fp16 on GPU, batch 10, inline PNG)", seconds))
        for batch in [int(b) for b in args.batch.split(",")]:
            times = []
            for repeat in range(args.repeats):
                run, store = work / f"ours-{batch}-{repeat}", work / f"store-{batch}-{repeat}"
                # A store of its own with the adapters only: no image of an earlier repeat is reused.
                init_run(load_config(None, common + [f"synthesize.batch_size={batch}", f"runtime.store={store}"]), run)
                shutil.copytree(work / "datadream-store" / "adapters", store / "adapters")
                started = time.perf_counter()
                synthesize(run)
                times.append(time.perf_counter() - started)
                shutil.rmtree(run)
                shutil.rmtree(store)
            rows.append((f"datadream synthesize (bf16 on GPU), batch {batch}", statistics.median(times)))
        for name, sec in rows:
            print(f"{name:<60} {total / sec:6.2f} images/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = rows[0][1]
    baseline_name = "reference" if args.family == "sd" else "first row"
    lines = [f"| configuration | images/s | est. FLOP utilisation | speed-up vs {baseline_name} |",
             "| --- | ---: | ---: | ---: |"]
    for name, sec in rows:
        rate = total / sec
        share = "n/a" if args.tiny else utilisation(per_image, rate, args.peak_tflops)
        lines.append(f"| {name} | {rate:.2f} | {share} | {baseline / sec:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_report:
        size = (f"tiny random {family.title} (smoke test)" if args.tiny
                else f"full-size random {full_size_name(args.family)}")
        what = (f"{size} at {resolution} px, {args.classes} classes x {args.images} images, {args.steps} steps,"
                f" guidance 2.0, median of {args.repeats}; wall time including pipeline loading")
        append_report("Stage 2: synthesis throughput", what, table, device_description(args.device), versions(),
                      " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
