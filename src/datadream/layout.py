"""The run directory: one module that knows every path inside RUN/.

    RUN/config.yaml                       resolved config (the run's identity)
    RUN/fewshot.json                      the few-shot manifest
    RUN/adapters/<unit>/                  pytorch_lora_weights.safetensors + unit.json
    RUN/adapters/.partial-<unit>/         training state of an unfinished adapter
    RUN/synthetic/<class-slug>/<i>.png    generated images, one folder per class
    RUN/synthetic/index.jsonl             one row per image
    RUN/classifier/                       CLIP LoRA (peft layout), prompts.json, train.json, metrics.json
    RUN/logs/train/                       TensorBoard scalars of the classifier
    RUN/report/index.html                 the human view
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

DATASET_UNIT = "dataset"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNIT_MARKER = "unit.json"


def slugify(name: str) -> str:
    """A class name made safe as one path component: ASCII letters, digits and dashes only, so
    '/', '..', quotes and unicode never reach the file system raw. Not unique by itself (see
    `class_slug`)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:60].rstrip("-") or "class"


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
        return self.adapters / unit

    def adapter_checkpoint(self, unit: str) -> Path:
        """Resumable training state of an unfinished adapter (hidden: not an adapter)."""
        return self.adapters / f".partial-{unit}"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    def synthetic_class(self, slug: str) -> Path:
        return self.synthetic / slug

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
        return self.classifier / "metrics.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"


def image_name(index: int, total: int) -> str:
    width = max(5, len(str(total - 1)))
    return f"{index:0{width}d}.png"
