"""The `datadream` command: a thin layer over the Python API. Every command calls datadream.api;
this module only parses arguments, prints results and turns errors into exit statuses.

Heavy libraries (torch, diffusers) are imported only inside the subcommand that needs them, so
`--help` and config validation answer at once. A user mistake prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import sys
import threading
import warnings
from pathlib import Path

from datadream.errors import UserError

EXAMPLES = """\
examples:
  datadream demo demo-run                                 # offline end-to-end run on tiny models
  datadream run configs/example.yaml runs/pets --set data.train=~/pets/train --set data.test=~/pets/test
  datadream init configs/example.yaml runs/pets --set data.train=~/pets/train
  datadream adapt runs/pets                               # stage 1: LoRA adapters
  datadream synthesize runs/pets                          # stage 2: synthetic images
  datadream train runs/pets && datadream evaluate runs/pets   # stage 3: CLIP classifier
  datadream config configs/example.yaml --set adapt.mode=dataset   # print the resolved config
  datadream predict runs/pets photo.jpg more-photos/ --top-k 3     # classify new images
  datadream export runs/pets pets-classifier --what classifier    # also: adapters, dataset
  datadream models download --to ~/models/sd21-base   # fetch and check the default generator
  datadream plan configs/paper/datadream-class.yaml --set data.dataset=pets --gpu 24   # estimated cost
  datadream status runs/pets                          # units complete / running / pending
  datadream compare runs/pets runs/pets-lr3 -o runs/compare   # which run is best, and where
  datadream run configs/example.yaml runs/pets --runner ray   # Ray tasks on every GPU
  datadream store gc runs/datadream-store --dry-run   # what no run uses any more (--yes: remove it)

