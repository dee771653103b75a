"""Time the demo end to end and print its per-stage times, where each stage's time went, and key figures.

    .venv/bin/python benchmarks/demo.py [--out runs/demo-bench] [--set NAME VALUE ...]

Runs the same stages as `make demo` (workbench.runs.run_demo) into a fresh folder and prints
Markdown tables for BENCHMARKS.md: the seconds of each stage (a kernel start, the notebook, its
HTML export), the work inside it (the phantom, the training loop, the sampler, the copy detector),
and the figures the demo shows.  ``--set`` overrides a demo setting, as ``workbench demo --set``
does (e.g. ``--set steps 200`` for a reduced run).  It prints the machine and the load average
before and after: run it on an otherwise idle machine, or say that it was not.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import torch

from workbench.data import layout
from workbench.runs import DEMO, run_demo
from workbench.runs.notebook import parse_value


def cpu() -> str:
    """The CPU's model name and the flags that decide float32 vs bf16 speed (lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    model = re.search(r"Model name:\s*(.+)", text)
    flags = re.search(r"Flags:\s*(.+)", text)
    wanted = sorted(f for f in (flags.group(1).split() if flags else [])
                    if f.startswith(("avx2", "avx512", "amx")) or f == "avx512_bf16")
    return f"{model.group(1).strip() if model else '?'} (flags: {' '.join(wanted) or 'no avx2/avx512/amx'})"


def printed_seconds(notebook: Path, pattern: str) -> float | None:
    """Seconds that an executed notebook's stream output states in a line matching ``pattern``."""
    if not notebook.is_file():
        return None
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            match = re.search(pattern, output.get("text", "")) if output.get("output_type") == "stream" else None
            if match:
                return float(match.group(1))
    return None


def inner_seconds(out: Path) -> dict[str, tuple[str, float | None]]:
    """The work inside each stage, as its own code timed it: stage -> (what, seconds)."""
    def read(path: Path, key: str):
        return json.loads(path.read_text()).get(key) if path.is_file() else None

    return {
        "02_train": ("training loop", read(out / layout.MODEL / "training.json", "train_seconds")),
        "03_sample": ("sampler", printed_seconds(out / "03_sample.ipynb", r"wrote \d+ synthetic images .*?(\d+) s,")),
        # the detector's own record (detector.json), or the trainer state of the shared checkpoint format
        "04_memorization": ("copy detector training",
                            (read(out / layout.DETECTOR / "detector.json", "training") or {}).get("seconds")
                            or read(out / layout.DETECTOR / "trainer.json", "seconds")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/demo-bench")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a demo setting (see workbench.runs.DEMO)")
    args = ap.parse_args()
    settings = {name: parse_value(value) for name, value in args.set}
    unknown = sorted(set(settings) - set(DEMO))
    if unknown:
        raise SystemExit(f"unknown demo setting(s) {unknown}; known: {sorted(DEMO)}")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()
    t0 = time.time()
    record = run_demo(out, settings, progress=False)
    wall = time.time() - t0
    load_after = os.getloadavg()
    print(f"\nmachine: {cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average (1, 5, 15 min): before {' '.join(f'{v:.2f}' for v in load_before)}, "
          f"after {' '.join(f'{v:.2f}' for v in load_after)}")
    print(f"settings: {record['settings']}\n")
    inner = inner_seconds(out)
    print("| stage | seconds | of which | seconds |\n| --- | ---: | --- | ---: |")
    for name, sec in record["stage_seconds"].items():
        what, work = inner.get(name, ("", None))
        print(f"| {name} | {sec:.0f} | {what} | {'' if work is None else f'{work:.0f}'} |")
    print(f"| **total** | **{wall:.0f}** ({wall / 60:.1f} min) | | |\n")
    m = record["memorization"]
    print("| figure | value |\n| --- | ---: |")
    for key in ("n_train", "n_synthetic", "n_test", "synthetic_max_r_median", "synthetic_max_r_p90", "test_max_r_median",
                "test_max_r_max", "synthetic_above_test_max", "synthetic_above_test_p99"):
        if key in m:
            v = m[key]
            print(f"| {key} | {v:.3f} |" if isinstance(v, float) else f"| {key} | {v} |")


if __name__ == "__main__":
    main()
