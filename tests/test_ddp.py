"""Data-parallel training (docs/ddp.md, datadream.components.distributed): two gloo processes on
the CPU give the one-process classifier and dataset-wise adapter for the same global batch, within
float rounding; a classifier checkpoint written by one process resumes in two."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config, write_config
from datadream.components import distributed
from datadream.components.classifiers.losses import origin_weighted_loss
from datadream.components.seeds import derive_seed
from datadream.config import load_config
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER
from datadream.runs import init_run

ATOL = 1e-5

# 12 real shots at batch 11: global batches of 11 and 1, so the shares are uneven (6 + 5) and the
# second process's share of the last batch is empty. LoRA dropout stays at its default (0.1).
# At this learning rate the two runs differ by ~1e-8 (a process without the shared dropout masks,
# the global normalisation or the gradient sum: by 4e-4 to 7e-4); at 3e-3 AdamW amplifies float
# rounding to ~7e-6 in three epochs, too close to ATOL.
CLASSIFIER = {"train_on": "real", "batch_size": 11, "epochs": 3, "lr": 1e-3, "mix_prob": 0.5,
              "eval_batch_size": 3}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def torchrun(processes: int, *args: str, timeout: float = 240) -> None:
    """`torchrun --standalone --nproc-per-node N -m datadream ARGS`, as docs/ddp.md starts it."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", "-m", "datadream", *map(str, args)],
                            capture_output=True, text=True, env=_env(), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def launch_with_env(processes: int, *args: str, timeout: float = 240) -> None:
    """The processes started by hand with the torchrun variables (what any launcher sets)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(processes),
              "LOCAL_WORLD_SIZE": str(processes)}
    procs = [subprocess.Popen([sys.executable, "-m", "datadream", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(**common, RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in range(processes)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank}:\n{err[-5000:]}"


def new_run(tmp_path: Path, models, toy: Path, name: str, **sections) -> Path:
    sections.setdefault("data", {})
    sections["data"] = {"val": str(toy / "val"), "test": str(toy / "test"), **sections["data"]}
    config = write_config(tmp_path / f"{name}.yaml", tiny_config(models, toy / "train", **sections))
    return init_run(load_config(config), tmp_path / name).layout.root


def assert_same_classifier(run: Path, reference: Path) -> None:
    ours = load_file(run / "classifier" / "lora" / "adapter_model.safetensors")
    theirs = load_file(reference / "classifier" / "lora" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.allclose(ours[key], theirs[key], atol=ATOL), (key, (ours[key] - theirs[key]).abs().max())
    marker = json.loads((run / "classifier" / "train.json").read_text())
    expected = json.loads((reference / "classifier" / "train.json").read_text())
    for field in ("selected_epoch", "selected_by", "epochs", "steps"):
        assert marker[field] == expected[field], field
    assert len(marker["history"]) == len(expected["history"])
    for row, want in zip(marker["history"], expected["history"]):
        assert row["val_top1"] == want["val_top1"] and row["train_top1"] == want["train_top1"]
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5) and row["lr"] == pytest.approx(want["lr"])


def test_shares_cover_the_batch_in_order():
    for size in (1, 2, 3, 8):
        for total in range(0, 20):
            groups = [distributed.Group(rank=r, size=size) for r in range(size)]
            bounds = [g.bounds(total) for g in groups]
            assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(total))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_single_process_is_a_no_op():
    group = distributed.SINGLE
    tensor = torch.arange(5)
    assert group.is_main and group.share(5) == slice(0, 5)
    assert group.gather(tensor, 5) is tensor and group.sum(tensor) is tensor
    assert group.broadcast_object("x") == "x"
    with group.leading() as lead:
        lead.go()


def test_shares_of_the_loss_sum_to_the_global_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=generator)
    targets = torch.softmax(torch.randn(7, 4, generator=generator), -1)
    for is_real in (torch.tensor([1, 0, 1, 1, 0, 0, 1]).bool(), torch.ones(7).bool(), torch.zeros(7).bool()):
        for weight in (None, 0.8):
            full = origin_weighted_loss(logits, targets, is_real, weight)
            parts = sum(origin_weighted_loss(logits[lo:hi], targets[lo:hi], is_real[lo:hi], weight,
                                             batch_is_real=is_real)
                        for lo, hi in (distributed.Group(rank=r, size=3).bounds(7) for r in range(3)))
            assert torch.allclose(parts, full, atol=1e-6)


def test_share_dropout_draws_the_whole_batch_mask():
    x = torch.randn(7, 5, 6)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(x, 0.3, True)
    after = torch.rand(1)
    for rank in range(3):
        lo, hi = distributed.Group(rank=rank, size=3).bounds(7)
        dropout = distributed.ShareDropout(0.3)
        dropout.total, dropout.lo, dropout.hi = 7, lo, hi
        torch.manual_seed(3)
        assert torch.equal(dropout(x[lo:hi]), expected[lo:hi])
        assert torch.equal(torch.rand(1), after)  # the random stream moves on as in one process


def timings(run: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "logs" / "timings.jsonl").read_text().splitlines()]
    return [row for row in rows if row["stage"] == stage]


@pytest.fixture(scope="module")
def one_process_classifier(tmp_path_factory, tiny_models) -> tuple[Path, Path]:
    """(the data, a run whose classifier one process trained)."""
    from datadream.data.toy import write_toy_dataset
    from datadream.stages.train import train

    root = tmp_path_factory.mktemp("one-process")
    toy = write_toy_dataset(root / "data", {"train": 5, "val": 2, "test": 3}, size=40)
    run = new_run(root, tiny_models, toy, "one", classifier=CLASSIFIER)
    train(run)
    return toy, run


def test_two_processes_train_the_one_process_classifier(tmp_path, tiny_models, one_process_classifier):
    # Mixup/CutMix is drawn for at least one batch of 11 (every process mixes the whole batch).
    assert any(random.Random(derive_seed(0, "mix", e, 0)).random() < CLASSIFIER["mix_prob"] for e in range(3))
    toy, one = one_process_classifier
    two = new_run(tmp_path, tiny_models, toy, "two", classifier=CLASSIFIER)
    torchrun(2, "-q", "train", two)
    assert_same_classifier(two, one)
    assert [row.get("processes") for row in timings(two, "train")] == [2]  # one group of two, not two runs
    assert len(list((two / "logs" / "train").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    assert not (two / ".partial-classifier").exists()


def test_two_processes_resume_a_one_process_checkpoint(tmp_path, tiny_models, one_process_classifier, monkeypatch):
    """Interrupted after its first epoch in one process, resumed by two: rank 0 reads the
    checkpoint and sends the state to rank 1; the same classifier comes out."""
    from datadream.stages import train as train_stage

    toy, one = one_process_classifier
    resumed = new_run(tmp_path, tiny_models, toy, "resumed", classifier=CLASSIFIER)
    save = train_stage.checkpoint.save

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage.checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_stage.train(resumed)
    monkeypatch.undo()
    assert json.loads((resumed / ".partial-classifier" / "state.json").read_text())["meta"]["epoch"] == 1
    launch_with_env(2, "-q", "train", resumed)
    assert_same_classifier(resumed, one)
    assert timings(resumed, "train")[-1] == {**timings(resumed, "train")[-1], "epochs": 2, "processes": 2}


def test_two_processes_train_the_one_process_classifier_on_synthetic_and_real(tmp_path, tiny_models, toy_data):
    """End to end with both origins: the 0.8/0.2 weighting of real and synthetic losses, and
    Mixup/CutMix within each part, over shares of a batch that mixes them."""
    from datadream.pipeline import run_all
    from datadream.stages.train import train

    classifier = {**CLASSIFIER, "train_on": "synthetic+real", "batch_size": 7}
    sections = {"synthesize": {"images_per_class": 4}, "classifier": classifier,
                "runtime": {"store": str(tmp_path / "store")}}
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"val": str(toy_data / "val"), "test": str(toy_data / "test")},
        **sections))
    one = run_all(load_config(config, ["runtime.until=synthesize"]), tmp_path / "one").run
    two = run_all(load_config(config, ["runtime.until=synthesize"]), tmp_path / "two").run  # the same store
    train(one)
    torchrun(2, "-q", "train", two)
    assert_same_classifier(two, one)
    marker = json.loads((two / "classifier" / "train.json").read_text())
    assert marker["train_on"] == "synthetic+real"


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_two_processes_train_the_one_process_dataset_adapter(tmp_path, generator_models, toy_data, family):
    """For SDXL too: each process builds the size/crop conditioning of its own share of the batch;
    and for a flow-matching family (SD 3), whose σ draws are split the same way."""
    from datadream.stages.adapt import adapt

    # 12 shots at batch 5: global batches of 5, 5 and 2, shared 3 + 2, 3 + 2 and 1 + 1.
    sections = {"adapt": {"mode": "dataset", "batch_size": 5, "epochs": 2, "lr": 1e-3},
                "classifier": {"train_on": "synthetic"}}
    one = new_run(tmp_path, generator_models, toy_data, "one", **sections,
                  runtime={"store": str(tmp_path / "store-one")})
    two = new_run(tmp_path, generator_models, toy_data, "two", **sections,
                  runtime={"store": str(tmp_path / "store-two")})
    (link,) = adapt(one)
    reference = link.resolve()

    launch_with_env(2, "-q", "adapt", two)
    trained = (two / "adapters" / link.name).resolve()
    assert trained != reference
    ours, theirs = load_file(trained / LORA_WEIGHTS), load_file(reference / LORA_WEIGHTS)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for key in theirs:
        assert torch.allclose(ours[key], theirs[key], atol=ATOL), (key, (ours[key] - theirs[key]).abs().max())
    marker, expected = (json.loads((p / UNIT_MARKER).read_text()) for p in (trained, reference))
    assert marker["steps"] == expected["steps"] == 2 * 3
    assert marker["loss_per_epoch"] == pytest.approx(expected["loss_per_epoch"], rel=1e-5)
    assert [row.get("processes") for row in timings(two, "adapt")] == [2]


def test_other_commands_refuse_a_launcher(tmp_path, monkeypatch, capsys):
    from datadream.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "only `datadream train` and `datadream adapt`" in capsys.readouterr().err
