"""`datadream compare`: one page and a CSV over runs, read from their files."""

from __future__ import annotations

import csv

from conftest import run_cli, tiny_config, write_config
from datadream.config import load_config
from datadream.pipeline import run_all


def test_compare_names_what_differs_and_every_class(tmp_path, tiny_models, toy_data):
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        classifier={"train_on": "real", "epochs": 1}))
    runs = [run_all(load_config(config, [f"classifier.lr={lr}"]), tmp_path / name / "run").run
            for name, lr in (("a", 0.001), ("b", 0.01))]
    result = run_cli("compare", *runs, "-o", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open(encoding="utf-8")))
    assert [r["run"] for r in rows] == ["a/run", "b/run"]  # same folder name: told apart by the parent
    assert [float(r["classifier.lr"]) for r in rows] == [0.001, 0.01]
    assert "data.train" not in rows[0] and {f"top1:{c}" for c in ("circle", "square", "stripes", "triangle")} <= rows[0].keys()
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "Per-class top-1 %, change against a/run" in page and "classifier.lr" in page and "<svg" in page
    assert "different test splits" not in page


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli("compare", tmp_path, "-o", tmp_path / "cmp")
    assert result.returncode == 2 and "is not a datadream run" in result.stderr


def test_compare_refuses_output_inside_a_run_a_run_twice_and_a_file(tmp_path, tiny_models, toy_data):
    from datadream.runs import init_run
    from test_errors import assert_one_line_error

    config = write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train",
                                                             classifier={"train_on": "real"}))
    run = init_run(load_config(config), tmp_path / "run").layout.root
    other = init_run(load_config(config, ["classifier.lr=0.01"]), tmp_path / "other").layout.root
    assert_one_line_error(run_cli("compare", run, other, "-o", other / "report"),
                          f"-o {other / 'report'} is inside the run {other}", f"-o {tmp_path / 'compare'}")
    assert not (other / "report").exists()
    assert_one_line_error(run_cli("compare", run, tmp_path / "." / "run", "-o", tmp_path / "cmp"),
                          f"compare: {run} is given twice; give each run once")
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("compare", run, other, "-o", tmp_path / "notes.txt"),
                          "notes.txt is a file; give a folder")
    assert_one_line_error(run_cli("compare", run, other, "-o", tmp_path / "notes.txt" / "cmp"),
                          "cannot create the folder", "give another -o")
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "cmp").exists()
