"""The few-shot manifest (RUN/fewshot.json): which real images every stage and baseline uses.

Built once from the training split, with classes in a fixed label order and `shots` images per class
drawn reproducibly from `data.seed`; every image is recorded with its sha256 and re-checked
whenever a stage reads it, so no stage can silently train on different shots.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datadream.components.prompts import class_prompt
from datadream.config import DataConfig, stable_hash
from datadream.data.catalog import get_entry
from datadream.data.images import load_rgb, sha256_file
from datadream.data.sources import DatasetView, load_view
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
    key: str  # stable class id: its folder, or its name in the split file
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


def build_manifest(data: DataConfig, view: DatasetView | None = None) -> FewShotManifest:
    """Draw `data.shots` training images per class from the dataset `data` describes."""
    view = view or load_view(data)
    if data.dataset:
        expected = get_entry(data.dataset).classes
        if len(view.keys) != expected:
            raise UserError(f"data.dataset={data.dataset} has {expected} classes, but the data given has"
                            f" {len(view.keys)}; check data.root / data.split_file")
    by_label: dict[int, list[Path]] = {label: [] for label in range(len(view.keys))}
    for item in view.split("train"):
        by_label[item.label].append(item.path)
    classes = []
    for label, (key, name) in enumerate(zip(view.keys, view.names)):
        images = sorted(by_label[label], key=lambda p: p.as_posix())
        if not images:
            raise UserError(f"class '{name}' has no training images (in {view.image_root}); add images"
                            " or remove the class")
        if len(images) < data.shots:
            raise UserError(
                f"class '{name}' has {len(images)} training image(s), fewer than data.shots={data.shots};"
                " add images or lower data.shots"
            )
        shots = []
        for path in sorted(_draw(images, data.shots, data.seed, key)):
            load_rgb(path)  # fail now, naming the file, rather than in the middle of training
            relative = Path(os.path.relpath(path, view.image_root)).as_posix()
            shots.append(Shot(path=relative, sha256=sha256_file(path)))
        classes.append(FewShotClass(label=label, name=name, key=key,
                                    slug=class_slug(label, name, len(view.keys)),
                                    prompt=class_prompt(name, data.domain), images=shots))
    return FewShotManifest(root=str(view.image_root), shots=data.shots, seed=data.seed, domain=data.domain,
                           classes=classes)


def _draw(images: list[Path], shots: int, seed: int, key: str) -> list[Path]:
    """A draw that depends only on (seed, class id, the class's training files): adding a class or
    reordering labels does not change any other class's shots."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(images, shots)
