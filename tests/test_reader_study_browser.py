"""The reader study in a real browser, answered with the keyboard: Voila serves a notebook, chromium types.

ipyevents hears keys only while the pointer is over the image and its buttons (it focuses that
box on mouseenter), so each test hovers the image first, as a reader would.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from browser import browser_page, require_chromium, voila, write_notebook
from workbench.data.store import SliceStore, StoreWriter

pytestmark = pytest.mark.slow


def _store(path, n, seed, kind="real", splits=None):
    rng = np.random.default_rng(seed)
    rows = [{"subject": f"s{i // 5}", "z": i % 5, "split": (splits or ["test"] * n)[i]} if kind == "real"
            else {"split": "synthetic"} for i in range(n)]
    with StoreWriter(path, channels=["t1", "flair"], height=32, width=32, kind=kind) as w:
        w.append(rng.random((n, 2, 32, 32), dtype=np.float32), rows)
    return SliceStore.open(path)


def _press(page, key, next_text):
    page.locator(".widget-image").first.hover()  # keys reach the study only with the pointer over it
    page.keyboard.press(key)
    page.locator(f"text={next_text}").wait_for(timeout=30_000)


READER = """
from workbench.data import SliceStore
from workbench.widgets import ReaderStudy
ReaderStudy({run!r}, {reader!r}, real=SliceStore.open({real!r}), synthetic=SliceStore.open({synth!r}),
            n_real=2, n_synthetic=2, seed=0, channel="flair")
"""


def _study(tmp_path, reader):
    """A 2 real + 2 synthetic study for ``reader`` in a notebook: (run folder, notebook path)."""
    real = _store(tmp_path / "real", 6, 2)
    synth = _store(tmp_path / "synth", 6, 3, kind="synthetic")
    run = tmp_path / "run"
    source = READER.format(run=str(run), reader=reader, real=str(real.path), synth=str(synth.path))
    return run, write_notebook(tmp_path / "reader.ipynb", source)


def test_a_reader_study_is_answered_with_the_keyboard(tmp_path):
    require_chromium()
    run, path = _study(tmp_path, "dr-keys")
    with voila(path) as url, browser_page() as page:
        page.goto(url, timeout=120_000)
        page.locator("text=Image 1 of 4").wait_for(timeout=120_000)
        assert page.locator("text=keys, with the pointer over the image").count() == 1
        page.locator(".widget-image").first.hover()
        page.keyboard.press("3")                               # a confidence for the first answer ...
        page.locator(".widget-toggle-button.mod-active", has_text="3").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "reader-keys-1.png"))
        _press(page, "s", "Image 2 of 4")                      # ... given with it
        _press(page, "r", "Image 3 of 4")
        _press(page, "s", "Image 4 of 4")
        _press(page, "r", "Reader study summary")
        page.screenshot(path=str(tmp_path / "reader-keys-done.png"))
        assert page.locator("text=Done").count() == 1
        page.keyboard.press("s")                               # after the last item keys do nothing
        page.wait_for_timeout(1000)
        summary = page.locator("table").inner_text()
    answers = pd.read_csv(run / "reader_study" / "dr-keys.csv")
    assert answers["item"].tolist() == [0, 1, 2, 3]
    assert answers["answer"].tolist() == ["synthetic", "real", "synthetic", "real"]
    assert answers.loc[0, "confidence"] == 3 and answers["confidence"].isna().tolist() == [False, True, True, True]
    correct = int((answers["answer"] == answers["truth"]).sum())
    assert "dr-keys" in summary and f"\t{correct}\t" in summary  # answers, correct, accuracy, ...
    assert f"{correct / 4:.3f}" in summary
    assert (tmp_path / "reader-keys-done.png").stat().st_size > 0


APP = """
from workbench.widgets import reader_study_app
reader_study_app({run!r}, n_real=2, n_synthetic=2, seed=0, channel="t1")
"""


def test_the_app_asks_the_readers_name_then_takes_answers(tmp_path):
    require_chromium()
    train = _store(tmp_path / "store", 8, 4, splits=["train"] * 5 + ["test"] * 3)
    synth = _store(tmp_path / "synthetic", 4, 5, kind="synthetic")
    run = tmp_path / "run"
    run.mkdir()
    (run / "memorization.json").write_text(json.dumps({"synthetic_store": str(synth.path),
                                                       "train_store": str(train.path)}))
    path = write_notebook(tmp_path / "app.ipynb", APP.format(run=str(run)))
    with voila(path) as url, browser_page() as page:
        page.goto(url, timeout=120_000)
        start = page.get_by_role("button", name="start", exact=True)
        start.wait_for(timeout=120_000)
        start.click()                                          # no name yet: refused
        page.locator("text=Please enter your name or reader id first").wait_for(timeout=30_000)
        page.get_by_placeholder("your name or reader id").fill("dr-app")
        start.click()
        page.locator("text=Image 1 of 4").wait_for(timeout=30_000)
        assert page.locator("text=reader dr-app").count() == 1
        _press(page, "r", "Image 2 of 4")
        page.screenshot(path=str(tmp_path / "reader-app.png"))
    answers = pd.read_csv(run / "reader_study" / "dr-app.csv")
    assert answers["item"].tolist() == [0] and answers["answer"].tolist() == ["real"]
    plan = pd.read_csv(run / "reader_study" / "plan.csv")
    assert set(plan.loc[plan["truth"] == "real", "position"]) <= {0, 1, 2}  # the 3 held-out images


def test_a_short_reader_study_is_answered_with_buttons_saved_and_summarised(tmp_path):
    require_chromium()
    run, path = _study(tmp_path, "dr-browser")
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
