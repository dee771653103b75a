"""Time the demo end to end and print its per-stage times and key figures.

    .venv/bin/python benchmarks/demo.py [--out runs/demo-bench]

Runs the same stages as `make demo` (workbench.runs.run_demo) into a fresh folder and prints a
Markdown table for BENCHMARKS.md.  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time

import torch

from workbench.runs import DEMO, run_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/demo-bench")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.time()
    record = run_demo(args.out, progress=False)
    wall = time.time() - t0
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"settings: {DEMO}\n")
    print("| stage | seconds |\n| --- | ---: |")
    for name, sec in record["stage_seconds"].items():
        print(f"| {name} | {sec:.0f} |")
    print(f"| **total** | **{wall:.0f}** ({wall / 60:.1f} min) |\n")
    m = record["memorization"]
    print("| figure | value |\n| --- | ---: |")
    for key in ("n_train", "n_synthetic", "n_test", "synthetic_max_r_median", "synthetic_max_r_p90", "test_max_r_median",
                "test_max_r_max", "synthetic_above_test_max", "synthetic_above_test_p99"):
        v = m[key]
        print(f"| {key} | {v:.3f} |" if isinstance(v, float) else f"| {key} | {v} |")


if __name__ == "__main__":
    main()
