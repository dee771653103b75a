"""The basis size against the reference size (issue 16): what `default_basis_dim` should pick.

    .venv/bin/python benchmarks/search_basis_dim.py --json runs/bench-basis-dim.json

The pruned search's cost has two parts that move against each other with the basis size d: the
query codes (Q x D x d, d / N of brute force) and the survivors the bound leaves (evaluated as
sampled products at a fraction of a dense product's speed), which a larger basis cuts.  Here, on
the cached 4 x 64 x 64 phantom store of ``analysis_searches.py`` (60 training subjects: 6,216
training images, 2,459 held-out; 1,000 synthetic images, half noisy copies of training images,
half augmented held-out slices), for references of several sizes and the questions the copy
analysis asks of them, the pruned search at each d (best of ``--repeats``) beside brute force.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import analysis_searches as analysis_bench  # noqa: E402  the views and the synthetic store
import search as bench  # noqa: E402  the machine's description


def timed(fn, repeats: int):
    best, out = None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t0
        best = s if best is None else min(best, s)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", default="64,128,256,512,1024")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default="all", help="';'-separated parts of case names (e.g. 'held-out 2,459'), or all")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from workbench.search import CorrelationIndex
    from workbench.search.index import default_basis_dim

    store, train, test = analysis_bench.views(60)
    synthetic = analysis_bench.synthetic_store(store, train, test, 1000)
    rng = np.random.default_rng(0)
    test_1000 = test.take(np.sort(rng.choice(len(test), 1000, replace=False)))
    train_2000 = train.take(np.sort(rng.choice(len(train), 2000, replace=False)))
    # (name, reference, queries, k): the analysis's questions at these sizes
    cases = [
        ("held-out 1,000 <- training 2,000, k=1", test_1000, train_2000, 1),
        ("held-out 2,459 <- training 6,216, k=1", test, train, 1),
        ("training 6,216 <- held-out 2,459, k=1", train, test, 1),
        ("training 6,216 <- synthetic 1,000, k=5", train, synthetic, 5),
    ]
    if args.cases != "all":
        parts = [p.strip() for p in args.cases.split(";")]
        cases = [c for c in cases if any(p in c[0] for p in parts)]
    dims = [int(d) for d in args.dims.split(",")]
    rows = []
    for name, reference, queries, k in cases:
        q = queries.to_array()
        brute_s, truth = None, None
        for d in dims:
            if d > len(reference):
                continue
            t0 = time.perf_counter()
            index = CorrelationIndex(reference, basis_dim=d)
            build_s = time.perf_counter() - t0
            if truth is None:
                brute_s, truth = timed(lambda: index.topk(q, k, method="brute"), args.repeats)
            s, res = timed(lambda: index.topk(q, k, method="pruned"), args.repeats)
            same = bool(np.array_equal(res.indices, truth.indices))
            row = {"case": name, "n_reference": len(reference), "n_queries": len(q), "k": k, "basis_dim": d,
                   "default": d == default_basis_dim(len(reference)), "level1": index.level1,
                   "build_s": round(build_s, 2), "pruned_s": round(s, 3), "brute_s": round(brute_s, 3),
                   "fraction": round(res.stats["full_fraction"], 5), "same_top_k": same,
                   "stages": res.stats["seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            index = None  # freed before the next build
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": bench.machine_info(), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
