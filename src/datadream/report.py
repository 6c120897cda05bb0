"""RUN/report/index.html: a static page to look at a run — the metrics with the classes it
confuses, its worst mistakes and the confusion matrix (similar classes side by side, and the groups
of classes that take each other's images), every training curve, and per class the real shots
beside synthetic samples and, for an adapted class, the same seeds sampled without and with its
adapter (the un-adapted previews synthesize keeps in the store). No server, no JavaScript; every
image is a file in RUN/report/ (thumbnails in thumbs/), so the report folder stands alone (zip it,
mail it, serve it)."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from datadream import atomic
from datadream.components.measures import confusion
from datadream.data.images import load_rgb
from datadream.errors import UserError
from datadream.layout import UNIT_MARKER, is_safe_component

REAL_PER_CLASS = 6
SYNTHETIC_PER_CLASS = 8
THUMB = 112

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:left}
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
.cls{margin:1rem 0;padding:.5rem 0;border-bottom:1px solid #eee}.cls h3{margin:.2rem 0;font-size:1rem}
.strip{display:flex;flex-wrap:wrap;gap:4px;align-items:center}.strip img{width:%dpx;height:%dpx;object-fit:cover}
.tag{font-size:.75rem;color:#555;width:5.5rem}.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
.note{background:#fff6d6;padding:.5rem .8rem;border-radius:4px}
.mistake{margin:0;width:%dpx;font-size:.7rem}.mistake img{display:block}
.heatmap-box{overflow-x:auto}.heatmap{image-rendering:pixelated;max-width:100%%;height:auto;border:1px solid #ccc}
.legend{margin:.3rem 0 1rem;font-size:.75rem;color:#555}
.grid{margin:.4rem 0}.grid table td,.grid table th{padding:2px;border:0;vertical-align:middle}
.grid th{font-size:.75rem;font-weight:normal;color:#555;width:5.5rem;padding:0}.grid img{width:%dpx;height:%dpx;object-fit:cover;display:block}
.grid.small img{width:72px;height:72px}
.grid figcaption{font-size:.75rem;color:#555}
""" % (THUMB, THUMB, THUMB, THUMB, THUMB)


def write_report(root: Path) -> Path:
    from datadream.runs import open_run

    run = open_run(root)
    layout = run.layout
    out = layout.report
    thumbs = atomic.own_folder(atomic.own_folder(out.parent) / "thumbs")
    for folder in (out.parent, thumbs):  # what a killed report left
        atomic.remove_dead_temporaries(folder)
    metrics = _read_json(layout.metrics)
    trained = _read_json(layout.classifier_marker)
    index = _read_index(layout.synthetic_index)
    predictions = _read_predictions(layout.predictions, len(run.manifest.classes)) if metrics else []
    previews = _read_previews(run)
    from datadream.components.testmodels.tiny import tiny_model_note

    notes = dict.fromkeys(note for m in (run.config.generator.model if index else None, run.config.classifier.model)
                          if (note := tiny_model_note(m)))
    parts = [
        f"<h1>datadream run <code>{_e(layout.root.name)}</code></h1>",
        f"<p class=muted>{_e(str(layout.root))} · config {run.config.digest()} · generator "
        f"<code>{_e(run.config.generator.model)}</code> · classifier <code>{_e(run.config.classifier.model)}</code></p>",
        *([f"<p class=note>Made with tiny models built by datadream: {_e('; '.join(notes))}.</p>"]
          if notes else []),
        _metrics_section(metrics, trained),
        _mistakes_section(metrics, predictions, thumbs),
        _confusion_section(run, predictions, out.parent),
        _curves_section(layout, trained),
        _quality_section(_read_json(layout.inspect)),
        _adaptation_section(run, previews, index, thumbs),
        _per_class_section(run, metrics, _read_json(layout.inspect)),
        _settings_section(run),
    ]
    pages = _class_pages(run, metrics, index, previews, thumbs)
    if len(pages) == 1:  # a small run: the classes on the page itself
        parts.append(pages[0])
    else:
        links = " · ".join(f'<a href="classes-{n + 1}.html">{n * CLASSES_PER_PAGE + 1}–'
                           f"{min((n + 1) * CLASSES_PER_PAGE, len(run.manifest.classes))}</a>" for n in range(len(pages)))
        parts.append(f"<h2>Classes: real shots and synthetic samples</h2><p>{len(run.manifest.classes)} classes,"
                     f" {CLASSES_PER_PAGE} a page: {links}</p>")
        for n, body in enumerate(pages):
            atomic.write_text(out.parent / f"classes-{n + 1}.html",
                              _page(f"{layout.root.name} · classes page {n + 1}",
                                    f'<p><a href="index.html">← the run</a></p>{body}'))
    atomic.write_text(out, _page(layout.root.name, "".join(parts)))
    return out


