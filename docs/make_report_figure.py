"""Take the README's privacy-against-utility figure and report from a run, in chromium.

    make demo                                          # runs/demo with its report (09_privacy_utility)
    .venv/bin/python docs/make_report_figure.py        # docs/report/overview.png, report.html, report.json

Opens ``RUN/report.html`` (self-contained: plotly.js is embedded, nothing is fetched),
photographs its overview figure, and copies the page and its JSON next to it (phantom data only:
never run this on a run of patient data and commit the result).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser import browser_page  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report")
    a = p.parse_args()
    page_file = a.run / "report.html"
    if not page_file.is_file():
        sys.exit(f"{page_file}: not there; run `make demo` (or `workbench report {a.run}`) first")
    a.out.mkdir(parents=True, exist_ok=True)
    with browser_page(width=1200, height=900) as page:
        page.goto(page_file.resolve().as_uri(), timeout=120_000)
        figure = page.locator("#overview")
        figure.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        figure.screenshot(path=str(a.out / "overview.png"))
    shutil.copyfile(page_file, a.out / "report.html")
    shutil.copyfile(a.run / "report.json", a.out / "report.json")
    print("wrote", a.out / "overview.png", a.out / "report.html", a.out / "report.json")


if __name__ == "__main__":
    main()
