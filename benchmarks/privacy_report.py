"""Time each evaluation of the privacy-against-utility report on a run, every part computed afresh.

    .venv/bin/python benchmarks/privacy_report.py runs/demo [--utility-steps 300]

Computes the report of RUN with ``recompute=True`` (utility classifiers retrained: their folder
is moved aside first) and prints a Markdown table for BENCHMARKS.md: the seconds of each part, the
set sizes it worked on, and the machine (CPU model and the flags that decide bf16 speed), with the
load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from demo import cpu  # noqa: E402  (benchmarks/demo.py: the CPU line every benchmark prints)

import workbench
from workbench.data import layout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--utility-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run = workbench.open_run(a.run)
    shutil.rmtree(Path(run.path) / layout.UTILITY_DIR, ignore_errors=True)
    load_before = os.getloadavg()
    t0 = time.time()
    report = workbench.privacy_report(run, recompute=True, utility_options={"steps": a.utility_steps, "seed": a.seed},
                                      fidelity_options={"seed": a.seed}, membership_options={"seed": a.seed})
    total = time.time() - t0
    print(f"\nCPU: {cpu()}; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"run: {run.path}: {len(run.train)} training images (the model saw), {len(run.test)} held-out, "
          f"{len(run.synthetic)} synthetic\n")
    print("| part | seconds |\n| --- | ---: |")
    for part, seconds in report["seconds"].items():
        print(f"| {part} | {seconds:.1f} |")
    print(f"| **report in all (with report.html)** | **{total:.1f}** |")
    for part, reason in report["missing"].items():
        print(f"\nmissing {part}: {reason}")
    print("\n" + json.dumps(report["values"], indent=1))


if __name__ == "__main__":
    main()
