"""The distinct-subject search through each method of an index, with and without its labels (issue 16).

    .venv/bin/python benchmarks/search_distinct.py --json runs/bench-distinct.json

The copy analysis asks, for every synthetic image, the best match of each of the 5 best training
subjects: a top-k' search (k' = :func:`workbench.search.subjects.first_k`, 129 on the brain
phantoms' 104 slices a subject) whose list is then read label by label.  This times that search of
``--synthetic`` synthetic images of ``benchmarks/analysis_searches.py`` against its training images
(6,216 slices of 4 x 64 x 64, 60 subjects) through one prepared :class:`CorrelationIndex`, for each
method (``brute``, ``pruned``, ``auto``) and for streamed brute force, told the labels
(``labelled``: the search rescores only the pairs a label's best may need, and a pruned search's
seeds are float32) or not (the whole top-k' list rescored, exact seeds).  Every answer must equal
the first one's; the rounds alternate, so that drift of this machine hits every case alike.
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
import analysis_searches as analysis  # noqa: E402  the cached stores
import search as bench  # noqa: E402  the machine's description


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=6000)
    ap.add_argument("--train-subjects", type=int, default=60)
    ap.add_argument("--k", type=int, default=5, help="distinct subjects per query")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="streamed,brute,pruned,auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from workbench.search import CorrelationIndex, topk_correlation
    from workbench.search.subjects import topk_with_distinct

    store, train, test = analysis.views(args.train_subjects)
    synthetic = analysis.synthetic_store(store, train, test, args.synthetic)
    t0 = time.perf_counter()
    index = CorrelationIndex(train)
    build_s = time.perf_counter() - t0

    def searcher(method: str):
        def search(queries, reference, k, by_label=None):
            if method == "streamed":
                return topk_correlation(queries, reference, k=k, method="brute", by_label=by_label)
            return index.topk(queries, k, method=method, by_label=by_label)
        return search

    rows, first = [], None
    for r in range(args.rounds):
        for method in args.methods.split(","):
            for labelled in (False, True):
                t0 = time.perf_counter()
                _, res = topk_with_distinct(searcher(method), synthetic, train, None, args.k, "subject", labelled)
                seconds = time.perf_counter() - t0
                if first is None:
                    first = res
                same = bool(np.array_equal(res.indices, first.indices) and np.array_equal(res.values, first.values))
                row = {"round": r, "method": method, "labelled": labelled, "seconds": round(seconds, 2),
                       "ran": res.stats.get("method", "brute"), "rescored": int(res.rescored),
                       "searched_k": res.stats["searched_k"], "widened_queries": res.stats["widened_queries"],
                       "stages": res.stats.get("seconds"), "equal": same}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not same:
                    raise SystemExit(f"{method} labelled={labelled}: a different answer")
    out = {"machine": bench.machine_info(), "synthetic": len(synthetic), "train": len(train), "k": args.k,
           "pixels": int(np.prod(train.image_shape)), "build_index_s": round(build_s, 2), "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
