"""The volume viewer in a real browser: Voila serves a notebook, chromium clicks, steps and marks.

Phantom volumes (32³, five channels): the training volumes of the brain phantom, and synthetic
volumes that are noisy copies of them plus the held-out subject.  With WORKBENCH_SCREENSHOT set
to a path, the viewer (cursor in the tumour, overlay on) is photographed there for the README.
(The same widget without a browser: tests/test_volume_viewer.py.)
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from browser import browser_page, install_step_timer, require_chromium, timed_key, voila, write_notebook
from workbench.data.store import SliceStore, StoreWriter
from workbench.data.volumes import prepare_volume_store
from workbench.widgets import VolumeViewer

pytestmark = pytest.mark.slow

NOTEBOOK = """
from workbench.data.store import SliceStore
from workbench.widgets import VolumeViewer
train = SliceStore.open({store!r}).where(split="train")
VolumeViewer({synthetic!r}, train, run={run!r}, reviewer="dr-browser")
"""
ROOT = ".workbench-volume-viewer"


def phantom_volumes(phantom_dir, out, *, size=32):
    """(synthetic store, training view): noisy copies of the training volumes and the held-out one."""
    store = prepare_volume_store(phantom_dir, out / "volumes", size=size, n_test=1, seed=0, progress=False)
    train, test = store.where(split="train"), store.where(split="test")
    rng = np.random.default_rng(0)
    images, rows = [], []
    for source, noise in ((train[0], 0.03), (train[1], 0.12), (test[0], 0.03)):
        v = np.clip(source + noise * rng.standard_normal(source.shape), 0, 1).astype(np.float32)
        v[-1] = source[-1]  # the segmentation channel as it was
        images.append(v)
        rows.append({"split": "synthetic", "model": "phantom-copy", "seed": len(rows)})
    images.append(np.clip(0.5 * train[0] + 0.5 * test[0], 0, 1))  # a blend of two subjects
    rows.append({"split": "synthetic", "model": "phantom-blend", "seed": 3})
    _, c, d, h, w = store.shape
    with StoreWriter(out / "synthetic", channels=store.channels, height=h, width=w, depth=d, kind="synthetic") as wr:
        wr.append(np.stack(images), rows)
    return SliceStore.open(out / "synthetic"), train


def _srcs(page) -> dict:
    return page.evaluate("""(root) => Object.fromEntries([...document.querySelectorAll(root + ' img')]
        .map(e => [[...e.classList].find(c => c.startsWith('workbench-')), e.src]))""", ROOT)


def _readouts(page) -> list[int]:
    return [int(t) for t in page.locator(".workbench-cursor .widget-readout").all_inner_texts()]


def _click_voxel(page, viewer, row, view, col_voxel, row_voxel):
    """Click the centre of voxel (row_voxel, col_voxel) of a panel, as displayed."""
    d, h, w = viewer.depth, viewer.height, viewer.width
    rows, cols = {"axial": (h, w), "coronal": (d, w), "sagittal": (d, h)}[view]
    width, height = viewer.panel_px[view]
    page.locator(f"img.workbench-{row}-{view}").click(position={"x": (col_voxel + 0.5) * width / cols,
                                                                "y": (row_voxel + 0.5) * height / rows})


def _wait_cursor(page, expected):
    page.wait_for_function("([sel, want]) => JSON.stringify([...document.querySelectorAll(sel)]"
                           ".map(e => parseInt(e.innerText))) === want",
                           arg=[".workbench-cursor .widget-readout", json.dumps(list(expected)).replace(" ", "")],
                           timeout=30_000)


def test_volume_viewer_clicks_keys_and_marks_in_a_browser(phantom_dir, tmp_path):
    """Clicks in a panel move the cursor of all six panels and the sliders; → steps through volumes
    in r order (timed); a mark reaches marks.csv and is shown after a reload."""
    require_chromium()
    synthetic, train = phantom_volumes(phantom_dir, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    expected = VolumeViewer(synthetic, train)  # the same data, headless: the order and the geometry
    order = expected.order.tolist()
    d = expected.depth
    seg = synthetic[order[0]][-1]
    tz, ty, tx = (int(round(c)) for c in np.argwhere(seg > 0).mean(0))  # the tumour's centre
    path = write_notebook(tmp_path / "volumes.ipynb", NOTEBOOK.format(synthetic=str(synthetic.path),
                                                                      store=str(train.path), run=str(run)))
    with voila(path) as url, browser_page(width=1400, height=1100) as page:
        page.goto(url, timeout=120_000)
        page.locator("text=of 4, by r").wait_for(timeout=120_000)
        text = page.inner_text(ROOT)
        assert f"synthetic #{order[0]}" in text and f"r = {expected.r[order[0]]:.4f}" in text
        assert _readouts(page) == list(expected.cursor)

        # a click on the axial panel: the cursor's x and y move, in the sliders and in all six panels
        before = _srcs(page)
        assert len(before) == 7  # six panels and the slice profile
        _click_voxel(page, expected, "synthetic", "axial", 5, 24)
        _wait_cursor(page, (5, 24, expected.cursor[2]))
        page.wait_for_function("([root, old]) => [...document.querySelectorAll(root + ' img')]"
                               ".filter(e => !old.includes(e.src)).length >= 6", arg=[ROOT, list(before.values())],
                               timeout=30_000)
        after = _srcs(page)
        assert all(after[k] != before[k] for k in before if k != "workbench-slice-profile")
        # the tumour: z from the coronal panel of the training volume, then x and y from its axial panel
        _click_voxel(page, expected, "train", "coronal", tx, d - 1 - tz)
        _wait_cursor(page, (tx, 24, tz))
        _click_voxel(page, expected, "train", "axial", tx, ty)
        _wait_cursor(page, (tx, ty, tz))
        assert f"plane z={tz}: r = " in page.inner_text(ROOT)
        before = _srcs(page)
        page.get_by_text("seg overlay").click()
        page.wait_for_function("([root, old]) => [...document.querySelectorAll(root + ' img')]"
                               ".filter(e => !old.includes(e.src)).length >= 2", arg=[ROOT, list(before.values())],
                               timeout=30_000)
        page.wait_for_timeout(300)
        shot = os.environ.get("WORKBENCH_SCREENSHOT")
        if shot:
            page.locator(ROOT).screenshot(path=shot)
        # a click on the profile moves z
        page.locator("img.workbench-slice-profile").click(position={"x": 2, "y": 60})
        _wait_cursor(page, (tx, ty, 0))

        # → steps through the volumes in order of r; each step is timed, key to the last panel drawn
        page.hover("img.workbench-synthetic-axial")  # keys go to the panels under the pointer
        install_step_timer(page, ROOT)
        timings = []
        for step in range(1, 4):
            before = _srcs(page)
            timings.append(timed_key(page, "ArrowRight"))
            text = page.inner_text(ROOT)
            assert f"volume {step + 1} of 4" in text and f"synthetic #{order[step]}" in text
            assert _srcs(page)["workbench-synthetic-axial"] != before["workbench-synthetic-axial"]
        print(f"volume viewer step (32³, 5 channels), key to last panel drawn (ms): median {np.median(timings):.0f}, "
              f"max {np.max(timings):.0f} over {len(timings)} steps")
        timed_key(page, "ArrowUp")  # z up
        _wait_cursor(page, (tx, ty, 1))

        # a mark with a comment goes to marks.csv at once and is shown after a reload
        page.keyboard.press("Home")
        page.locator(f"text=synthetic #{order[0]} (").wait_for(timeout=30_000)
        page.locator("input[placeholder^='comment']").fill("same tumour")
        page.get_by_role("button", name="copy", exact=True).click()
        page.locator("text=marked copy by dr-browser").wait_for(timeout=30_000)
        marks = pd.read_csv(run / "marks.csv")
        assert marks[["synthetic", "verdict", "comment"]].values.tolist() == [[order[0], "copy", "same tumour"]]
        page.reload()
        page.locator("text=of 4, by r").wait_for(timeout=120_000)
        page.locator("text=marked copy by dr-browser").wait_for(timeout=30_000)
        assert page.locator("input[placeholder^='comment']").input_value() == "same tumour"
        assert "Traceback" not in page.inner_text("body")
    assert len(timings) == 3 and all(t > 0 for t in timings)
