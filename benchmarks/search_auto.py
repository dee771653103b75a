"""What ``method="auto"`` chooses against what each path takes (issue 16, item 5).

    .venv/bin/python benchmarks/search_auto.py                      # float32 and bf16 copies, k = 1, 5, 50, 200, 800
    .venv/bin/python benchmarks/search_auto.py --precisions float32 --k 5 1

Workload (a) of ``benchmarks/search.py`` (256 queries x 8,192 references of 4x64x64; its phantom
store is cached under ``runs/bench-cache/``).  Per index copy: the time of the index's one-off
brute probe, then per k the best of two searches by ``pruned``, ``brute`` and ``auto`` (after a
warm-up on 8 queries), the fraction of the pairs the tiles evaluate, and what ``auto`` chose and why.
Every search is checked against the float64 truth.  Run it on an otherwise idle machine.

Then the first search of a new process (``--new-process N``, default 3 rounds; 0 skips it): the float32
index saved, and ``workbench search --index`` run as a papermill rerun or a shell loop would run it,
alternately with an empty per-machine cache (the brute probe timed in that process) and with the
cache the first run left (the probe's figures read), each process's wall time and its search's.
The in-process part above always probes afresh (a cache of its own in a temporary folder).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  the workload of the search benchmark


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=["float32", "bf16"])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 50, 200, 800])
    ap.add_argument("--new-process", type=int, default=3, metavar="N",
                    help="rounds of the first auto search in a new process, without and with the probe's cache")
    args = ap.parse_args(argv)
    bench.probe_afresh()  # the probe timed here, not read from this machine's cache
    from workbench.search import CorrelationIndex

    work = bench.build_workload(64, 256, 8192, 84, 4, 0)
    q, r = work["queries"], work["reference"]
    scores = bench.znorm(q, np.float64) @ bench.znorm(r, np.float64).T
    print(f"{bench.cpu_model()}; workload (a): {len(q)} x {len(r)} x {r[0].size} pixels")
    for precision in args.precisions:
        index = CorrelationIndex(r, precision=precision)
        t0 = time.perf_counter()
        index.probe()
        print(f"\n{precision} copy: brute probe {time.perf_counter() - t0:.3f} s")
        print("| k | fraction | pruned s | brute s | auto s | auto chose |")
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        for k in args.k:
            _, truth = bench.topk_rows(scores, k)
            seconds, fraction, why = {}, None, ""
            for method in ("pruned", "brute", "auto"):
                index.topk(q[:8], k=k, method=method)
                best = np.inf
                for _ in range(2):
                    t0 = time.perf_counter()
                    res = index.topk(q, k=k, method=method)
                    best = min(best, time.perf_counter() - t0)
                if not (np.asarray(res.indices) == truth).all():
                    raise SystemExit(f"{precision}, k={k}, {method}: not the float64 top-k")
                seconds[method] = best
                if method == "pruned":
                    fraction = res.stats["full_fraction"]
                if method == "auto":
                    why = res.stats["auto"]
            print(f"| {k} | {fraction:.3f} | {seconds['pruned']:.3f} | {seconds['brute']:.3f} | "
                  f"{seconds['auto']:.3f} | {why} |", flush=True)
    if args.new_process:
        new_process(work, args.new_process)


def new_process(work, rounds: int) -> None:
    """``workbench search --index`` in fresh processes, k = 5, without and with the probe's cache
    (the stores, the index and the caches in temporary folders, removed after)."""
    with tempfile.TemporaryDirectory(prefix="bench-auto-", dir=bench.CACHE) as root, \
            tempfile.TemporaryDirectory(prefix="bench-auto-cache-") as caches:
        new_process_runs(work, rounds, Path(root), Path(caches))


def new_process_runs(work, rounds: int, root: Path, caches: Path) -> None:
    import pandas as pd

    from workbench.data.store import SliceStore, StoreWriter
    from workbench.search import CorrelationIndex

    q, r = work["queries"], work["reference"]
    for name, images in (("queries", q), ("reference", r)):
        with StoreWriter(root / name, channels=[f"c{i}" for i in range(r.shape[1])], height=r.shape[2],
                         width=r.shape[3]) as w:
            w.append(images, [{"split": "train"}] * len(images))
    CorrelationIndex(SliceStore.open(root / "reference"), precision="float32").save(root / "index")
    warm = caches / "kept"
    print("\nfirst auto search of a new process (`workbench search --index`, k = 5), seconds:")
    print("| round | probe cache | process wall s | search s (as the command reports it) | probe s |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for i in range(-1, rounds):  # round 0 fills the kept cache
        for cache in ("empty", "kept")[i < 0:]:
            folder = warm if cache == "kept" else caches / f"empty-{i}"
            out = root / f"m{i}-{cache}.csv"
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "workbench", "search", "--queries", str(root / "queries"),
                                  "--index", str(root / "index"), "--k", "5", "--out", str(out), "--overwrite"],
                                 env={**os.environ, "XDG_CACHE_HOME": str(folder)}, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if run.returncode:
                raise SystemExit(run.stderr)
            said = next(ln for ln in run.stdout.splitlines() if ln.startswith("searched"))
            search_s = float(said.split(" pairs in ")[1].split(" s ")[0])
            probe = run.stdout.split("probe timed now, ")[1].split(" s")[0] if "probe timed now" in run.stdout else "-"
            table = pd.read_csv(out)
            if not (table.groupby("query").size() == 5).all():
                raise SystemExit(f"{out}: not 5 matches a query")
            print(f"| {i + 1} | {cache} | {wall:.2f} | {search_s:.2f} | {probe} |", flush=True)


if __name__ == "__main__":
    main()
