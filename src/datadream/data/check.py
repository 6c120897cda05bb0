"""`datadream datasets check`: validate a local copy of a benchmark dataset before any GPU time
is spent — class count, split sizes, missing and unreadable files — and say exactly what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from datadream.config import DataConfig
from datadream.catalog import get_entry
from datadream.data.leaks import content_duplicates
from datadream.data.sources import SPLITS, load_view


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(f"ok       {text}")

    def problem(self, text: str) -> None:
        self.lines.append(f"PROBLEM  {text}")
        self.problems.append(text)


def check_dataset(key: str, data: DataConfig) -> CheckReport:
    entry = get_entry(key)
    report = CheckReport()
    view = load_view(data)
    if len(view.keys) == entry.classes:
        report.ok(f"{len(view.keys)} classes")
    else:
        report.problem(f"{len(view.keys)} classes, expected {entry.classes}")
    for split in SPLITS:
        items = view.split(split)
        expected = entry.sizes.get(split)
        if expected is None:
            report.ok(f"{split}: {len(items)} images (the protocol has no {split} split)" if items
                      else f"{split}: none (the protocol has none)")
        elif len(items) == expected:
            report.ok(f"{split}: {len(items)} images")
        else:
            report.problem(f"{split}: {len(items)} images, expected {expected} (CoOp protocol)")
    missing, unreadable = [], []
    every = [item.path for split in SPLITS for item in view.split(split)]
    for path in tqdm(every, desc="checking files", unit="img", disable=None, leave=False):
        if not path.is_file():
            missing.append(path)
            continue
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for corrupt files
            unreadable.append(f"{path} ({type(err).__name__})")
    for label, found in (("missing", missing), ("unreadable", unreadable)):
        if found:
            shown = ", ".join(map(str, found[:3]))
            report.problem(f"{len(found)} {label} file(s), e.g. {shown}")
        else:
            report.ok(f"no {label} files among {len(every)}")
    duplicates = content_duplicates(view)
    if duplicates:
        evaluation, training = duplicates[0]
        report.problem(f"{len(duplicates)} val/test image(s) have the same content as a training image, e.g."
                       f" {evaluation} = {training}")
    else:
        report.ok("no val/test image duplicates a training image")
    return report