Every stage resumes: run the same command again after an interruption.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("datadream")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datadream",
        description="Few-shot guided dataset generation (DataDream): adapt Stable Diffusion to a few"
        " real images per class, then synthesize a training set.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action="version", version=f"datadream {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own logs and warnings (transformers, diffusers, hub)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help)

    def add_overrides(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field, e.g. --set adapt.rank=8 (repeatable)")

    sub = add("init", "create a run folder: resolved config.yaml and the few-shot manifest")
    sub.add_argument("config", type=Path, help="experiment YAML")
    sub.add_argument("run", type=Path, help="run folder to create")
    add_overrides(sub)

    sub = add("adapt", "stage 1: train the LoRA adapter(s) of a run")
    sub.add_argument("run", type=Path)

    sub = add("synthesize", "stage 2: generate the synthetic images of a run")
    sub.add_argument("run", type=Path)

    sub = add("train", "stage 3: train the CLIP LoRA classifier of a run (classifier.train_on)")
    sub.add_argument("run", type=Path)

    sub = add("evaluate", "evaluate the run's classifier on data.test; writes RUN/classifier/metrics.json")
    sub.add_argument("run", type=Path)

    sub = add("run", "init, adapt, synthesize, train, evaluate and report in one go (resumes where it"
              " stopped); the report is RUN/report/index.html")
    sub.add_argument("config", type=Path, help="experiment YAML")
    sub.add_argument("run", type=Path, help="run folder (created, or resumed)")
    add_overrides(sub)
    sub.add_argument("--dry-run", action="store_true",
                     help="print the plan (units, skipped units, estimated cost) and exit; writes nothing")
    sub.add_argument("--gpu", help="with --dry-run: GPU to estimate for (16, 24, 40, 80 or a name)")
    sub.add_argument("--until", metavar="STAGE", help="stop after this stage: adapt or synthesize (no classifier"
                     " model needed); the same command without it continues (runtime.until)")
    add_runner(sub)

    sub = add("inspect", "data-quality figures of the synthetic set against the real shots (and held-out images):"
              " FD, kernel distance, precision/recall/density/coverage, diversity, near-copies, CLIP-score; writes"
              " RUN/inspect.json")
    sub.add_argument("run", type=Path)

    sub = add("compare", "one page and a CSV comparing runs: settings that differ, accuracy, per-class changes")
    sub.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders; the first is the baseline")
    sub.add_argument("-o", "--out", type=Path, required=True, help="folder for index.html and compare.csv")

    sub = add("status", "what a run holds: units complete / running / pending per stage (from the files alone)")
    sub.add_argument("run", type=Path)

    sub = add("store", "manage the content-addressed store of adapters and synthetic images")
    sub.add_argument("action", choices=["gc"], help="gc: remove what no run uses")
    sub.add_argument("target", type=Path, help="a store folder, or a run folder (its store)")
    sub.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    sub.add_argument("--yes", action="store_true", help="remove without asking (needed when not on a terminal)")

    sub = add("plan", "what a run would do and cost (GPU-hours, memory, disk): estimates, no model loaded")
    sub.add_argument("config", type=Path, nargs="?", help="experiment YAML, or a run folder to count what it holds")
    add_overrides(sub)
    sub.add_argument("--gpu", help="16, 24, 40 or 80 (GB), or a name: t4, a10, l4, a100-80gb, h100, ...")
    sub.add_argument("--classes", type=int, help="class count, when the config names no data")
    sub.add_argument("--markdown", action="store_true", help="print docs/hardware.md (run from the repository root)")
    sub.add_argument("--json", action="store_true", help="print the plan as one JSON object, for scripts")

    sub = add("report", "write RUN/report/index.html: shots beside synthetic images, curves, metrics")
    sub.add_argument("run", type=Path)

    sub = add("benchmark", "run a datasets x methods x settings x seeds matrix and write results tables")
    sub.add_argument("bench", type=Path, help="benchmark YAML (datasets, methods, settings, seeds, base)")
    sub.add_argument("out", type=Path, help="folder for the runs and results.md / results.csv")
    add_overrides(sub)
    add_runner(sub)

    sub = add("datasets", "list the benchmark catalog, or check a local copy of a dataset")
    sub.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    sub.add_argument("key", nargs="?", help="catalog key, with check")
    sub.add_argument("--root", help="image root (data.root)")
    sub.add_argument("--split-file", help="CoOp JSON or CSV split file (data.split_file)")
    sub.add_argument("--classnames", help="class-names file (data.classnames)")

    sub = add("models", "download a model's safetensors files, or check weights against the official hashes")
    sub.add_argument("action", choices=["download", "check"])
    sub.add_argument("model", nargs="?", help="hub id, local folder or .safetensors file (default: the default"
                     " generator.model)")
    sub.add_argument("--to", type=Path, help="with download: put the files in this folder, not the HF cache")

    sub = add("config", "print the resolved config (all defaults filled in) and exit")
    sub.add_argument("config", type=Path, nargs="?", help="experiment YAML (defaults only if omitted)")
    sub.add_argument("--explain", action="store_true", help="print each key's meaning instead")
    sub.add_argument("--markdown", action="store_true", help="print the reference table (docs/configuration.md)")
    add_overrides(sub)

    sub = add("tiny-models", "write tiny random-weight models: DIR/sd (diffusers) and DIR/clip")
    sub.add_argument("dir", type=Path)

    sub = add("demo", "offline end-to-end demo on tiny models and a toy dataset: adapted vs un-adapted generator,"
              " and whether adaptation learned")
    sub.add_argument("dir", type=Path, help="folder for the demo's CLIP model, images, two runs and their comparison")
    add_use_commands(add)
    return parser


def add_runner(sub: argparse.ArgumentParser) -> None:
    from datadream.registry import RUNNERS, runner_help

    sub.add_argument("--runner", choices=list(RUNNERS), help=f"{runner_help()}; sets runtime.runner")
    sub.add_argument("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); sets runtime.ray_address")


def runner_overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"runtime.runner={args.runner}"] if getattr(args, "runner", None) else []
    extra += [f"runtime.ray_address={args.ray_address}"] if getattr(args, "ray_address", None) else []
    extra += [f"runtime.until={args.until}"] if getattr(args, "until", None) else []
    return list(args.overrides) + extra


def add_use_commands(add) -> None:
    """`predict` and `export`: using what a run made."""
    sub = add("predict", "classify images with the run's classifier: top-k class names and probabilities")
    sub.add_argument("run", type=Path)
    sub.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                     help="image files, or folders of images (read recursively)")
    sub.add_argument("--top-k", type=int, default=5, help="classes per image, at most the number of classes (default 5)")
    sub.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output on stdout")
    sub.add_argument("--batch-size", type=int, help="images per batch (default: classifier.eval_batch_size)")
    sub.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's runtime.device)")

    sub = add("export", "export for use without datadream: the classifier (a transformers CLIPModel), the"
              " adapters (diffusers and kohya/A1111/ComfyUI files) or the synthetic set (an image folder)")
    sub.add_argument("run", type=Path)
    sub.add_argument("out", type=Path, help="new or empty folder to write")
    sub.add_argument("--what", choices=["classifier", "adapters", "dataset"], required=True)


