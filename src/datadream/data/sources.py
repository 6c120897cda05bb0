"""Dataset sources: every supported layout becomes the same view — classes in label order and
train/val/test lists of labelled files.

- an image folder: `data.train` (and `data.val`, `data.test`), each ROOT/<class>/<images>;
- `data.root` holding `train/`, `val/`, `test/` image folders;
- a CoOp-style split file (`data.split_file`, JSON: {"train"|"val"|"test": [[path, label, name]]})
  with its image root `data.root` — the format the few-shot CLIP literature distributes;
- a CSV split file with the columns `split,filename,class`, paths relative to `data.root`.

An optional class-names file (`data.classnames`) orders the classes and/or overrides their
displayed names (the names the prompts use).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from datadream.config import DataConfig
from datadream.data.images import list_images
from datadream.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    path: Path
    label: int


@dataclass
class DatasetView:
    image_root: Path  # few-shot paths are recorded relative to it
    keys: list[str]  # stable class ids in label order (folder or split-file name)
    names: list[str]  # displayed names in label order (used in prompts)
    splits: dict[str, list[Item]] = field(default_factory=dict)

    def split(self, name: str) -> list[Item]:
        return self.splits.get(name, [])


def load_view(data: DataConfig, splits: tuple[str, ...] = SPLITS) -> DatasetView:
    """The dataset as `data` describes it; image folders are listed only for `splits` (listing
    ImageNet's training folder takes a while, and evaluation does not need it)."""
    if data.split_file:
        if not data.root:
            raise UserError("data.split_file needs data.root, the folder its image paths are relative to")
        split_file = Path(data.split_file)
        if not split_file.is_file():
            raise UserError(f"data.split_file: file not found: {split_file}")
        reader = _read_csv if split_file.suffix.lower() == ".csv" else _read_coop_json
        view = reader(split_file, Path(data.root))
    elif data.root:
        root = Path(data.root)
        if not (root / "train").is_dir():
            raise UserError(f"data.root: expected {root}/train (and optionally val/, test/) image folders,"
                            " or set data.split_file")
        folders = {s: root / s for s in SPLITS if (root / s).is_dir()}
        view = _read_folders(folders, "data.root", splits)
    elif data.train:
        folders = {s: Path(getattr(data, s)) for s in SPLITS if getattr(data, s)}
        view = _read_folders(folders, "data", splits)
    else:
        raise UserError("no dataset given: set data.train (an image folder), data.root, or data.split_file")
    if data.classnames:
        _apply_classnames(view, Path(data.classnames))
    elif data.dataset:
        _apply_catalog_names(view, data.dataset)
    duplicate = next((n for n in view.names if view.names.count(n) > 1), None)
    if duplicate is not None:
        raise UserError(f"two classes are both named '{duplicate}'; class names must be unique (they are the prompts)")
    if "train" in splits and not view.split("train"):
        raise UserError("the dataset has no training images to draw the few shots from")
    return view


def _read_folders(folders: dict[str, Path], key: str, wanted: tuple[str, ...]) -> DatasetView:
    train = folders["train"]
    if not train.is_dir():
        raise UserError(f"{key}.train: folder not found: {train}")
    keys = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not keys:
        raise UserError(f"{key}.train {train} has no class folders; expected {train}/<class>/<images>")
    view = DatasetView(image_root=train, keys=keys, names=list(keys))
    for split, root in folders.items():
        if split not in wanted:
            continue
        if not root.is_dir():
            raise UserError(f"{key}.{split}: folder not found: {root}")
        label_of = {k: i for i, k in enumerate(keys)}
        unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                         and p.name not in label_of)
        if unknown:
            raise UserError(f"{key}.{split}: folder '{unknown[0]}' in {root} is not a class of {train};"
                            " remove or rename it")
        view.splits[split] = [Item(path, label_of[k]) for k in keys if (root / k).is_dir()
                              for path in list_images(root / k)]
    return view


