"""Every path of a run and of the store: no other module joins a name to RUN/ or STORE/.

    RUN/config.yaml                       resolved config (the run's identity)
    RUN/fewshot.json                      the few-shot manifest
    RUN/adapters/<unit>                   shows STORE/adapters/<fingerprint>/ (weights + unit.json)
    RUN/synthetic/<class-slug>            shows STORE/synthetic/<fingerprint>/ (<i>.png + .datadream.json)
                                          (folders of hard links, or symbolic links across file systems)
    RUN/synthetic/index.jsonl             one row per image: the synthetic set's done-marker
    RUN/classifier/                       CLIP LoRA (peft layout), prompts.json, train.json, metrics.json,
                                          predictions.csv (every test image's top-5)
    RUN/.partial-classifier/              training state of an unfinished classifier
    RUN/.locks/<unit>.lock                one lock per unit of the run (train, evaluate, index)
    RUN/logs/train/                       TensorBoard scalars of the classifier
    RUN/logs/timings.jsonl                wall time of every unit (kept out of the markers)
    RUN/report/index.html                 the human view

    STORE/adapters/<fingerprint>/         one finished adapter, shared by every run that needs it
    STORE/adapters/.partial-<fingerprint>/  training state of an unfinished adapter
    STORE/synthetic/<fingerprint>/        one class's images; .shard-<start>.json per finished shard,
                                          .datadream.json (every image's size and sha256) when complete
    STORE/previews/<fingerprint>/         the same class's first seeds sampled with its adapter off
                                          (unadapted-<i>.png, preview.json): the report's grid, not data
    STORE/locks/<unit>.lock               one lock per unit of work, naming its owner
    STORE/runs/<hash>.json                the runs that use this store (what `store gc` keeps), by their path
                                          relative to the store and absolute (right after `mv` or `cp -a`)
    STORE/.datadream-store                the store's own marker: `store gc` acts on no folder without it
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from datadream.errors import UserError

DATASET_UNIT = "dataset"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNIT_MARKER = "unit.json"  # an adapter's done-marker
CLASS_MARKER = ".datadream.json"  # a synthetic class's done-marker (hidden: image-folder readers skip it)
PREVIEW_MARKER = "preview.json"  # an un-adapted preview's done-marker
SHARD_MARKER_PREFIX = ".shard-"
CLASSIFIER_MARKER = "train.json"  # the classifier's done-marker
LORA_FOLDER = "lora"
PROMPTS = "prompts.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
STORE_FOLDER = "datadream-store"  # the default store, beside the run folder
STORE_MARKER = ".datadream-store"


def slugify(name: str) -> str:
    """A class name made safe as one path component: ASCII letters, digits and dashes only, so
    '/', '..', quotes and unicode never reach the file system raw. Not unique by itself (see
    `class_slug`)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:60].rstrip("-") or "class"


# What a name read back from a run file (a slug, a unit id, an index row) may be before it is
# joined to a path: one component, no separators, no "." or "..", nothing hidden.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_safe_component(name: object) -> bool:
    return isinstance(name, str) and bool(_SAFE_COMPONENT.fullmatch(name)) and ".." not in name


_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # config.stable_hash: how the store names its entries


def is_fingerprint(name: str) -> bool:
    return bool(_FINGERPRINT.fullmatch(name))


def checked_component(name: object, where: str) -> str:
    """`name` if it is a single safe path component; otherwise one line naming `where` it came from."""
    if not is_safe_component(name):
        shown = repr(name)[:80]
        raise UserError(f"{where}: {shown} is not a single safe folder name (letters, digits, '.', '_', '-');"
                        " the file was edited or damaged: restore it or re-create the run")
    return name  # type: ignore[return-value]


def class_slug(label: int, name: str, num_classes: int) -> str:
    """Label-prefixed slug: unique even when two names slugify alike, and sorts in label order."""
    width = max(3, len(str(num_classes - 1)))
    return f"{label:0{width}d}-{slugify(name)}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def fewshot(self) -> Path:
        return self.root / "fewshot.json"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter(self, unit: str) -> Path:
        return self.adapters / checked_component(unit, "adapter unit")

    def lock(self, unit: str) -> Path:
        return self.root / ".locks" / f"{checked_component(unit, 'unit')}.lock"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    def synthetic_class(self, slug: str) -> Path:
        return self.synthetic / checked_component(slug, "class folder")

    @property
    def synthetic_index(self) -> Path:
        return self.synthetic / "index.jsonl"

    @property
    def classifier(self) -> Path:
        return self.root / "classifier"

    @property
    def classifier_checkpoint(self) -> Path:
        return self.root / ".partial-classifier"

    @property
    def metrics(self) -> Path:
        return self.classifier / METRICS

    @property
    def predictions(self) -> Path:
        return self.classifier / PREDICTIONS

    @property
    def classifier_marker(self) -> Path:
        return self.classifier / CLASSIFIER_MARKER

    @property
    def train_logs(self) -> Path:
        return self.logs / "train"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def timings(self) -> Path:
        return self.logs / "timings.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"

    @property
    def inspect(self) -> Path:
        return self.root / "inspect.json"


@dataclass(frozen=True)
class StoreLayout:
    """Finished units under their fingerprint, shared by every run (and machine) that uses the
    same store: a unit is found by what it is made from, never by the run that made it."""

    root: Path

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter(self, fingerprint: str) -> Path:
        return self.adapters / checked_component(fingerprint, "adapter fingerprint")

    def adapter_checkpoint(self, fingerprint: str) -> Path:
        """Resumable training state of an unfinished adapter (hidden: not an adapter)."""
        return self.adapters / f".partial-{checked_component(fingerprint, 'adapter fingerprint')}"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    def synthetic_class(self, fingerprint: str) -> Path:
        return self.synthetic / checked_component(fingerprint, "synthetic fingerprint")

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def preview(self, fingerprint: str) -> Path:
        """Un-adapted samples beside the synthetic class `fingerprint` (outside it, so that an image
        folder loader never takes them for training data)."""
        return self.previews / checked_component(fingerprint, "synthetic fingerprint")

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def lock(self, name: str) -> Path:
        return self.locks / f"{checked_component(name, 'unit')}.lock"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def marker(self) -> Path:
        return self.root / STORE_MARKER


def shard_marker(start: int, total: int) -> str:
    return f"{SHARD_MARKER_PREFIX}{image_name(start, total).removesuffix('.png')}.json"


def preview_name(index: int, total: int) -> str:
    return f"unadapted-{image_name(index, total)}"


def image_name(index: int, total: int) -> str:
    width = max(5, len(str(total - 1)))
    return f"{index:0{width}d}.png"
