"""The few-shot manifest (RUN/fewshot.json): which real images every stage and baseline uses.

Built once from `data.train`, with classes in a fixed label order and `shots` images per class
drawn reproducibly from `data.seed`; every image is recorded with its sha256 and re-checked
whenever a stage reads it, so no stage can silently train on different shots.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datadream.components.prompts import class_prompt
from datadream.config import DataConfig, stable_hash
from datadream.data.images import IMAGE_EXTENSIONS, list_images, load_rgb, sha256_file
from datadream.errors import UserError
from datadream.layout import class_slug

MANIFEST_VERSION = 1


@dataclass
class Shot:
    path: str  # relative to the manifest's root, POSIX separators
    sha256: str


@dataclass
class FewShotClass:
    label: int
    name: str  # display name, used in prompts; may hold any character
    folder: str  # folder under the root
    slug: str  # safe folder name inside RUN/
    prompt: str
    images: list[Shot] = field(default_factory=list)


@dataclass
class FewShotManifest:
    root: str
    shots: int
    seed: int
    domain: str
    classes: list[FewShotClass]
    version: int = MANIFEST_VERSION

    def digest(self) -> str:
        return stable_hash(asdict(self))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "FewShotManifest":
        raw = json.loads(text)
        classes = [
            FewShotClass(**{**c, "images": [Shot(**s) for s in c["images"]]}) for c in raw.pop("classes")
        ]
        return cls(classes=classes, **raw)

    def image_path(self, shot: Shot) -> Path:
        return Path(self.root) / shot.path

    def verified_path(self, shot: Shot) -> Path:
        """The image's path, after checking it is still the file the manifest recorded."""
        path = self.image_path(shot)
        if not path.is_file():
            raise UserError(f"few-shot image missing: {path} (listed in fewshot.json); restore it")
        if sha256_file(path) != shot.sha256:
            raise UserError(
                f"few-shot image changed since fewshot.json was written: {path}; restore the"
                " original or start a new run"
            )
        return path


def read_manifest(path: Path) -> FewShotManifest:
    if not path.is_file():
        raise UserError(f"{path} not found; create the run first with `datadream init CONFIG RUN`")
    try:
        return FewShotManifest.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path} is not a valid few-shot manifest ({err}); re-create the run") from None


def build_manifest(data: DataConfig) -> FewShotManifest:
    if not data.train:
        raise UserError("data.train is not set; give the few-shot image folder, e.g. --set data.train=DIR")
    root = Path(data.train)
    if not root.is_dir():
        raise UserError(f"data.train: folder not found: {root}")
    classes = []
    entries = discover_classes(root, Path(data.classnames) if data.classnames else None)
    names = [name for _, name in entries]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise UserError(f"two classes are both named '{duplicate}'; class names must be unique (they are the prompts)")
    for label, (folder, name) in enumerate(entries):
        images = list_images(root / folder)
        if not images:
            raise UserError(
                f"class folder {root / folder} holds no images (looked for"
                f" {', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        if len(images) < data.shots:
            raise UserError(
                f"class '{name}' has {len(images)} image(s) in {root / folder}, fewer than"
                f" data.shots={data.shots}; add images or lower data.shots"
            )
        chosen = sorted(_draw(images, data.shots, data.seed, folder))
        shots = []
        for path in chosen:
            load_rgb(path)  # fail now, naming the file, rather than in the middle of training
            shots.append(Shot(path=path.relative_to(root).as_posix(), sha256=sha256_file(path)))
        classes.append(
            FewShotClass(
                label=label,
                name=name,
                folder=folder,
                slug=class_slug(label, name, len(entries)),
                prompt=class_prompt(name, data.domain),
                images=shots,
            )
        )
    return FewShotManifest(root=str(root), shots=data.shots, seed=data.seed, domain=data.domain, classes=classes)


def _draw(images: list[Path], shots: int, seed: int, folder: str) -> list[Path]:
    """A draw that depends only on (seed, class folder, the folder's listing): adding a class or
    reordering labels does not change any other class's shots."""
    key = hashlib.sha256(f"{seed}/{folder}".encode()).digest()
    return random.Random(int.from_bytes(key[:8], "big")).sample(images, shots)


def discover_classes(root: Path, classnames: Path | None) -> list[tuple[str, str]]:
    """(folder, display name) in label order: sorted folder names, or the order of the class-names
    file when one is given."""
    folders = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not folders:
        raise UserError(f"data.train {root} has no class folders; expected {root}/<class>/<images>")
    if classnames is None:
        return [(folder, folder) for folder in folders]
    entries = read_classnames(classnames)
    missing = [folder for folder, _ in entries if folder not in folders]
    if missing:
        raise UserError(
            f"{classnames} lists class folder '{missing[0]}', which is not in {root}"
            f" ({len(missing)} missing); fix the name or add the folder"
        )
    listed = {folder for folder, _ in entries}
    extra = [folder for folder in folders if folder not in listed]
    if extra:
        raise UserError(
            f"class folder '{extra[0]}' in {root} is not in {classnames} ({len(extra)} unlisted);"
            " add it to the class-names file or move the folder out"
        )
    return entries


def read_classnames(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise UserError(f"data.classnames: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    entries: list[tuple[str, str]]
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        if isinstance(raw, dict):
            entries = [(str(k), str(v)) for k, v in raw.items()]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            entries = [(x, x) for x in raw]
        else:
            raise UserError(f"{path}: expected a list of class folders or a {{folder: name}} object")
    else:
        entries = []
        for line in text.splitlines():
            if not line.strip():
                continue
            folder, _, name = line.partition("\t")
            entries.append((folder.strip(), name.strip() or folder.strip()))
    if not entries:
        raise UserError(f"{path} lists no classes")
    seen: set[str] = set()
    for folder, _ in entries:
        if folder in seen:
            raise UserError(f"{path} lists class folder '{folder}' twice")
        seen.add(folder)
    return entries
