"""Every dataset source gives the same view; the catalog; the test-leak check."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from datadream.config import DataConfig, load_config
from datadream.catalog import CATALOG
from datadream.data.fewshot import build_manifest
from datadream.data.leaks import find_leaks
from datadream.data.sources import load_view
from datadream.errors import UserError

CLASSES = ["forest", "river", "sea_lake"]


def write_images(root: Path, per_split: dict[str, int]) -> dict[str, list[tuple[str, int, str]]]:
    """root/<class>/<split>_<i>.jpg, all distinct; returns CoOp-style entries per split."""
    entries: dict[str, list] = {}
    for split, count in per_split.items():
        for label, name in enumerate(CLASSES):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                relative = f"{name}/{split}_{i}.jpg"
                Image.new("RGB", (20 + i, 16), (label * 80, i * 30 % 256, len(split) * 20)).save(root / relative)
                entries.setdefault(split, []).append([relative, label, name])
    return entries


@pytest.fixture()
def coop(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "eurosat" / "2750"
    split = tmp_path / "split_zhou_EuroSAT.json"
    split.write_text(json.dumps(write_images(root, {"train": 4, "val": 2, "test": 3})))
    return root, split


def test_coop_split_file(coop):
    root, split = coop
    view = load_view(DataConfig(root=str(root), split_file=str(split)))
    assert view.keys == CLASSES and view.names == CLASSES
    assert {s: len(items) for s, items in view.splits.items()} == {"train": 12, "val": 6, "test": 9}
    assert all(item.path.is_file() for items in view.splits.values() for item in items)


def test_csv_split_file(tmp_path, coop):
    root, split = coop
    rows = [(s, path, name) for s, entries in json.loads(split.read_text()).items() for path, _, name in entries]
    table = tmp_path / "split.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "filename", "class"])
        writer.writerows(rows)
    from_csv = load_view(DataConfig(root=str(root), split_file=str(table)))
    from_json = load_view(DataConfig(root=str(root), split_file=str(split)))
    assert from_csv.keys == from_json.keys
    assert {s: sorted(map(str, v)) for s, v in from_csv.splits.items()} == {
        s: sorted(map(str, v)) for s, v in from_json.splits.items()}


def test_root_with_split_folders(tmp_path, coop):
    root, split = coop
    for s, entries in json.loads(split.read_text()).items():
        for path, _, name in entries:
            target = tmp_path / "folders" / s / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / path, target)
    view = load_view(DataConfig(root=str(tmp_path / "folders")))
    assert view.keys == CLASSES and {s: len(v) for s, v in view.splits.items()} == {"train": 12, "val": 6, "test": 9}


def test_classnames_override_displayed_names_of_a_split_file(tmp_path, coop):
    root, split = coop
    names = tmp_path / "names.txt"
    names.write_text("Forest\nRiver\nSea or Lake\n")
    manifest = build_manifest(DataConfig(root=str(root), split_file=str(split), classnames=str(names),
                                         shots=2, domain="satellite "))
    assert [c.name for c in manifest.classes] == ["Forest", "River", "Sea or Lake"]
    assert manifest.classes[2].prompt == "a satellite photo of a Sea or Lake"
    assert all(s.path.split("/")[1].startswith("train_") for c in manifest.classes for s in c.images)


def test_catalog_key_fills_domain_and_checks_class_count(tmp_path, coop):
    root, split = coop
    config = tmp_path / "exp.yaml"
    config.write_text(f"data: {{root: {root}, split_file: {split}, dataset: eurosat, shots: 2}}\n")
    cfg = load_config(config)
    assert cfg.data.domain == "satellite "
    with pytest.raises(UserError, match=r"data.dataset=eurosat has 10 classes, but the data given has 3"):
        build_manifest(cfg.data)
    with pytest.raises(UserError, match=r"unknown dataset 'eurosatt'"):
        load_config(config, ["data.dataset=eurosatt"])


def test_catalog_matches_the_published_label_lists():
    published = Path(__file__).resolve().parents[2] / "shared" / "benchmark-data" / "classnames.json"
    if not published.is_file():
        pytest.skip("../shared/benchmark-data/classnames.json is not available")
    names = json.loads(published.read_text())
    assert set(names) == set(CATALOG)
    for key, entry in CATALOG.items():
        assert len(names[key]) == entry.classes, key


@pytest.mark.parametrize("text, message", [
    ("{", "is not valid JSON"),
    ('{"val": []}', "expected a JSON object with 'train'"),
    ('{"train": [["a.jpg", "x", "cat"]]}', r"train\[0\] is not \[relative path, integer label, class name\]"),
    ('{"train": [["a.jpg", 0, "cat"], ["b.jpg", 0, "dog"]]}', "label 0 is named both 'cat' and 'dog'"),
    ('{"train": [["a.jpg", 1, "cat"]]}', "labels must be 0..N-1"),
])
def test_bad_split_files(tmp_path, text, message):
    split = tmp_path / "split.json"
    split.write_text(text)
    with pytest.raises(UserError, match=message):
        load_view(DataConfig(root=str(tmp_path), split_file=str(split)))


def test_a_shot_also_in_val_or_test_is_redrawn_and_recorded(tmp_path, coop):
    root, split = coop
    data = DataConfig(root=str(root), split_file=str(split), shots=2)
    manifest = build_manifest(data)
    shot = manifest.classes[2].images[0]
    entries = json.loads(split.read_text())
    copy = "sea_lake/renamed_copy.jpg"
    shutil.copy(manifest.image_path(shot), root / copy)  # a few-shot image, renamed, in test
    entries["test"].append([copy, 2, "sea_lake"])
    other = manifest.classes[0].images[0].path
    entries["val"].append([other, 0, "forest"])  # the same file listed in train and val
    unused = next(e for e in entries["train"]
                  if e[1] == 1 and e[0] not in {s.path for c in manifest.classes for s in c.images})
    shutil.copy(root / unused[0], root / "river" / "unused_copy.jpg")  # a never-drawn image
    entries["val"].append(["river/unused_copy.jpg", 1, "river"])
    split.write_text(json.dumps(entries))
    view = load_view(data)
    redrawn = build_manifest(data, view)
    assert redrawn.classes[2].excluded == [shot.path] and redrawn.classes[0].excluded == [other]
    assert shot.path not in {s.path for s in redrawn.classes[2].images}
    assert len(redrawn.classes[2].images) == 2
    assert redrawn.classes[1].images == manifest.classes[1].images and not redrawn.classes[1].excluded
    assert find_leaks(view, redrawn) == []
    assert '"excluded"' not in manifest.to_json(), "manifests without exclusions keep their old form"
    assert [(a.name, b.name) for a, b in find_leaks(view, manifest)] == [
        (Path(other).name, Path(other).name), ("renamed_copy.jpg", Path(shot.path).name)]
    from datadream.data.leaks import content_duplicates

    assert sorted(a.name for a, _ in content_duplicates(view)) == sorted(
        ["renamed_copy.jpg", "unused_copy.jpg", Path(other).name])


def test_init_redraws_instead_of_refusing(tmp_path, coop, tiny_models):
    from conftest import run_cli

    root, split = coop
    entries = json.loads(split.read_text())
    entries["test"] += [e for e in entries["train"] if e[1] == 1][:3]  # listed in both splits
    split.write_text(json.dumps(entries))
    config = tmp_path / "exp.yaml"
    config.write_text(f"data: {{root: {root}, split_file: {split}, shots: 1}}\n"
                      f"generator: {{model: {tiny_models['sd']}}}\nclassifier: {{model: {tiny_models['clip']}}}\n")
    result = run_cli("init", config, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run" / "fewshot.json").read_text())
    test_paths = {e[0] for e in entries["test"]}
    assert not {s["path"] for c in manifest["classes"] for s in c["images"]} & test_paths


def test_datasets_list_and_check(tmp_path, coop):
    from conftest import run_cli

    listing = run_cli("datasets")
    assert listing.returncode == 0 and "fgvc_aircraft" in listing.stdout and "satellite" in listing.stdout
    root, split = coop
    (root / "river" / "train_1.jpg").write_bytes(b"broken")
    (root / "forest" / "test_0.jpg").unlink()
    result = run_cli("datasets", "check", "eurosat", "--root", root, "--split-file", split)
    assert result.returncode == 2
    assert "PROBLEM  3 classes, expected 10" in result.stdout
    assert "PROBLEM  train: 12 images, expected 13500 (CoOp protocol)" in result.stdout
    assert "PROBLEM  1 missing file(s), e.g." in result.stdout and "test_0.jpg" in result.stdout
    assert "PROBLEM  1 unreadable file(s), e.g." in result.stdout and "train_1.jpg" in result.stdout
    assert "ok       no val/test image duplicates a training image" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("datadream: error: eurosat: 6 problem(s)")


def test_catalog_datasets_are_prompted_with_the_published_names(tmp_path):
    """CoOp's EuroSAT split file names its classes "Annual Crop Land", ...; the published list
    says "AnnualCrop", ...: with data.dataset set, the prompts use the published list."""
    published = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                 "PermanentCrop", "Residential", "River", "SeaLake"]
    coop_names = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
                  "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]
    root = tmp_path / "2750"
    entries = []
    for label, name in enumerate(coop_names):
        (root / str(label)).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (label * 20, i * 50, 3)).save(root / str(label) / f"{i}.jpg")
            entries.append([f"{label}/{i}.jpg", label, name])
    split = tmp_path / "split_zhou_EuroSAT.json"
    split.write_text(json.dumps({"train": entries}))
    view = load_view(DataConfig(root=str(root), split_file=str(split), dataset="eurosat"))
    assert view.names == published and view.keys == coop_names
    # An explicit class-names file still wins; names equal to some ids are fine as names.
    names = tmp_path / "names.txt"
    names.write_text("\n".join(published))
    assert load_view(DataConfig(root=str(root), split_file=str(split), classnames=str(names))).names == published