def use_command(args: argparse.Namespace) -> int:
    from datadream import api

    if args.command == "predict":
        predictions = api.predict(args.run, args.images, args.top_k, args.batch_size, args.device)
        print(api.format_predictions(predictions, args.format), end="")
        return 0
    print(f"exported {args.what}: {api.export(args.run, args.out, args.what)}")
    return 0


LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "peft", "accelerate", "torch")


def _configure_logging(quiet: bool, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        level = "warning" if quiet else "info"
        os.environ["TRANSFORMERS_VERBOSITY"] = os.environ["DIFFUSERS_VERBOSITY"] = level
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(level.upper())
        return
    # Library chatter (the torchvision fallback notice, download bars, deprecations of the
    # libraries' internals) fills a batch log and tells our users nothing they can act on.
    # The environment covers libraries not yet imported; the levels cover those already loaded.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning,
                            module=r"(transformers|diffusers|huggingface_hub|peft|torch)\b")


def run_command(args: argparse.Namespace) -> int:
    if args.command not in ("adapt", "train") and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        # torchrun / accelerate launch: the other stages would all run on the first GPU (docs/ddp.md)
        raise UserError(f"`datadream {args.command}` is not run by a launcher of several processes (torchrun,"
                        " accelerate launch): only `datadream train` and `datadream adapt` are (docs/ddp.md);"
                        " start this command as one process")
    if args.command in ("predict", "export"):
        return use_command(args)
    if args.command in ("adapt", "synthesize", "train", "evaluate", "inspect"):
        return stage_command(args)
    if args.command == "plan" or (args.command == "run" and args.dry_run):
        return plan_command(args)
    if args.command == "config":
        return config_command(args)
    if args.command == "datasets":
        return datasets_command(args)
    if args.command == "models":
        return models_command(args)
    from datadream import api

    if args.command == "init":
        run = api.init_run(api.load_config(args.config, args.overrides), args.run)
        print(f"run ready: {run.layout.root} ({len(run.manifest.classes)} classes)")
    elif args.command == "run":
        api.print_summary(api.run(api.load_config(args.config, runner_overrides(args)), args.run))
    elif args.command == "compare":
        print(f"comparison: {api.compare(args.runs, args.out)} (table: {args.out / 'compare.csv'})")
    elif args.command == "status":
        print(api.status(args.run), end="")
    elif args.command == "store":
        print(api.store_gc(args.target, args.dry_run, None if args.yes else _ask), end="")
    elif args.command == "report":
        print(f"report: {api.report(args.run)}")
    elif args.command == "benchmark":
        results = api.benchmark(args.bench, args.out, runner_overrides(args))
        print(results.read_text(encoding="utf-8"))
        print(f"tables: {results} and {results.with_suffix('.csv')}; one row per run: {results.parent / 'runs.csv'}")
    elif args.command == "tiny-models":
        for name, path in api.build_tiny_models(args.dir).items():
            print(f"{name}: {path}")
        print("tiny random-weight models: for tests and demos only, they generate noise")
    elif args.command == "demo":
        return api.demo(args.dir)
    else:
        raise AssertionError(args.command)
    return 0


def stage_command(args: argparse.Namespace) -> int:
    from datadream import api

    layout = api.RunLayout(args.run.resolve())
    if args.command == "adapt":
        print(f"adapters: {len(api.adapt(args.run))} in {layout.adapters}")
    elif args.command == "synthesize":
        index = api.synthesize(args.run)
        print(f"synthetic set: {index}" if index else "synthetic set: none needed (classifier.train_on has no synthetic)")
    elif args.command == "train":
        print(f"classifier: {api.train(args.run)}")
    elif args.command == "evaluate":
        metrics = api.evaluate(args.run)
        print(f"{api.accuracy_text(metrics)}  on {metrics['n']} test images  ({layout.metrics})")
    else:
        print_inspection(api.inspect(args.run)["overall"], layout.inspect)
    return 0


