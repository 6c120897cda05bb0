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
from datadream.catalog import get_entry
from datadream.data.images import load_rgb, sha256_file
from datadream.data.sources import DatasetView, load_view
from datadream.errors import UserError
from datadream.layout import checked_component, class_slug

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
    # Training images passed over by the draw because their content (or path) is also in the
    # val or test split: the shots never include an image the classifier is evaluated on.
    excluded: list[str] = field(default_factory=list)


@dataclass
class FewShotManifest:
    root: str
    shots: int
    seed: int
    domain: str
    classes: list[FewShotClass]
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict:
        """As written to fewshot.json; an empty `excluded` is left out, so manifests without
        exclusions keep the form (and the digest) they had before the field existed."""
        raw = asdict(self)
        for cls in raw["classes"]:
            if not cls["excluded"]:
                del cls["excluded"]
        return raw

    def digest(self) -> str:
        return stable_hash(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

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
        manifest = FewShotManifest.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a valid few-shot manifest ({str(err)[:120]}); re-create the run") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: FewShotManifest, path: Path) -> None:
    """Everything later joined to a path or used as an index is checked here, once: a manifest
    edited by hand must not make a stage write outside the run or train on the wrong label."""
    slugs = set()
    for position, cls in enumerate(manifest.classes):
        where = f"{path}: classes[{position}]"
        if not isinstance(cls.label, int) or isinstance(cls.label, bool) or cls.label != position:
            raise UserError(f"{where}.label is {cls.label!r:.40}, expected {position}; restore the file or re-create the run")
        checked_component(cls.slug, f"{where}.slug")
        if cls.slug in slugs:
            raise UserError(f"{where}.slug '{cls.slug}' is used twice; restore the file or re-create the run")
        slugs.add(cls.slug)
        for field_name in ("name", "key", "prompt"):
            if not isinstance(getattr(cls, field_name), str):
                raise UserError(f"{where}.{field_name} must be text; restore the file or re-create the run")
        if not cls.images or not all(isinstance(s.path, str) and isinstance(s.sha256, str) for s in cls.images):
            raise UserError(f"{where}.images must list the shots with path and sha256; restore the file or re-create the run")


def build_manifest(data: DataConfig, view: DatasetView | None = None) -> FewShotManifest:
    """Draw `data.shots` training images per class from the dataset `data` describes; a drawn
    image whose content or path is also in the val or test split is passed over (and recorded)."""
    view = view or load_view(data)
    if data.dataset:
        expected = get_entry(data.dataset).classes
        if len(view.keys) != expected:
            raise UserError(f"data.dataset={data.dataset} has {expected} classes, but the data given has"
                            f" {len(view.keys)}; check data.root / data.split_file")
    by_label: dict[int, list[Path]] = {label: [] for label in range(len(view.keys))}
    for item in view.split("train"):
        by_label[item.label].append(item.path)
    evaluation = EvaluationFiles(view)
    classes = []
    for label, (key, name) in enumerate(zip(view.keys, view.names)):
        images = sorted(by_label[label], key=lambda p: p.as_posix())
        if not images:
            raise UserError(f"class '{name}' has no training images (in {view.image_root}); add images"
                            " or remove the class")
        drawn, excluded = _draw_avoiding(images, data.shots, data.seed, key, evaluation)
        if len(drawn) < data.shots:
            extra = f" once {len(excluded)} also in val/test are left out" if excluded else ""
            raise UserError(
                f"class '{name}' has {len(images) - len(excluded)} training image(s){extra}, fewer than"
                f" data.shots={data.shots}; add images or lower data.shots"
            )
        shots = []
        for path in sorted(drawn):
            load_rgb(path)  # fail now, naming the file, rather than in the middle of training
            shots.append(Shot(path=_relative(path, view), sha256=sha256_file(path)))
        classes.append(FewShotClass(label=label, name=name, key=key,
                                    slug=class_slug(label, name, len(view.keys)),
                                    prompt=class_prompt(name, data.domain), images=shots,
                                    excluded=sorted(_relative(p, view) for p in excluded)))
    return FewShotManifest(root=str(view.image_root), shots=data.shots, seed=data.seed, domain=data.domain,
                           classes=classes)


def _relative(path: Path, view: DatasetView) -> str:
    return Path(os.path.relpath(path, view.image_root)).as_posix()


class EvaluationFiles:
    """Which files are in the val and test splits, by path and (hashed only when a training
    file's size matches) by content: cheap at any scale."""

    def __init__(self, view: DatasetView):
        self.paths: set[str] = set()
        self.by_size: dict[int, list[Path]] = {}
        for split in ("val", "test"):
            for item in view.split(split):
                self.paths.add(os.path.normpath(item.path))
                try:
                    self.by_size.setdefault(os.stat(item.path).st_size, []).append(item.path)
                except OSError:
                    continue  # reported by the check that every listed file exists
        self._hashes: dict[Path, str] = {}

    def contains(self, path: Path) -> bool:
        if os.path.normpath(path) in self.paths:
            return True
        same_size = self.by_size.get(os.stat(path).st_size)
        if not same_size:
            return False
        digest = sha256_file(path)
        return any(self._hash(other) == digest for other in same_size)

    def _hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]


def _draw_avoiding(images: list[Path], shots: int, seed: int, key: str,
                   evaluation: EvaluationFiles) -> tuple[list[Path], list[Path]]:
    """The draw of `_draw`, redrawn without any image that is also an evaluation image. A class
    with no such image gets exactly the draw it always had."""
    candidates, excluded = list(images), []
    while True:
        drawn = _draw(candidates, min(shots, len(candidates)), seed, key)
        leaking = [path for path in drawn if evaluation.contains(path)]
        if not leaking:
            return drawn, excluded
        excluded += leaking
        candidates = [path for path in candidates if path not in set(leaking)]


def _draw(images: list[Path], shots: int, seed: int, key: str) -> list[Path]:
    """A draw that depends only on (seed, class id, the class's training files): adding a class or
    reordering labels does not change any other class's shots."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(images, shots)
