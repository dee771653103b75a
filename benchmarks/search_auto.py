"""What ``method="auto"`` chooses against what each path takes (issue 16, item 5).

    .venv/bin/python benchmarks/search_auto.py                      # float32 and bf16 copies, k = 1, 5, 50, 200, 800
    .venv/bin/python benchmarks/search_auto.py --precisions float32 --k 5 1

Workload (a) of ``benchmarks/search.py`` (256 queries x 8,192 references of 4x64x64; its phantom
store is cached under ``runs/bench-cache/``).  Per index copy: the time of the index's one-off
brute probe, then per k the best of two searches by ``pruned``, ``brute`` and ``auto`` (after a
warm-up on 8 queries), the fraction of the pairs the tiles evaluate, and what ``auto`` chose and why.
Every search is checked against the float64 truth.  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  the workload of the search benchmark


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=["float32", "bf16"])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 50, 200, 800])
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
