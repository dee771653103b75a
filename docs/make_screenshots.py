"""Take the README's screenshots of the widgets from real runs, in chromium through Voila.

    make demo                                   # the run the screenshots show (phantom data only)
    make demo-3d                                # the 3D run the volume viewer's screenshot shows
    .venv/bin/python docs/make_screenshots.py   # writes docs/screenshots/*.png

Serves the run's app notebooks (``workbench.runs.app.prepare_app``, the notebooks ``workbench app``
serves) one at a time with Voila on 127.0.0.1 for the time of one screenshot (without the app's
access token: a test server that only this script talks to), and photographs each widget.  The reader study is
opened for a reader called "screenshot" and left unanswered.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser import browser_page, voila  # noqa: E402

from workbench.memorization.run_results import load_run_matches  # noqa: E402
from workbench.runs.app import prepare_app  # noqa: E402


def tumour_match(run) -> int | None:
    """The strongest-matching synthetic image whose training match shows a tumour (for the overlay)."""
    m = load_run_matches(run)
    if "seg" not in m.train.channels:
        return None
    seg = m.train.channels.index("seg")
    for _, row in m.best.sort_values("r", ascending=False).iterrows():
        if (m.train.read_rows([int(row["match_row"])])[0, seg] > 0.125).sum() > 20:
            return int(row["synthetic"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument("--run3d", type=Path, default=ROOT / "runs" / "demo3d",
                   help="a run of 3D volumes for the volume viewer (skipped when it is not there)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    written = []
    if (a.run / "run.json").exists():
        two_dimensional(a.run, a.out)
        written += ["match-browser.png", "reader-study.png"]
    if (a.run3d / "run.json").exists():
        volume_viewer(a.run3d, a.out / "volume-viewer.png")
        written.append("volume-viewer.png")
    if not written:
        raise SystemExit(f"neither {a.run} nor {a.run3d} is a run: make demo, make demo-3d")
    for name in written:
        print("wrote", a.out / name)


def two_dimensional(run: Path, out: Path) -> None:
    """The 2D demo run's match browser and reader study."""
    app = prepare_app(run, reviewer="screenshot")
    with voila(app / "05_match_browser.ipynb") as url, browser_page(width=1400, height=1250) as page:
        page.goto(url, timeout=180_000)
        page.locator("text=shown (").wait_for(timeout=180_000)
        page.get_by_text("seg overlay").click()
        shown = tumour_match(run)
        if shown is not None:
            page.locator("input[type=number]").fill(str(shown))
            page.get_by_role("button", name="go", exact=True).click()
            page.locator(f"text=synthetic #{shown} · match").wait_for(timeout=30_000)
        page.locator(".widget-toggle-buttons button").nth(1).click()  # a runner-up from another subject
        page.locator("text=match 2:").wait_for(timeout=30_000)
        page.locator(".widget-toggle-buttons button").nth(0).click()
        page.locator("text=match 1:").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        page.locator(".workbench-match-browser").screenshot(path=str(out / "match-browser.png"))
    with voila(app / "06_reader_study.ipynb") as url, browser_page(width=900, height=900) as page:
        page.goto(url, timeout=180_000)
        page.locator("input[type=text]").first.wait_for(timeout=180_000)
        page.locator("input[type=text]").first.fill("screenshot")
        page.get_by_role("button", name="start", exact=True).click()
        page.locator("text=Image 1 of").wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "reader-study.png"), full_page=True)


def volume_viewer(run: Path, out: Path) -> None:
    """The 3D run's app page: the strongest-matching synthetic volume, the segmentation overlaid."""
    app = prepare_app(run, reviewer="screenshot")
    with voila(app / "05_match_browser.ipynb") as url, browser_page(width=1400, height=1100) as page:
        page.goto(url, timeout=180_000)
        page.locator("text=, by r").first.wait_for(timeout=180_000)
        page.get_by_text("seg overlay").click()
        page.wait_for_timeout(1500)
        page.locator(".workbench-volume-viewer").screenshot(path=str(out))


if __name__ == "__main__":
    main()