def print_inspection(overall: dict, path: Path) -> None:
    keys = ("fd", "fd_std", "kd", "kd_std", "precision", "recall", "density", "coverage", "diversity_real",
            "diversity_synth", "near_copy_share", "near_copy_expected_share", "clip_score_real", "clip_score_synth")
    print(f"inspect: {overall['n_classes']} classes, synthetic vs shots, mean over classes")
    for key in keys:
        if overall.get(key) is not None:
            print(f"  {key:<26} {overall[key]}")
    print(f"figures per class and what each means: {path}")


def config_command(args: argparse.Namespace) -> int:
    from datadream import api

    if args.markdown:
        print(api.config_markdown(), end="")
    elif args.explain:
        for key, text in api.config_help().items():
            print(f"{key}: {text}")
    else:
        print(api.load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def models_command(args: argparse.Namespace) -> int:
    from datadream import api

    return api.download_model(args.model, args.to) if args.action == "download" else api.check_model(args.model)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError("store gc removes files and asks first, but there is no terminal to answer on: run"
                        " it with --dry-run to see what it would remove, then with --yes to remove it")
    print(question, end="", flush=True)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False


def plan_command(args: argparse.Namespace) -> int:
    from datadream import api

    if getattr(args, "markdown", False):
        print(api.hardware_markdown(Path.cwd()), end="")
        return 0
    run = args.run if args.command == "run" else None
    print(api.plan_text(args.config, runner_overrides(args), run, args.gpu, getattr(args, "classes", None),
                        as_json=getattr(args, "json", False)), end="")
    return 0


def datasets_command(args: argparse.Namespace) -> int:
    from datadream import api

    if args.action == "list":
        print(f"{'key':<14} {'classes':>7}  {'domain':<11} {'train/val/test (CoOp)':<24} dataset")
        for entry in api.CATALOG.values():
            sizes = "/".join(str(entry.sizes.get(s, "-")) for s in ("train", "val", "test"))
            print(f"{entry.key:<14} {entry.classes:>7}  {entry.domain.strip() or '-':<11} {sizes:<24} {entry.title}")
        print("\nHow to obtain each one: docs/datasets.md. Check a copy: datadream datasets check KEY --root DIR")
        return 0
    if not args.key or not args.root:
        raise UserError("usage: datadream datasets check KEY --root DIR [--split-file F] [--classnames F]")
    report = api.check_dataset(args.key, args.root, args.split_file, args.classnames)
    print("\n".join(report.lines))
    if report.problems:
        raise UserError(f"{args.key}: {len(report.problems)} problem(s) in {args.root}: {report.problems[0]}")
    print(f"{args.key}: ready")
    return 0


def one_line(err: Exception) -> str:
    """A UserError raised in a DataLoader worker comes back wrapped in the worker's traceback;
    its last line holds the message."""
    text = str(err).strip()
    if "\n" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's stop), raised where the program is, as Ctrl-C is: the
    same locks are released and temporaries removed, and the same resume line is printed.
    DataLoader workers end quietly on it (components/classifiers/scoring.py, start_loader)."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _resend_stops(hook):
    """A `sys.unraisablehook`. Python drops an exception raised inside a finalizer or an at-fork
    hook (a DataLoader's clean-up, a fork), so a stop signal landing there would be lost: it is
    sent again, to land in ordinary code."""
    def resend(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            stop = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
            threading.Thread(target=os.kill, args=(os.getpid(), stop), daemon=True).start()
        else:
            hook(unraisable)
    return resend


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    # Signal handlers can only be set from the main thread (an application that calls main from
    # another one keeps its own signal handling).
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, _terminate)
        unraisable_hook, sys.unraisablehook = sys.unraisablehook, _resend_stops(sys.unraisablehook)
    try:
        return run_command(args)
    except UserError as err:
        print(f"datadream: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        # Disk full, permission denied, a path that vanished: the message names the file.
        print(f"datadream: error: {err}", file=sys.stderr)
        return 1
    except pickle.UnpicklingError:
        # torch.load(weights_only=True) refused a pickled weight file that holds code.
        print("datadream: error: a pickled weight file (.bin/.pt) of generator.model or classifier.model was"
              " refused: it holds code, not only tensors; use the model's .safetensors weights", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
            print("datadream: error: the device ran out of memory; lower adapt.group_size, synthesize.batch_size"
                  " or classifier.batch_size, or set adapt.gradient_checkpointing=true, then run the same"
                  " command again (finished work is kept)", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt as err:
        print("datadream: interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = unraisable_hook
