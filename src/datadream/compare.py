"""`datadream compare RUN... -o DIR`: which of my runs is best, and where do they differ?

Writes DIR/index.html (the settings that differ, test top-1 / top-5 / macro top-1 with a bar
chart, the data-quality figures of `datadream inspect` where a run has them, and the per-class
top-1 of every run beside the first one's, largest changes first) and DIR/compare.csv (one row per
run). Everything is read from the runs' files (config.yaml, classifier/metrics.json,
inspect.json); nothing is recomputed and no model is loaded. Runs of different datasets can be
listed together, but their numbers compare only where the test split is the same; the page says
when it is not.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
from pathlib import Path

from datadream import atomic
from datadream.config import SECTIONS, read_config_file
from datadream.errors import UserError
from datadream.layout import RunLayout

PER_CLASS_ROWS = 50  # the classes that change most; the CSV has them all
QUALITY_KEYS = ("fd", "kd", "precision", "recall", "density", "coverage", "diversity_real", "diversity_synth",
                "near_copy_share", "clip_score_synth")


@dataclasses.dataclass
class RunSummary:
    root: Path
    settings: dict[str, object]
    metrics: dict | None
    quality: dict | None
    name: str = ""  # the folder's name, with as many parents as it takes to tell the runs apart


def _flat_settings(root: Path) -> dict[str, object]:
    config = read_config_file(RunLayout(root).config)
    return {f"{section}.{f.name}": getattr(getattr(config, section), f.name)
            for section in SECTIONS for f in dataclasses.fields(getattr(config, section))}


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path} is damaged (not JSON); run the stage that writes it again") from None
    return value if isinstance(value, dict) else None


def summarise_run(root: Path) -> RunSummary:
    layout = RunLayout(Path(root).resolve())
    if not layout.config.is_file():
        raise UserError(f"{layout.root} is not a datadream run (no config.yaml)")
    quality = _read(layout.inspect)
    return RunSummary(layout.root, _flat_settings(layout.root), _read(layout.metrics),
                      (quality or {}).get("overall"))


def differing_settings(runs: list[RunSummary]) -> list[str]:
    keys = runs[0].settings.keys()
    return [k for k in keys if len({json.dumps(r.settings.get(k), default=str) for r in runs}) > 1]


def compare(roots: list[Path], out: Path, title: str = "datadream: runs compared") -> Path:
    if not roots:
        raise UserError("compare: give at least one run folder")
    runs = [summarise_run(root) for root in roots]
    _check_out(runs, out)
    for depth in range(1, 1 + max(len(r.root.parts) for r in runs)):
        for run in runs:
            run.name = "/".join(run.root.parts[-depth:])
        if len({r.name for r in runs}) == len(runs):
            break
    differ = differing_settings(runs) if len(runs) > 1 else []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"compare: cannot create the folder {out} ({err.strerror or err}); give another -o") from None
    atomic.write_text(out / "compare.csv", _csv(runs, differ))
    atomic.write_text(out / "index.html", _page(runs, differ, title))
    return out / "index.html"


def _check_out(runs: list[RunSummary], out: Path) -> None:
    """Each run once, and the page outside every run: inside one it could overwrite the run's own
    files (RUN/report/index.html) and pass for a part of that run."""
    seen: set[Path] = set()
    for run in runs:
        if run.root in seen:
            raise UserError(f"compare: {run.root} is given twice; give each run once")
        seen.add(run.root)
    target = out.resolve()
    for run in runs:
        if target.is_relative_to(run.root):
            raise UserError(f"compare: -o {out} is inside the run {run.root}; write the comparison outside every"
                            f" run, e.g. -o {run.root.parent / 'compare'}")
    if out.exists() and not out.is_dir():
        raise UserError(f"compare: -o {out} is a file; give a folder (a new one, or one compare wrote before)")


def _metric(run: RunSummary, key: str):
    return (run.metrics or {}).get(key)


def _csv(runs: list[RunSummary], differ: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    quality = [k for k in QUALITY_KEYS if any((r.quality or {}).get(k) is not None for r in runs)]
    classes = list(dict.fromkeys(c for r in runs for c in ((r.metrics or {}).get("per_class") or {})))
    writer.writerow(["run", "path", "top1", "top5", "macro_top1", "n", *differ, *quality,
                     *[f"top1:{c}" for c in classes]])
    for run in runs:
        per_class = (run.metrics or {}).get("per_class") or {}
        writer.writerow([run.name, str(run.root), *(_blank(_metric(run, k)) for k in ("top1", "top5", "macro_top1", "n")),
                         *(_blank(run.settings.get(k)) for k in differ),
                         *(_blank((run.quality or {}).get(k)) for k in quality),
                         *(_blank(per_class.get(c)) for c in classes)])
    return buffer.getvalue()


def _blank(value) -> object:
    return "" if value is None else value


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(runs: list[RunSummary], differ: list[str], title: str) -> str:
    from datadream.report import STYLE

    parts = [f"<h1>{_e(title)}</h1>", f"<p class=muted>{len(runs)} run(s); table also in compare.csv</p>"]
    splits = {_metric(r, "test_split") for r in runs if r.metrics}
    if len(splits) > 1:
        parts.append("<p class=note>The runs were evaluated on different test splits (other datasets or data):"
                     " their accuracies do not compare directly.</p>")
    header = "".join(f"<th>{_e(k)}</th>" for k in differ)
    rows = []
    for run in runs:
        cells = "".join(f"<td class=num>{_number(_metric(run, k))}</td>" for k in ("top1", "top5", "macro_top1"))
        settings = "".join(f"<td>{_e(run.settings.get(k))}</td>" for k in differ)
        rows.append(f"<tr><td title='{_e(run.root)}'>{_e(run.name)}</td>{cells}"
                    f"<td class=num>{_e(_metric(run, 'n') or '')}</td>{settings}</tr>")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th class=num>top-1 %</th><th class=num>top-5 %</th>"
                 f"<th class=num>macro top-1 %</th><th class=num>test images</th>{header}</tr>{''.join(rows)}</table>")
    if not differ and len(runs) > 1:
        parts.append("<p class=muted>The runs have the same settings.</p>")
    parts.append(_bars(runs))
    quality = [k for k in QUALITY_KEYS if any((r.quality or {}).get(k) is not None for r in runs)]
    if quality:
        head = "".join(f"<th class=num>{_e(k)}</th>" for k in quality)
        body = "".join(f"<tr><td>{_e(r.name)}</td>" + "".join(
            f"<td class=num>{_number((r.quality or {}).get(k), 4)}</td>" for k in quality) + "</tr>" for r in runs)
        parts.append("<h2>Synthetic data quality (datadream inspect, all classes)</h2>"
                     f"<table><tr><th>run</th>{head}</tr>{body}</table>")
    parts.append(_per_class(runs))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _bars(runs: list[RunSummary]) -> str:
    scored = [(r.name, _metric(r, "top1")) for r in runs if _metric(r, "top1") is not None]
    if not scored:
        return "<p class=muted>No run has test metrics yet (datadream evaluate RUN).</p>"
    width, bar, label = 560, 18, 180
    svg = [f'<svg width={width} height={len(scored) * (bar + 6) + 10} xmlns="http://www.w3.org/2000/svg" role=img>']
    for i, (name, top1) in enumerate(scored):
        y = 5 + i * (bar + 6)
        length = (width - label - 60) * top1 / 100
        svg.append(f'<text x=0 y={y + 13} font-size=12>{_e(name[:28])}</text>'
                   f'<rect x={label} y={y} width={length:.1f} height={bar} fill="#1f77b4"/>'
                   f'<text x={label + length + 4:.1f} y={y + 13} font-size=12>{top1:.1f}%</text>')
    svg.append("</svg>")
    return f"<h2>Test top-1</h2>{''.join(svg)}"


def _per_class(runs: list[RunSummary]) -> str:
    if len(runs) < 2 or not all(r.metrics for r in runs):
        return ""
    base = runs[0].metrics.get("per_class") or {}
    classes = [c for c in base if all(c in (r.metrics.get("per_class") or {}) for r in runs[1:])]
    rows = []
    for name in classes:
        values = [r.metrics["per_class"][name] for r in runs]
        if None in values:
            continue
        change = max(abs(v - values[0]) for v in values[1:])
        rows.append((change, name, values))
    if not rows:
        return ""
    rows.sort(key=lambda row: (-row[0], row[1]))
    head = "".join(f"<th class=num>{_e(r.name)}</th>" for r in runs)
    body = []
    for _, name, values in rows[:PER_CLASS_ROWS]:
        cells = [f"<td class=num>{values[0]:.1f}</td>"]
        cells += [f"<td class=num>{v:.1f} <span class=muted>({v - values[0]:+.1f})</span></td>" for v in values[1:]]
        body.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    more = f" (the {PER_CLASS_ROWS} that change most; all in compare.csv)" if len(rows) > PER_CLASS_ROWS else ""
    return (f"<h2>Per-class top-1 %, change against {_e(runs[0].name)}{more}</h2>"
            f"<table><tr><th>class</th>{head}</tr>{''.join(body)}</table>")
