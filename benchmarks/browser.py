"""How fast the match browser moves to the next image in a real browser, at 256x256x5.

    .venv/bin/python benchmarks/browser.py --json runs/bench-browser.json
    .venv/bin/python benchmarks/browser.py --run runs/demo --screenshots docs/screenshots   # README pictures

Builds (or reuses, in runs/bench-cache/) brain phantom slices at 256x256 with all 5 channels,
makes a synthetic set of 16 noisy copies of training slices and 16 held-out slices, runs the
package's search and copy analysis into a run folder, serves ``MatchBrowser(run)`` with Voila on
127.0.0.1 and drives Debian's chromium with Playwright.  Each step is timed in the page: from the
key press (a capturing listener on ``window``) to the last change under the widget, with each new
panel image's decode counted (``img.decode()``), so it is what a user waits for.  Steps are timed
with the grayscale contrast, then with the segmentation overlay on.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import nbformat
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser import browser_page, install_step_timer, timed_key, voila  # noqa: E402

from workbench.data.phantom import write_brain_phantom  # noqa: E402
from workbench.data.prepare import prepare_brats_store  # noqa: E402
from workbench.data.store import SliceStore, StoreWriter  # noqa: E402
from workbench.memorization import run_analysis  # noqa: E402

CACHE = ROOT / "runs" / "bench-cache"


def bench_run() -> Path:
    """A run folder with search results for 32 synthetic images against phantom slices at 256x256x5."""
    run = CACHE / "browser-run"
    if (run / "copy_analysis.json").exists():
        return run
    phantom, store_path = CACHE / "browser-phantom", CACHE / "browser-store256"
    if not (store_path / "store.json").exists():
        if not phantom.exists():
            write_brain_phantom(phantom, subjects=6, seed=0)
        prepare_brats_store(phantom, store_path, size=256, n_test=2, seed=0, overwrite=True)
    store = SliceStore.open(store_path)
    train, test = store.where(split="train"), store.where(split="test")
    rng = np.random.default_rng(0)
    copied = train[rng.choice(len(train), 16, replace=False)]
    copies = np.clip(copied + 0.02 * rng.standard_normal(copied.shape).astype(np.float32), 0, 1)
    novel = test[rng.choice(len(test), 16, replace=False)]
    synth_path = CACHE / "browser-synthetic256"
    with StoreWriter(synth_path, channels=store.channels, height=256, width=256, kind="synthetic",
                     overwrite=True) as w:
        w.append(np.concatenate([copies, novel]).astype(np.float32),
                 [{"split": "synthetic", "model": "benchmark", "seed": i} for i in range(32)])
    synth = SliceStore.open(synth_path)
    run.mkdir(parents=True, exist_ok=True)
    run_analysis(synth, train, test, k=5, bootstrap=200, per_channel=False, progress=False).save(run)
    return run


def notebook(folder: Path, run: Path, channel: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"from workbench.widgets import MatchBrowser\n"
                                          f"MatchBrowser({str(run)!r}, reviewer='benchmark', channel={channel!r})")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "match_browser.ipynb"
    nbformat.write(nb, path)
    return path


def measure(run: Path, steps: int, screenshots: Path | None, channel: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, voila(notebook(Path(tmp), run, channel)) as url, \
            browser_page(height=1250) as page:
        page.goto(url, timeout=180_000)
        page.locator("text=shown (").wait_for(timeout=180_000)
        if screenshots:
            screenshots.mkdir(parents=True, exist_ok=True)
            page.locator(".workbench-match-browser").screenshot(path=str(screenshots / "match-browser.png"))
        page.hover(".workbench-match-browser img >> nth=0")
        install_step_timer(page, ".workbench-match-browser")
        timed_key(page, "ArrowRight")  # first step warms caches; not counted
        gray = [timed_key(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft") for i in range(steps)]
        page.get_by_text("seg overlay").click()
        page.wait_for_timeout(500)
        page.hover(".workbench-match-browser img >> nth=0")
        overlay = [timed_key(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft") for i in range(steps)]
        if screenshots:
            page.locator(".workbench-match-browser").screenshot(path=str(screenshots / "match-browser-overlay.png"))
    summary = {}
    for name, t in (("grayscale", gray), ("segmentation overlay", overlay)):
        t = np.asarray(t)
        summary[name] = {"steps": len(t), "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                         "max_ms": float(t.max()), "within_150ms": float(np.mean(t <= 150))}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a run folder to browse (default: the 256x256x5 benchmark run)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--channel", default="flair")
    p.add_argument("--screenshots", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    run = (a.run or bench_run()).resolve()
    synth = SliceStore.open(json.loads((run / "memorization.json").read_text())["synthetic_store"])
    result = {"run": str(run), "image_shape": list(synth.image_shape), "machine": platform.processor() or platform.machine(),
              **measure(run, a.steps, a.screenshots, a.channel)}
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