# A 1,000-class run gets 20 class pages of 50 instead of one page of 14,000 images.
CLASSES_PER_PAGE = 50


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>datadream · {_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def _class_pages(run, metrics: dict | None, index: dict[int, list[dict]], previews: dict, thumbs: Path) -> list[str]:
    per_class = (metrics or {}).get("per_class", {})
    classes = run.manifest.classes
    pages = []
    for start in range(0, len(classes), CLASSES_PER_PAGE):
        parts = ["<h2>Classes: real shots and synthetic samples</h2>"]
        for cls in classes[start:start + CLASSES_PER_PAGE]:
            real = [_thumbnail(run.manifest.image_path(shot), thumbs / f"{cls.slug}-{i}.jpg")
                    for i, shot in enumerate(cls.images[:REAL_PER_CLASS])]
            synthetic = [_thumbnail(run.layout.synthetic / row["file"], thumbs / f"{cls.slug}-synthetic-{i}.jpg")
                         for i, row in enumerate(index.get(cls.label, [])[:SYNTHETIC_PER_CLASS])]
            accuracy = per_class.get(cls.name)
            acc_text = "" if not metrics else (f" · test top-1 {accuracy:.1f}%" if accuracy is not None
                                               else " · no test images")
            grid = ""
            if cls.label in previews:
                grid = _preview_grid(run, cls, previews[cls.label], index.get(cls.label, []), thumbs)
            parts.append(
                f"<div class=cls id=c{cls.label}><h3>{cls.label}. {_e(cls.name)}<span class=muted>{acc_text}"
                f" · “{_e(cls.prompt)}”</span></h3>{_strip('real', real)}{_strip('synthetic', synthetic)}{grid}</div>")
        pages.append("".join(parts))
    return pages


# The index shows what adaptation changed for this many classes; every class page shows its own.
ADAPTATION_CLASSES = 8


def _read_previews(run) -> dict[int, tuple[Path, dict] | None]:
    """Each adapted class's un-adapted preview in the run's store, by label (None for a class that
    has none); empty for a run without adapters."""
    from datadream.artifacts import preview_records
    from datadream.units import store_of, synthetic_specs

    specs = [spec for spec in synthetic_specs(run) if spec.adapter is not None]
    if not specs:
        return {}
    store = store_of(run)
    previews: dict[int, tuple[Path, dict] | None] = {}
    for spec in specs:
        folder = store.preview(spec.fingerprint)
        marker = preview_records(folder)
        previews[spec.cls.label] = (folder, marker) if marker is not None else None
    return previews


def _preview_grid(run, cls, preview: tuple[Path, dict] | None, rows: list[dict], thumbs: Path,
                  small: bool = False) -> str:
    """Two rows over the same seeds and prompt: the generator without the class's adapter, and
    with it (the class's first synthetic images)."""
    if preview is None:
        return ("<p class=muted>No un-adapted preview for this class: its first images were made before previews"
                " existed or with <code>synthesize.preview_images: 0</code>, or the store is not at hand.</p>")
    folder, marker = preview
    by_seed = {row.get("seed"): (i, row) for i, row in enumerate(rows)}
    unadapted, adapted = [], []
    for i, record in enumerate(marker["images"]):
        unadapted.append(_thumbnail(folder / record["file"], thumbs / f"{cls.slug}-unadapted-{i}.jpg"))
        found = by_seed.get(marker["seeds"][i])
        adapted.append(_thumbnail(run.layout.synthetic / found[1]["file"], thumbs / f"{cls.slug}-synthetic-{found[0]}.jpg")
                       if found else None)

    def cells(sources: list[str | None], alt: str) -> str:
        # The seeds are 19-digit numbers: a tooltip, not a row that dwarfs the thumbnails.
        return "".join(f'<td><img src="{_e(src)}" loading=lazy alt="{alt}" title="seed {seed}"></td>' if src
                       else "<td class=muted>–</td>" for src, seed in zip(sources, marker["seeds"]))

    return (f"<figure class=\"grid{' small' if small else ''}\"><table><tr><th>un-adapted</th>{cells(unadapted, 'un-adapted')}"
            f"</tr><tr><th>adapted</th>{cells(adapted, 'adapted')}</tr></table>"
            f"<figcaption>“{_e(marker['prompt'])}”, images 1–{len(unadapted)} of the class: the same seeds (hover an"
            " image) and sampler, the generator without the class's adapter, then with it.</figcaption></figure>")


def _adaptation_section(run, previews: dict, index: dict[int, list[dict]], thumbs: Path) -> str:
    """The first classes' un-adapted / adapted grids, each linked to its class on the class pages."""
    if not previews:
        return ""
    parts = ["<h2>What adaptation changed</h2><p class=muted>The same prompt and seeds sampled without the"
             " class's adapter and with it, for the first classes; every class has its grid under its samples.</p>"]
    if not any(previews.values()):
        parts.append("<p class=muted>No un-adapted previews in the store for this run: its images were made before"
                     " previews existed or with <code>synthesize.preview_images: 0</code>.</p>")
        return "".join(parts)
    paged = len(run.manifest.classes) > CLASSES_PER_PAGE
    for position, cls in enumerate(run.manifest.classes):
        if cls.label not in previews:
            continue
        page = f"classes-{position // CLASSES_PER_PAGE + 1}.html" if paged else ""
        parts.append(f'<div class=cls><h3><a href="{page}#c{cls.label}">{cls.label}. {_e(cls.name)}</a></h3>'
                     f"{_preview_grid(run, cls, previews[cls.label], index.get(cls.label, []), thumbs, small=True)}</div>")
        if len(parts) > ADAPTATION_CLASSES:
            break
    return "".join(parts)


QUALITY_COLUMNS = ("fd", "precision", "recall", "coverage", "near_copy_share", "clip_score_synth")


def _quality_section(inspected: dict | None) -> str:
    """The synthetic set against the shots (and held-out images), mean over classes, with what
    each figure means (datadream inspect)."""
    if not inspected:
        return ""
    rows = []
    for key, meaning in inspected.get("meaning", {}).items():
        names = [k.strip() for k in key.split("/")]
        values = []
        for name in names:
            shots = inspected["against_shots"]["overall"].get(name)
            heldout = (inspected.get("against_heldout") or {}).get("overall", {}).get(name)
            values.append(f"{_e(name)}: {shots}" + (f" (held-out: {heldout})" if heldout is not None else ""))
        rows.append(f"<tr><td>{'<br>'.join(values)}</td><td class=muted>{_e(meaning)}</td></tr>")
    return (f"<h2>Synthetic data quality</h2><p class=muted>Synthetic images against the real shots, mean over"
            f" classes, in the feature space of the {_e(inspected.get('feature_space', ''))}. {_e(inspected.get('comparable', ''))}"
            f"</p><table>{''.join(rows)}</table>")


def _per_class_section(run, metrics: dict | None, inspected: dict | None = None) -> str:
    """Every class's test top-1 and precision, worst first, with its data-quality figures beside
    it: where to look first, and whether the synthetic images explain it."""
    if not metrics:
        return ""
    precision = (metrics.get("confusion") or {}).get("per_class_precision", {})
    counts = metrics.get("per_class_count", {})
    quality = (inspected or {}).get("against_shots", {}).get("classes", {})
    columns = QUALITY_COLUMNS if quality else ()
    rows = sorted(((v, c.label, c.name) for c in run.manifest.classes
                   if (v := metrics["per_class"].get(c.name)) is not None))
    body = "".join(
        f"<tr><td>{label}</td><td>{_e(name)}</td><td class=num>{value:.1f}%</td>"
        f"<td class=num>{'–' if precision.get(name) is None else f'{precision[name]:.1f}%'}</td>"
        f"<td class=num>{counts.get(name, '')}</td>"
        + "".join(f"<td class=num>{_e(quality.get(name, {}).get(k, '–'))}</td>" for k in columns)
        + "</tr>" for value, label, name in rows)
    head = "".join(f"<th class=num>{_e(k)}</th>" for k in columns)
    return ("<h2>Per class, worst first</h2><details><summary>" f"{len(rows)} classes with test images</summary>"
            "<table><tr><th>label</th><th>class</th><th class=num>top-1 (recall)</th><th class=num>precision</th>"
            f"<th class=num>test images</th>{head}</tr>{body}</table></details>")


def _settings_section(run) -> str:
    return (f"<h2>Settings</h2><details><summary>config.yaml (config {run.config.digest()})</summary>"
            f"<pre>{_e(run.config.to_yaml())}</pre></details>")


def _thumbnail(source: Path, thumb: Path) -> str:
    """A JPEG thumbnail of `source` inside the report (made once), as the page links it."""
    if not thumb.is_file():
        image = load_rgb(source)
        image.thumbnail((THUMB * 2, THUMB * 2))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        atomic.write_bytes(thumb, buffer.getvalue())  # a killed report leaves no half thumbnail
    return f"thumbs/{thumb.name}"


def _mistakes_section(metrics: dict | None, predictions: list[dict], thumbs: Path, worst: int = 12) -> str:
    """The pairs of classes the classifier confuses most, and its most confident mistakes with
    their images (from RUN/classifier/predictions.csv)."""
    if not metrics or not metrics.get("confusion"):
        return ""
    pairs = metrics["confusion"]["top_confused_pairs"]
    rows = "".join(f"<tr><td>{_e(p['true'])}</td><td>{_e(p['predicted'])}</td><td class=num>{p['count']}</td>"
                   f"<td class=num>{p['share']:.1f}%</td></tr>" for p in pairs)
    parts = ["<h2>Where the classifier errs</h2>",
             f"<p>{metrics['confusion']['mistakes']} mistake(s) on {metrics['n']} test images.</p>"]
    if rows:
        parts.append("<table><tr><th>true class</th><th>taken for</th><th class=num>images</th>"
                     f"<th class=num>of the class</th></tr>{rows}</table>")
    wrong = sorted((r for r in predictions if r["correct"] == "0"), key=lambda r: -r["confidence"])
    cards = []
    for i, row in enumerate(wrong[:worst]):
        source = Path(row["file"])
        if not source.is_file():
            continue
        thumb = _thumbnail(source, thumbs / f"mistake-{i}.jpg")
        cards.append(f'<figure class=mistake><img src="{_e(thumb)}" alt="mistake"><figcaption>'
                     f"{_e(row['true_class'])} → <b>{_e(row['predicted_class'])}</b> ({100 * row['confidence']:.0f}%)"
                     "</figcaption></figure>")
    if cards:
        parts.append(f"<h3>Most confident mistakes</h3><div class=strip>{''.join(cards)}</div>")
    return "".join(parts)


def _read_predictions(path: Path, classes: int) -> list[dict]:
    """RUN/classifier/predictions.csv, every row checked: a damaged file is one line naming it."""
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            try:
                true, predicted = int(row["true_label"]), int(row["predicted_label"])
                row["confidence"] = float(row["top5_probabilities"].split(";")[0])
                if not (0 <= true < classes and 0 <= predicted < classes and row["correct"] in ("0", "1")):
                    raise ValueError(number)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{path} line {number} is damaged; delete the file and run `datadream evaluate RUN`"
                                " to write it again") from None
            row["true_label"], row["predicted_label"] = true, predicted
            rows.append(row)
    return rows


