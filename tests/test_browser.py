"""The match browser in a real browser: Voila serves a notebook, chromium steps through matches.

(The reader study in a browser: tests/test_reader_study_browser.py; both widgets in JupyterLab:
tests/test_jupyterlab.py.)
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from browser import browser_page, install_step_timer, require_chromium, timed_key, voila, write_notebook
from match_run import make_run
from workbench.widgets import MatchBrowser

pytestmark = pytest.mark.slow

NOTEBOOK = """
from workbench.widgets import MatchBrowser
MatchBrowser({run!r}, reviewer="dr-browser", channel="t1")
"""

STEPS = 8  # timed key presses


def _srcs(page):
    return page.locator(".workbench-match-browser img").evaluate_all("els => els.map(e => e.src)")


def test_match_browser_keys_channel_runner_ups_histogram_and_marks(tmp_path):
    """256x256x5 images: keys step through matches in r order, every panel changes, a mark reaches
    marks.csv and is shown after a reload; the step time is measured (figure in BENCHMARKS.md)."""
    require_chromium()
    made = make_run(tmp_path, size=256, n_synthetic=12, n_copies=4)
    run = made["run"]
    expected = MatchBrowser(run)  # the same data, headless: the order and the bars to expect
    order = expected.shown.tolist()
    r = expected.best["r"]
    path = write_notebook(tmp_path / "browser.ipynb", NOTEBOOK.format(run=str(run)))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with voila(path) as url, browser_page(height=1300) as page:
        page.goto(url, timeout=120_000)
        page.locator("text=of 12 shown").wait_for(timeout=120_000)
        assert f"synthetic #{order[0]}" in page.inner_text(".workbench-match-browser")
        page.screenshot(path=str(shots / "match-browser.png"), full_page=True)
        page.hover(".workbench-match-browser img >> nth=0")  # keys go to the panels under the pointer
        install_step_timer(page, ".workbench-match-browser")
        timings = []
        for step in range(1, STEPS + 1):
            before = _srcs(page)
            timings.append(timed_key(page, "ArrowRight"))
            text = page.inner_text(".workbench-match-browser")
            assert f"image {step + 1} of 12 shown" in text
            assert f"synthetic #{order[step]}" in text and f"pixel r = {r[order[step]]:.4f}" in text
            after = _srcs(page)
            assert after[0] != before[0] and after[1] != before[1] and after[2] != before[2]  # synthetic, match, scatter
        timed_key(page, "ArrowLeft")
        assert f"synthetic #{order[STEPS - 1]}" in page.inner_text(".workbench-match-browser")
        (tmp_path / "step_timings.json").write_text(json.dumps({"size": "256x256x5", "ms": timings}))
        print(f"match browser step, key to last panel drawn (ms): median {np.median(timings):.0f}, "
              f"max {np.max(timings):.0f} over {len(timings)} steps")

        # channel, then the segmentation overlay: same image, other pixels
        before = _srcs(page)
        page.locator(".widget-dropdown", has_text="channel").locator("select").select_option(label="flair")
        page.wait_for_function("(old) => JSON.stringify([...document.querySelectorAll('.workbench-match-browser img')]"
                               ".map(e => e.src)) !== old", arg=json.dumps(before), timeout=30_000)
        assert f"synthetic #{order[STEPS - 1]}" in page.inner_text(".workbench-match-browser")
        before = _srcs(page)
        page.get_by_text("seg overlay").click()
        page.wait_for_function("(old) => JSON.stringify([...document.querySelectorAll('.workbench-match-browser img')]"
                               ".map(e => e.src)) !== old", arg=json.dumps(before), timeout=30_000)

        # the runner-up from another subject, one click away
        page.locator(".widget-toggle-buttons button").nth(1).click()
        page.locator("text=match 2:").wait_for(timeout=30_000)

        # a histogram bar: only its images are shown
        top = int(np.flatnonzero(expected.counts)[-1])
        page.locator(".workbench-histogram-bar").nth(top).click()
        page.locator(f"text=of {int(expected.counts[top])} shown").wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "match-browser-bin.png"), full_page=True)
        shown = page.inner_text(".workbench-match-browser")
        in_bin = [i for i in order if expected.edges[top] <= r[i]]
        assert any(f"synthetic #{i}" in shown for i in in_bin)

        # a mark with a comment goes to marks.csv at once and is shown after a reload
        current = int(re.search(r"synthetic #(\d+) · match", shown).group(1))
        page.locator("input[placeholder^='comment']").fill("same blob")
        page.get_by_role("button", name="copy", exact=True).click()
        page.locator("text=marked copy by dr-browser").wait_for(timeout=30_000)
        marks = pd.read_csv(run / "marks.csv")
        assert marks[["synthetic", "verdict", "comment"]].values.tolist() == [[current, "copy", "same blob"]]
        page.reload()
        page.locator("text=of 12 shown").wait_for(timeout=120_000)
        if current != order[0]:
            page.locator("input[type=number]").fill(str(current))
            page.get_by_role("button", name="go", exact=True).click()
        page.locator("text=marked copy by dr-browser").wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "match-browser-marked.png"), full_page=True)
    assert len(timings) == STEPS and all(t > 0 for t in timings)


def test_match_browser_without_results_says_what_to_run(tmp_path):
    require_chromium()
    (tmp_path / "run").mkdir()
    path = write_notebook(tmp_path / "browser.ipynb", NOTEBOOK.format(run=str(tmp_path / "run")))
    with voila(path) as url, browser_page() as page:
        page.goto(url, timeout=120_000)
        page.locator("text=no search results").wait_for(timeout=120_000)
        assert "04_memorization" in page.inner_text("body")
        assert "Traceback" not in page.inner_text("body")