def _read_coop_json(path: Path, root: Path) -> DatasetView:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict) or "train" not in raw:
        raise UserError(f"{path}: expected a JSON object with 'train' (and 'val', 'test') lists of [path, label, class name]")
    names: dict[int, str] = {}
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        items = []
        for position, entry in enumerate(raw.get(split) or []):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool)):
                raise UserError(f"{path}: {split}[{position}] is not [relative path, integer label, class name]")
            relative, label, name = entry
            if names.setdefault(label, str(name)) != str(name):
                raise UserError(f"{path}: label {label} is named both '{names[label]}' and '{name}'")
            items.append(Item(root / relative, label))
        if split in raw:
            splits[split] = items
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{path}: labels must be 0..N-1 without gaps; found {len(names)} labels up to {max(names)}")
    keys = [names[i] for i in range(len(names))]
    return DatasetView(image_root=root, keys=keys, names=list(keys), splits=splits)


def _read_csv(path: Path, root: Path) -> DatasetView:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"split", "filename", "class"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected the columns split,filename,class; found {reader.fieldnames}")
        rows = list(reader)
    bad = next((r for r in rows if r["split"] not in SPLITS), None)
    if bad is not None:
        raise UserError(f"{path}: split '{bad['split']}' (for {bad['filename']}) is not train, val or test")
    empty = next((n for n, r in enumerate(rows, 2) if not r["class"] or not r["filename"]), None)
    if empty is not None:
        raise UserError(f"{path}: line {empty} has an empty filename or class")
    keys = sorted({r["class"] for r in rows})
    label_of = {k: i for i, k in enumerate(keys)}
    splits: dict[str, list[Item]] = {}
    for row in rows:
        splits.setdefault(row["split"], []).append(Item(root / row["filename"], label_of[row["class"]]))
    return DatasetView(image_root=root, keys=keys, names=list(keys), splits=splits)


def _apply_classnames(view: DatasetView, path: Path) -> None:
    """A class-names file either lists the class ids (optionally `id<TAB>name`, or a JSON
    {id: name}) and so fixes label order and names, or lists one displayed name per label in the
    existing label order. Anything in between is refused rather than guessed."""
    entries, explicit = read_classnames(path)
    listed = [key for key, _ in entries]
    if set(listed) == set(view.keys) and len(listed) == len(view.keys):
        order = {key: i for i, key in enumerate(listed)}
        relabel = [order[key] for key in view.keys]  # old label -> new label
        view.keys, view.names = listed, [name for _, name in entries]
        view.splits = {s: [Item(i.path, relabel[i.label]) for i in items] for s, items in view.splits.items()}
        return
    if explicit:
        matching = [key for key in listed if key in set(view.keys)]
        missing = next((k for k in view.keys if k not in set(listed)), None)
        extra = next((k for k in listed if k not in set(view.keys)), None)
        detail = f"class '{missing}' is not in it" if missing else f"it lists '{extra}', which is not a class"
        raise UserError(f"{path} maps {len(matching)} of the {len(view.keys)} class ids ({detail}); list every"
                        " class id once, or give one displayed name per label without ids")
    if len(listed) != len(view.keys):
        raise UserError(f"{path} lists {len(listed)} names but the dataset has {len(view.keys)} classes;"
                        " list every class id once, or one displayed name per label")
    view.names = listed


def _apply_catalog_names(view: DatasetView, key: str) -> None:
    """A catalog dataset is prompted with the published class names (label order), not the names
    its split file happens to carry (e.g. CoOp's EuroSAT file says "Annual Crop Land" where the
    published list says "AnnualCrop")."""
    names = json.loads(resources.files("datadream").joinpath("resources/classnames.json").read_text(encoding="utf-8"))
    published = names.get(key)
    if published is not None and len(published) == len(view.keys):
        view.names = list(published)


def read_classnames(path: Path) -> tuple[list[tuple[str, str]], bool]:
    """(id or name, displayed name) entries, and whether the file maps ids to names explicitly."""
    if not path.is_file():
        raise UserError(f"data.classnames: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    explicit = False
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        if isinstance(raw, dict):
            entries, explicit = [(str(k), str(v)) for k, v in raw.items()], True
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            entries = [(x, x) for x in raw]
        else:
            raise UserError(f"{path}: expected a list of names or a {{class id: name}} object")
    else:
        entries = []
        for line in text.splitlines():
            if not line.strip():
                continue
            key, tab, name = line.partition("\t")
            explicit = explicit or bool(tab)
            entries.append((key.strip(), name.strip() or key.strip()))
    if not entries:
        raise UserError(f"{path} lists no classes")
    seen: set[str] = set()
    for key, _ in entries:
        if key in seen:
            raise UserError(f"{path} lists '{key}' twice")
        seen.add(key)
    return entries, explicit
