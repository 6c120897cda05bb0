"""Labelled image lists for the classifier, each sample carrying its origin explicitly (torch-free:
the torch datasets that decode them are in datadream.data.labelled)."""

from __future__ import annotations

from dataclasses import dataclass

from datadream.config import DataConfig
from datadream.data.fewshot import FewShotManifest
from datadream.data.sources import load_view
from datadream.errors import UserError

REAL, SYNTHETIC = "real", "synthetic"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    origin: str  # REAL or SYNTHETIC: never inferred from the path
    sha256: str | None = None  # when known, the image is checked against it as it is read


def real_shots(manifest: FewShotManifest, repeats: int = 1) -> list[Sample]:
    """The manifest's shots (hashes checked), each repeated `repeats` times."""
    shots = [Sample(str(manifest.verified_path(s)), c.label, REAL, sha256=s.sha256)
             for c in manifest.classes for s in c.images]
    return [sample for sample in shots for _ in range(repeats)]


def split_samples(data: DataConfig, manifest: FewShotManifest, split: str) -> list[Sample]:
    """The labelled images of a split ("val" or "test") of the run's dataset, with the labels the
    manifest uses; an empty list when the dataset has no such split."""
    view = load_view(data, splits=(split,))
    if view.keys != [c.key for c in manifest.classes]:
        raise UserError("the dataset's classes differ from those in fewshot.json (changed since init?);"
                        " restore the data or start a new run")
    return [Sample(str(item.path), item.label, REAL) for item in view.split(split)]
