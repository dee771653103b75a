"""Take the README's figures of the four findings from the executed findings notebook, in chromium.

    make findings                                      # the sweep and notebooks/08_findings (phantom data only)
    .venv/bin/python docs/make_findings_figures.py     # writes docs/findings/*.png

Opens ``runs/findings/08_findings.html`` (self-contained: plotly.js is embedded, nothing is
fetched) and photographs its plotly figures: the strongest match, the held-out baseline, each
finding's comparison and memorization against training steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser import browser_page  # noqa: E402

#: the figures of 08_findings, in the order the notebook draws them
NAMES = ["strongest-match", "baseline-histogram", "finding-1-family", "finding-2-training-set",
         "finding-3-augmentation", "finding-4-steps-curve", "finding-4-steps"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--html", type=Path, default=ROOT / "runs" / "findings" / "08_findings.html")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "findings")
    a = p.parse_args()
    if not a.html.is_file():
        sys.exit(f"{a.html}: not there; run `make findings` first")
    a.out.mkdir(parents=True, exist_ok=True)
    with browser_page(width=1100, height=900) as page:
        page.goto(a.html.resolve().as_uri(), timeout=120_000)
        figures = page.locator(".plotly-graph-div")
        figures.first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        count = figures.count()
        if count != len(NAMES):
            print(f"warning: {count} figures in {a.html}, {len(NAMES)} expected; numbering them instead")
        for i in range(count):
            name = NAMES[i] if count == len(NAMES) else f"figure-{i + 1}"
            figures.nth(i).scroll_into_view_if_needed()
            figures.nth(i).screenshot(path=str(a.out / f"{name}.png"))
            print("wrote", a.out / f"{name}.png")


if __name__ == "__main__":
    main()
