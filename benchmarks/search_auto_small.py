"""``method="auto"`` on a small reference: few, large tiles (issue 16, item 23).

    .venv/bin/python benchmarks/search_auto_small.py --json runs/bench-auto-small.json

An index of the 2,459 held-out images of ``benchmarks/analysis_searches.py`` (4 x 64 x 64, five
tiles of 512 rows) searched by the 6,216 training images (an array, then the store) and the 6,000
synthetic images, k = 1: auto, pruned and brute each, with what auto chose, how large its timed
sample was and what it cost.  Before item 23 auto sampled whole tiles there (two of five).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import analysis_searches as analysis_bench  # noqa: E402  the views and the synthetic store
import search as bench  # noqa: E402  the machine's description


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from workbench.search import CorrelationIndex

    store, train, test = analysis_bench.views(60)
    synthetic = analysis_bench.synthetic_store(store, train, test, 6000)
    t0 = time.perf_counter()
    index = CorrelationIndex(test)
    rows = [{"build_s": round(time.perf_counter() - t0, 2), "index": repr(index)}]
    for name, queries in (("train (array)", train.to_array()), ("train (store)", train), ("synthetic (store)", synthetic)):
        for method in ("auto", "pruned", "brute"):
            t0 = time.perf_counter()
            res = index.topk(queries, 1, method=method)
            figures = res.stats.get("auto_figures", {})
            rows.append({"queries": name, "method": method, "seconds": round(time.perf_counter() - t0, 2),
                         "ran": res.stats["method"], "sample_pairs": figures.get("sample_pairs"),
                         "sample_s": figures.get("sample_s"), "stages": res.stats.get("seconds")})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": bench.machine_info(), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
