import json
from pathlib import Path

import pytest
from PIL import Image

from datadream.config import DataConfig
from datadream.data.fewshot import build_manifest
from datadream.errors import UserError


def make_folder(root: Path, counts: dict[str, int], size=(12, 10)) -> Path:
    for name, count in counts.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (i * 20 % 256, len(name) * 30 % 256, 7)).save(folder / f"img{i:02d}.png")
    return root


def test_label_order_is_sorted_folders_and_draw_is_reproducible(tmp_path):
    root = make_folder(tmp_path / "train", {"zebra": 6, "apple": 5, "mango": 4})
    a = build_manifest(DataConfig(train=str(root), shots=3, seed=1))
    b = build_manifest(DataConfig(train=str(root), shots=3, seed=1))
    assert [c.name for c in a.classes] == ["apple", "mango", "zebra"]
    assert [c.label for c in a.classes] == [0, 1, 2]
    assert a == b and a.digest() == b.digest()
    assert all(len(c.images) == 3 for c in a.classes)
    seeds = {tuple(s.path for s in build_manifest(DataConfig(train=str(root), shots=3, seed=s)).classes[2].images)
             for s in range(6)}
    assert len(seeds) > 1, "the seed must change the draw"
    shot = a.classes[0].images[0]
    assert shot.path.startswith("apple/") and len(shot.sha256) == 64


def test_a_class_draw_does_not_depend_on_other_classes(tmp_path):
    root = make_folder(tmp_path / "train", {"apple": 8, "zebra": 8})
    before = build_manifest(DataConfig(train=str(root), shots=3)).classes[1].images
    make_folder(tmp_path / "train", {"banana": 8})
    after = build_manifest(DataConfig(train=str(root), shots=3)).classes[2].images
    assert before == after


def test_classnames_file_sets_order_and_display_names(tmp_path):
    root = make_folder(tmp_path / "train", {"fa18": 2, "coltsfoot": 2, "creme": 2, "dots": 2})
    names = tmp_path / "names.txt"
    names.write_text("fa18\tF/A-18\ncoltsfoot\tcolt's foot\ncreme\tcrème brûlée\ndots\t..\n", encoding="utf-8")
    manifest = build_manifest(DataConfig(train=str(root), shots=2, classnames=str(names), domain="aircraft"))
    assert [c.name for c in manifest.classes] == ["F/A-18", "colt's foot", "crème brûlée", ".."]
    assert manifest.classes[0].prompt == "a aircraft photo of a F/A-18"
    assert [c.slug for c in manifest.classes] == ["000-f-a-18", "001-colt-s-foot", "002-creme-brulee", "003-class"]
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps({"dots": "..", "fa18": "F/A-18", "creme": "c", "coltsfoot": "d"}))
    manifest = build_manifest(DataConfig(train=str(root), shots=2, classnames=str(as_json)))
    assert [c.key for c in manifest.classes] == ["dots", "fa18", "creme", "coltsfoot"]
    # One displayed name per line, without ids: names for the labels in their existing order.
    positional = tmp_path / "display.txt"
    positional.write_text("Colt's foot\nCrème\nDots\nF/A-18\n", encoding="utf-8")
    manifest = build_manifest(DataConfig(train=str(root), shots=2, classnames=str(positional)))
    assert [(c.key, c.name) for c in manifest.classes] == [
        ("coltsfoot", "Colt's foot"), ("creme", "Crème"), ("dots", "Dots"), ("fa18", "F/A-18")]


def test_manifest_round_trips_through_json(tmp_path):
    from datadream.data.fewshot import FewShotManifest

    root = make_folder(tmp_path / "train", {"a b": 2, "ünï": 2})
    manifest = build_manifest(DataConfig(train=str(root), shots=2))
    assert FewShotManifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: None, r"data.train: folder not found"),
        (lambda r: r.mkdir(), r"has no class folders; expected .*/<class>/<images>"),
        (lambda r: make_folder(r, {"cat": 3, "dog": 0}), r"class 'dog' has no training images"),
        (lambda r: make_folder(r, {"cat": 3, "dog": 1}), r"class 'dog' has 1 training image\(s\), fewer than data.shots=2"),
    ],
)
def test_bad_folders_give_one_clear_message(tmp_path, setup, message):
    root = tmp_path / "train"
    setup(root)
    with pytest.raises(UserError, match=message):
        build_manifest(DataConfig(train=str(root), shots=2))


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "train", {"cat": 2})
    (root / "cat" / "img01.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=r"unreadable image .*cat/img01.png"):
        build_manifest(DataConfig(train=str(root), shots=2))


def test_classnames_file_must_match_the_folders(tmp_path):
    root = make_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    with pytest.raises(UserError, match=r"names.txt lists 1 names but the dataset has 2 classes"):
        build_manifest(DataConfig(train=str(root), shots=2, classnames=str(names)))
    names.write_text("cat\ndog\nbird\n")
    with pytest.raises(UserError, match=r"lists 3 names but the dataset has 2 classes"):
        build_manifest(DataConfig(train=str(root), shots=2, classnames=str(names)))
    names.write_text("cat\tCat\nbird\tBird\n")
    with pytest.raises(UserError, match=r"maps 1 of the 2 class ids \(class 'dog' is not in it\)"):
        build_manifest(DataConfig(train=str(root), shots=2, classnames=str(names)))
    # Names that happen to equal some ids are still names, one per label.
    names.write_text("dog\nDoggo\n")
    manifest = build_manifest(DataConfig(train=str(root), shots=2, classnames=str(names)))
    assert [c.name for c in manifest.classes] == ["dog", "Doggo"]


def test_changed_shot_is_detected(tmp_path):
    root = make_folder(tmp_path / "train", {"cat": 2})
    manifest = build_manifest(DataConfig(train=str(root), shots=2))
    shot = manifest.classes[0].images[0]
    assert manifest.verified_path(shot).is_file()
    Image.new("RGB", (5, 5), (1, 2, 3)).save(manifest.image_path(shot))
    with pytest.raises(UserError, match=r"changed since fewshot.json was written"):
        manifest.verified_path(shot)