LABELLED_CLASSES = 40  # up to this many, the matrix is drawn with class names on its axes
GROUPS_SHOWN = 15


def _confusion_section(run, predictions: list[dict], folder: Path) -> str:
    """The confusion matrix with classes that take each other's images side by side, and those
    groups of classes as a table: names on the axes for a few classes, an image (one cell a few
    pixels) and the table for many."""
    classes = run.manifest.classes
    if len(classes) < 2 or not predictions:
        return ""
    counts = confusion.confusion_counts(np.array([r["true_label"] for r in predictions]),
                                        np.array([r["predicted_label"] for r in predictions]), len(classes))
    seriation = confusion.seriate(counts)
    order = seriation.order
    shares = confusion.row_shares(counts)[np.ix_(order, order)]
    position = {label: i for i, label in enumerate(order)}
    groups = seriation.groups[:GROUPS_SHOWN]
    spans = [(position[g[0]], position[g[-1]] + 1) for g in groups]
    names = [classes[label].name for label in order]
    marks = " Blue bars along the edges: the groups below."
    if len(classes) <= LABELLED_CLASSES:
        marks = " Blue boxes: the groups below."
        matrix = _labelled_heatmap(counts[np.ix_(order, order)], shares, names, spans)
    else:
        cell = max(1, 1000 // len(classes))
        atomic.write_bytes(folder / "confusion.png", confusion.heatmap_png(shares, cell, spans))
        side = confusion.MARGIN + cell * len(classes)
        matrix = (f'<img src="confusion.png" width={side} height={side} class=heatmap alt="confusion matrix of'
                  f' {len(classes)} classes, rows true class, columns predicted class, in the same order">')
    parts = ["<h2>Confusion matrix</h2>",
             "<p class=muted>Rows: true class; columns: predicted class, in the same order, chosen so that classes"
             " that take each other's test images sit next to each other (average-linkage clustering of the"
             f" mutual confusion). The diagonal is what is right.{marks if spans else ''}</p>",
             f"<div class=heatmap-box>{matrix}</div>", _legend()]
    if groups:
        rows = []
        for rank, (group, (start, stop)) in enumerate(zip(groups, spans), 1):
            within, mistakes, images = confusion.mistakes_within(counts, group)
            shown = ", ".join(_e(classes[label].name) for label in group[:12])
            more = f" <span class=muted>and {len(group) - 12} more</span>" if len(group) > 12 else ""
            rows.append(f"<tr><td class=num>{rank}</td><td>{shown}{more}</td><td class=num>{len(group)}</td>"
                        f"<td class=num>{within}</td><td class=num>{100 * within / max(mistakes, 1):.0f}%</td>"
                        f"<td class=num>{100 * within / max(images, 1):.1f}%</td>"
                        f"<td class=num>{start + 1}–{stop}</td></tr>")
        parts.append(
            "<h3>Groups of classes that take each other's images</h3><p class=muted>Most mistakes within first"
            f"{f' (the first {GROUPS_SHOWN} of {len(seriation.groups)})' if len(seriation.groups) > GROUPS_SHOWN else ''};"
            f" a group holds while its classes take on average at least {100 * confusion.GROUP_LINK:.0f}% of each"
            " other's test images.</p><table><tr><th class=num>#</th><th>classes</th><th class=num>classes</th>"
            "<th class=num>images taken for another of the group</th><th class=num>of the group's mistakes</th>"
            "<th class=num>of its test images</th><th class=num>rows in the matrix</th></tr>"
            f"{''.join(rows)}</table>")
    return "".join(parts)


def _labelled_heatmap(counts: np.ndarray, shares: np.ndarray, names: list[str], spans: list[tuple[int, int]]) -> str:
    """The ordered matrix as inline SVG with the class names on both axes and a box around each
    group; every cell says its count and share when pointed at, and shows its percentage when
    there is room."""
    n = len(names)
    cell = 26 if n <= 12 else 16
    labels = [name if len(name) <= 24 else name[:23] + "…" for name in names]
    longest = 7 * max(len(label) for label in labels)  # pixels, roughly, at 11 px
    left = top = 8 + longest
    width, height = left + n * cell + longest // 2 + 8, top + n * cell + 4  # labels slant right by cos 60°
    fills = confusion.hex_colours(shares)
    parts = [f'<svg width={width} height={height} xmlns="http://www.w3.org/2000/svg" role=img font-size=11>'
             f"<title>confusion matrix: rows true class, columns predicted class</title>"]
    for row in range(n):
        y = top + row * cell
        parts.append(f'<text x={left - 4} y={y + cell * 0.7:.1f} text-anchor=end>{_e(labels[row])}</text>')
        x = left + row * cell + cell * 0.65
        parts.append(f'<text transform="translate({x:.1f},{top - 4}) rotate(-60)">{_e(labels[row])}</text>')
        for column in range(n):
            share = float(shares[row, column])
            x = left + column * cell
            parts.append(f'<rect x={x} y={y} width={cell} height={cell} fill="{fills[row * n + column]}"'
                         f' stroke="#eee"><title>{_e(names[row])} → {_e(names[column])}: {counts[row, column]}'
                         f" image(s), {100 * share:.1f}% of the class</title></rect>")
            if cell >= 26 and counts[row, column]:
                ink = "#fff" if share > 0.3 else "#222"
                parts.append(f'<text x={x + cell / 2} y={y + cell * 0.65:.1f} text-anchor=middle font-size=9'
                             f' fill="{ink}" pointer-events=none>{100 * share:.0f}</text>')
    outline = "#%02x%02x%02x" % confusion.MARKS[0]
    for start, stop in spans:
        parts.append(f'<rect x={left + start * cell} y={top + start * cell} width={(stop - start) * cell}'
                     f' height={(stop - start) * cell} fill=none stroke="{outline}" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(width: int = 272) -> str:
    """The colour ramp with a few shares marked where they fall on its square-root scale."""
    offsets = np.linspace(0, 1, 11)
    stops = "".join(f'<stop offset="{p:.2f}" stop-color="{colour}"/>'
                    for p, colour in zip(offsets, confusion.hex_colours(np.maximum(offsets ** 2, 1e-6))))
    ticks = []
    for share, label in ((0.01, "1%"), (0.05, "5%"), (0.25, "25%"), (1.0, "100%")):
        x = 34 + (width - 52) * share ** 0.5
        ticks.append(f'<line x1={x:.1f} x2={x:.1f} y1=14 y2=20 stroke="#444"/>'
                     f'<text x={x:.1f} y=31 text-anchor=middle>{label}</text>')
    return (f'<figure class=legend><svg width={width} height=34 xmlns="http://www.w3.org/2000/svg" font-size=10>'
            '<defs><linearGradient id=ramp>' + stops + '</linearGradient></defs>'
            '<rect x=2 y=2 width=22 height=12 fill="#fff" stroke="#999"/><text x=13 y=31 text-anchor=middle>0</text>'
            f'<rect x=34 y=2 width={width - 52} height=12 fill="url(#ramp)"/>{"".join(ticks)}</svg><figcaption>'
            "Colour: share of the true class's test images predicted as the column's class (square-root scale; white:"
            " none).</figcaption></figure>")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_index(path: Path) -> dict[int, list[dict]]:
    """Rows of the synthetic index by label; only rows whose file is `<class folder>/<image>`
    inside the synthetic folder are linked."""
    rows: dict[int, list[dict]] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                row = json.loads(line)
                parts = row["file"].split("/")
                if len(parts) != 2 or not all(is_safe_component(part) for part in parts):
                    raise ValueError(row["file"])
                rows.setdefault(int(row["label"]), []).append(row)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{path} line {number} is damaged; run `datadream synthesize RUN` to rewrite the"
                                " index") from None
    return rows


def _strip(tag: str, sources: list[str]) -> str:
    if not sources:
        return f"<div class=strip><span class=tag>{tag}</span><span class=muted>none</span></div>"
    images = "".join(f'<img src="{_e(src)}" loading=lazy alt="{tag}">' for src in sources)
    return f"<div class=strip><span class=tag>{tag}</span>{images}</div>"


def _metrics_section(metrics: dict | None, trained: dict | None) -> str:
    if not metrics:
        return "<h2>Metrics</h2><p class=muted>Not evaluated yet (run <code>datadream evaluate RUN</code>).</p>"
    rows = [("split", f"{metrics['split']} ({metrics['n']} images)"), ("top-1", f"{metrics['top1']:.2f}%"),
            *([("top-5", f"{metrics['top5']:.2f}%")] if metrics.get("top5") is not None else []),
            *([("macro top-1", f"{metrics['macro_top1']:.2f}% (every class weighs the same)")]
              if metrics.get("macro_top1") is not None else []),
            ("trained on", metrics.get("train_on", "")),
            ("model selection", f"{metrics.get('selected_by')} (epoch {metrics.get('selected_epoch')})")]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    per_class = sorted(((v, k) for k, v in metrics["per_class"].items() if v is not None))
    worst = ", ".join(f"{_e(name)} {value:.1f}%" for value, name in per_class[:5])
    return f"<h2>Metrics</h2><table>{table}</table><p class=muted>Lowest per-class top-1: {worst or 'n/a'}</p>"


def _curves_section(layout, trained: dict | None) -> str:
    charts = []
    history = (trained or {}).get("history") or []
    if history:
        charts.append(svg_chart("classifier loss per epoch", [("train", [r["loss"] for r in history])]))
        series = [("train", [r["train_top1"] for r in history])]
        if "val_top1" in history[0]:
            series.append(("val", [r["val_top1"] for r in history]))
        charts.append(svg_chart("classifier top-1 % per epoch", series))
    adapter_curves = []
    for marker in sorted(layout.adapters.glob(f"*/{UNIT_MARKER}")):
        curve = json.loads(marker.read_text(encoding="utf-8")).get("loss_per_epoch")
        if curve:
            adapter_curves.append((marker.parent.name, curve))
    if not charts and not adapter_curves:
        return ""
    section = f"<h2>Training curves</h2><div class=charts>{''.join(charts)}</div>"
    if adapter_curves:  # every adapter, one small chart each: a diverging class stands out
        small = "".join(svg_chart(name, [("loss", curve)], width=170, height=90) for name, curve in adapter_curves)
        section += f"<h3>Generator LoRA loss per epoch, every adapter</h3><div class=charts>{small}</div>"
    return section


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939")


def svg_chart(title: str, series: list[tuple[str, list[float]]], width: int = 360, height: int = 200) -> str:
    """A small line chart as inline SVG (no plotting library needed at run time)."""
    values = [v for _, ys in series for v in ys]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    left, right, top, bottom = 44, 8, 24, 22
    longest = max(len(ys) for _, ys in series)

    def point(i: int, v: float, n: int) -> str:
        x = left + (width - left - right) * (i / max(1, n - 1))
        y = top + (height - top - bottom) * (1 - (v - low) / span)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for k, (name, ys) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        lines.append(f'<polyline fill=none stroke="{colour}" stroke-width=1.5 '
                     f'points="{" ".join(point(i, v, len(ys)) for i, v in enumerate(ys))}"/>')
        legend.append(f'<span style="color:{colour}">■ {_e(name)}</span>')
    axes = (f'<text x=4 y={top + 4} font-size=10>{high:.3g}</text>'
            f'<text x=4 y={height - bottom} font-size=10>{low:.3g}</text>'
            f'<text x={left} y={height - 6} font-size=10>epoch 1</text>'
            f'<text x={width - right} y={height - 6} font-size=10 text-anchor=end>{longest}</text>'
            f'<rect x={left} y={top} width={width - left - right} height={height - top - bottom} fill=none stroke="#ccc"/>')
    return (f'<figure style="margin:0;width:{width}px"><svg width={width} height={height} '
            f'xmlns="http://www.w3.org/2000/svg" role=img><text x={left} y=14 font-size=12 font-weight=bold>'
            f'{_e(title)}</text>{axes}{"".join(lines)}</svg>'
            f'<figcaption style="font-size:.75rem">{" ".join(legend)}</figcaption></figure>')
