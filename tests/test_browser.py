"""The report and the compare page in a real browser (headless Chromium, Debian package `chromium`):
every image loads, nothing is logged as an error, every section is there. Skipped without Chromium.

A copy of each page, beside it (so relative links resolve the same), gets a script that loads
every lazy image, then logs one line the test reads from Chromium's log: how many images there
are, which did not load, which sections are present, the images in each row of every un-adapted /
adapted grid, the links, and any error the page raised.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import tiny_config, write_config

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
               None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs headless Chromium (apt-get install chromium)")

CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
window.addEventListener("load", async () => {
  const images = [...document.images];
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })));
  const broken = images.filter(img => !img.naturalWidth).map(img => img.getAttribute("src"));
  const sections = [...document.querySelectorAll("h2")].map(h => h.textContent);
  const grids = [...document.querySelectorAll("figure.grid")].map(
    g => [...g.querySelectorAll("tr")].map(tr => tr.querySelectorAll("img").length));
  const links = [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href"));
  console.log("DATADREAM-CHECK " + JSON.stringify({images: images.length, broken, sections, grids, links,
                                                   errors: window.__errors}));
});
</script>"""


def browser_check(page: Path, screenshot: Path | None = None) -> dict:
    probe = page.with_name(f"_check-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                 "--virtual-time-budget=10000", "--window-size=1280,2400"]
        result = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            subprocess.run([*flags, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'DATADREAM-CHECK (\{.*?\})", source', result.stderr)
    assert found, f"the check did not report:\n{result.stderr[-3000:]}"
    return json.loads(found.group(1).replace('\\"', '"'))


def test_report_and_compare_page_in_a_browser(tmp_path, tiny_models, toy_data, monkeypatch):
    from datadream import report as report_module
    from datadream.compare import compare
    from datadream.config import load_config
    from datadream.pipeline import run_all

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"val": str(toy_data / "val"), "test": str(toy_data / "test")}))
    run = run_all(load_config(config), tmp_path / "run").run
    report = browser_check(run / "report" / "index.html", screenshot=tmp_path / "report.png")
    assert report["broken"] == [] and report["errors"] == [], report
    assert report["images"] >= 4 * (3 + 3)  # shots and synthetic samples of 4 classes, and the mistakes
    assert {"Metrics", "Where the classifier errs", "Confusion matrix", "Training curves", "What adaptation changed",
            "Per class, worst first", "Settings", "Classes: real shots and synthetic samples"} <= set(report["sections"])
    # Un-adapted / adapted over 3 seeds (3 images a class): 4 classes in the summary, 4 under their samples.
    assert report["grids"] == [[3, 3]] * 8
    assert (tmp_path / "report.png").stat().st_size > 10_000

    # Classes on pages of their own: the summary links to each class on its page, which has its grid.
    monkeypatch.setattr(report_module, "CLASSES_PER_PAGE", 2)
    summary = browser_check(report_module.write_report(run))
    assert summary["broken"] == [] and summary["grids"] == [[3, 3]] * 4
    assert {"classes-1.html#c0", "classes-1.html#c1", "classes-2.html#c2", "classes-2.html#c3"} <= set(summary["links"])
    second = browser_check(run / "report" / "classes-2.html")
    assert second["broken"] == [] and second["errors"] == [] and second["grids"] == [[3, 3]] * 2

    page = compare([run, run], tmp_path / "compare")
    compared = browser_check(page)
    assert compared["broken"] == [] and compared["errors"] == [] and {"Runs", "Test top-1"} <= set(compared["sections"])
