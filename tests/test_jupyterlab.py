"""The widgets inside JupyterLab (not only Voila): a notebook is run in the lab UI in chromium."""
from __future__ import annotations

import re

import pandas as pd
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from browser import browser_page, jupyterlab, require_chromium, write_notebook
from match_run import make_run
from workbench.widgets import MatchBrowser

pytestmark = pytest.mark.slow

CELLS = [
    "from workbench.widgets import MatchBrowser, ReaderStudy\nfrom workbench.data import SliceStore",
    "MatchBrowser({run!r}, reviewer='dr-lab')",
    "ReaderStudy({run!r}, 'dr-lab', real=SliceStore.open({store!r}).where(split='test'),\n"
    "            synthetic=SliceStore.open({synthetic!r}), n_real=2, n_synthetic=2)",
]


def test_both_widgets_work_in_jupyterlab(tmp_path):
    require_chromium()
    made = make_run(tmp_path, size=64, n_synthetic=10, n_copies=4)
    order = MatchBrowser(made["run"]).shown.tolist()
    write_notebook(tmp_path / "widgets.ipynb", *(c.format(run=str(made["run"]), store=str(made["store"]),
                                                          synthetic=str(made["synthetic"])) for c in CELLS))
    with jupyterlab(tmp_path) as (url, token), browser_page(height=1400) as page:
        page.goto(f"{url}lab/tree/widgets.ipynb?token={token}", timeout=120_000)
        page.locator(".jp-Notebook").wait_for(timeout=120_000)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
        browser = page.locator(".workbench-match-browser")
        # a "Run All Cells" clicked while the lab is still wiring the kernel is sometimes dropped (the
        # cells stay "[ ]"): ask again until the cells run, then wait for the widget itself
        for attempt in range(4):
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            try:
                page.locator(".jp-InputPrompt:has-text('[1]')").first.wait_for(timeout=20_000)
                break
            except PlaywrightTimeout:
                if attempt == 3:
                    raise
        browser.locator("text=of 10 shown").wait_for(timeout=120_000)
        assert f"synthetic #{order[0]} · match" in browser.inner_text()
        browser.locator("img").first.hover()
        page.keyboard.press("ArrowRight")
        browser.locator(f"text=synthetic #{order[1]} · match").wait_for(timeout=30_000)
        assert re.search(r"image\s+2\s+of 10 shown", browser.inner_text())
        page.get_by_role("button", name="unsure", exact=True).click()
        browser.locator("text=marked unsure by dr-lab").wait_for(timeout=30_000)
        assert pd.read_csv(made["run"] / "marks.csv")["synthetic"].tolist() == [order[1]]
        page.locator("text=Image 1 of 4").wait_for(timeout=60_000)
        page.get_by_role("button", name="real", exact=True).click()
        page.locator("text=Image 2 of 4").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
    assert pd.read_csv(made["run"] / "reader_study" / "dr-lab.csv")["answer"].tolist() == ["real"]
