"""The match browser in a real browser: Voila serves a notebook, chromium steps through matches."""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest

from browser import browser_page, require_chromium, voila
from workbench.data.store import SliceStore, StoreWriter

pytestmark = pytest.mark.slow

NOTEBOOK = """
from workbench.data import SliceStore
from workbench.memorization import match_table
from workbench.widgets import match_browser
synth, train = SliceStore.open({synth!r}), SliceStore.open({train!r})
match_browser(match_table(synth, train, k=1, progress=False), synth, train, channel="t1")
"""


def _store(path, n, seed, kind="real"):
    rng = np.random.default_rng(seed)
    rows = [{"subject": f"s{i // 5}", "z": i % 5, "split": "train"} if kind == "real" else {"split": "synthetic"}
            for i in range(n)]
    with StoreWriter(path, channels=["t1", "flair"], height=32, width=32, kind=kind) as w:
        w.append(rng.random((n, 2, 32, 32), dtype=np.float32), rows)
    return SliceStore.open(path)


def test_keyboard_steps_through_matches_and_the_channel_switches(tmp_path):
    require_chromium()
    train = _store(tmp_path / "train", 10, 0)
    synth = _store(tmp_path / "synth", 4, 1, kind="synthetic")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK.format(synth=str(synth.path), train=str(train.path)))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "browser.ipynb"
    nbformat.write(nb, path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with voila(path) as url, browser_page() as page:
        page.goto(url, timeout=120_000)
        info = page.locator("text=rank 1 of 4")
        info.wait_for(timeout=120_000)
        first_images = page.locator("img").evaluate_all("els => els.map(e => e.src)")
        page.screenshot(path=str(shots / "match-1.png"))
        handle = page.locator(".noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.locator("text=rank 2 of 4").wait_for(timeout=30_000)
        second_images = page.locator("img").evaluate_all("els => els.map(e => e.src)")
        assert first_images != second_images  # the panels changed with the match
        page.screenshot(path=str(shots / "match-2.png"))
        page.locator("select").first.select_option(label="flair")
        page.wait_for_function("(old) => JSON.stringify([...document.querySelectorAll('img')].map(e => e.src)) !== old",
                               arg=json.dumps(second_images), timeout=30_000)
        assert page.locator("text=rank 2 of 4").count() == 1  # same match, other channel
    assert (shots / "match-2.png").stat().st_size > 0


READER = """
from workbench.data import SliceStore
from workbench.widgets.reader_study import ReaderStudy
ReaderStudy({run!r}, "dr-browser", real=SliceStore.open({real!r}), synthetic=SliceStore.open({synth!r}),
            n_real=2, n_synthetic=2, seed=0)
"""


def test_a_short_reader_study_is_answered_saved_and_summarised(tmp_path):
    import pandas as pd

    require_chromium()
    real = _store(tmp_path / "real", 6, 2)
    synth = _store(tmp_path / "synth", 6, 3, kind="synthetic")
    run = tmp_path / "run"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(READER.format(run=str(run), real=str(real.path), synth=str(synth.path)))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "reader.ipynb"
    nbformat.write(nb, path)
    with voila(path) as url, browser_page() as page:
        page.goto(url, timeout=120_000)
        for i in range(1, 5):
            page.locator(f"text=Image {i} of 4").wait_for(timeout=120_000 if i == 1 else 30_000)
            if i == 2:
                page.get_by_role("button", name="4", exact=True).click()  # a confidence for one answer
            page.get_by_role("button", name="real", exact=True).click()
        page.locator("text=Reader study summary").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "reader-study.png"))
        assert page.locator("text=Done").count() == 1
    answers = pd.read_csv(run / "reader_study" / "dr-browser.csv")
    assert answers["item"].tolist() == [0, 1, 2, 3] and set(answers["answer"]) == {"real"}
    assert answers["confidence"].tolist()[1] == 4
    # always "real" on 2 real + 2 synthetic images: accuracy 0.5, specificity 1, sensitivity 0
    assert (answers["answer"] == answers["truth"]).mean() == 0.5
