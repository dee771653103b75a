"""What no exact search of this design can skip (issue 16): the floors behind the speed targets.

    .venv/bin/python benchmarks/search_floors.py              # workload (a), in memory (~1 min)
    .venv/bin/python benchmarks/search_floors.py --scale      # and (b): needs the saved index and row
                                                              # copy of `search_scale.py --row-copy`

Each part below is work that an exact search by projection bounds must do at least once; each
is timed alone on this machine, done the cheapest way (one plain float32 product where the
search needs a rigorous one), and their sum is set against torch float32 brute force: the most
speed-up this design can have here, before any tile is evaluated or any stage waits on another.

Workload (a) (256 queries x 8,192 references of 4x64x64 in memory, ``benchmarks/search.py``):
- the queries' float64 z-normalisation (the exact values need it);
- the query codes, Q x D x d, and the first-level bounds, Q x N x d, as plain float32 products;
- the float64 values of the answer itself, k pairs a query (the exact kernel of the search).

Workload (b) (1,000 queries x 80,000 references of 4x128x128 on disk, ``search_scale.py``), k = 5
and 1, with the saved index (its basis, codes and rigorous bounds, both levels):
- the same fixed parts (normalisation, codes, bounds);
- reading, with the search's own O_DIRECT reader and the page cache dropped, the rows the
  bound leaves where each query's threshold is its true k-th best (known from the float64
  truth: no search can have a better one) from the float16 row copy, and the answer's rows
  from the store (their float64 values).
Torch float32 brute force is timed on the first 4,096 references and extrapolated, as in
``search_scale.py``.  Best of three (a: five) runs of each part.  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  workload (a) and the CPU's name

CACHE = Path("runs/bench-cache")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


from search_scale import drop_page_cache  # noqa: E402  (beside this script)


def fixed_parts(index, queries: np.ndarray, repeats: int) -> tuple[dict, torch.Tensor, np.ndarray]:
    """Seconds of the normalisation, the codes and the first-level bounds, each the cheapest way."""
    from workbench.search.normalise import prepare_queries

    q64, const_q = prepare_queries(queries, index.select)
    parts = {"normalise the queries (float64)": best(lambda: prepare_queries(queries, index.select), repeats)}
    x32, w = q64.float(), index.basis.float()
    d = w.shape[1]
    parts[f"codes: one plain float32 product, d = {d}"] = best(lambda: x32 @ w, repeats)
    level = index.level1 or d
    c1, r1 = (x32 @ w[:, :level]).contiguous(), index.codes[:, :level].float()

    def bounds():
        for a in range(0, len(r1), 16384):
            c1 @ r1[a:a + 16384].T
    parts[f"bounds: one plain float32 product, Q x N x {level}"] = best(bounds, repeats)
    return parts, q64, const_q


def report(name: str, parts: dict, brute_s: float, searched: dict) -> dict:
    total = sum(parts.values())
    print(f"\n{name}\n\n| part | s |\n| --- | ---: |")
    for part, sec in parts.items():
        print(f"| {part} | {sec:.4f} |")
    print(f"| **sum: the least time** | **{total:.4f}** |")
    print(f"| torch float32 brute force | {brute_s:.4f} |")
    print(f"\nat most {brute_s / total:.1f}x faster than torch float32 here; the pruned search: "
          + ", ".join(f"{k} {s:.3f} s ({brute_s / s:.1f}x)" for k, s in searched.items()))
    reads = sum(sec for part, sec in parts.items() if part.startswith("read"))
    if reads:  # the disk could in principle work while the processor does the rest
        print(f"the reads alone: {reads:.3f} s, at most {brute_s / reads:.1f}x were every other part hidden behind them")
    return {"parts": parts, "sum_s": total, "reads_s": reads, "torch_float32_s": brute_s, "max_speedup": brute_s / total,
            "max_speedup_reads_alone": brute_s / reads if reads else None, "pruned_s": searched}


def workload_a(repeats: int = 5) -> dict:
    from workbench.search import CorrelationIndex
    from workbench.search.kernel import exact_pairs

    work = bench.build_workload(64, 256, 8192, 84, 4, 0)
    q, r = work["queries"], work["reference"]
    index = CorrelationIndex(r, precision="float32")
    parts, q64, _ = fixed_parts(index, q, repeats)
    t, x32 = torch.from_numpy(bench.znorm(r, np.float32)), q64.float()
    brute = best(lambda: x32 @ t.T, 3)
    out = {}
    for k in (5, 1):
        index.topk(q[:8], k=k, method="pruned")
        searched = best(lambda: index.topk(q, k=k, method="pruned"), repeats)
        res = index.topk(q, k=k, method="pruned")
        qi = np.repeat(np.arange(len(q)), k)
        ri = np.asarray(res.indices).reshape(-1)
        answer = best(lambda: exact_pairs(q64, index.reference, index.select, qi, ri, index.stats), repeats)
        these = {**parts, f"the answer in float64: {len(qi):,} pairs": answer}
        out[f"k{k}"] = report(f"Workload (a), k = {k}: {len(q)} x {len(r)} x {r[0].size} pixels, in memory",
                              these, brute, {"pruned": searched})
    return out


def brute_on_slice(store, q64: torch.Tensor, n_slice: int) -> float:
    """Seconds of torch float32 brute force against the first ``n_slice`` references, in memory."""
    ref32 = torch.from_numpy(bench.znorm(store.read(np.arange(n_slice)), np.float32))
    x32 = q64.float()
    return best(lambda: x32 @ ref32.T, 3)


def workload_b(images: int, n_queries: int, repeats: int = 3) -> dict:
    from workbench.search import CorrelationIndex, projection, tiles

    store_path = CACHE / f"scale-{images}"
    saved = Path(f"{store_path}.index-ddefault-rowcopy")
    qfile = CACHE / f"scale-{images}-q{n_queries}.npz"
    truths = sorted(CACHE.glob(f"scale-{images}-q{n_queries}-k*.npz"))
    if not (saved / "index.json").is_file() or not qfile.is_file() or not truths:
        raise SystemExit(f"run `benchmarks/search_scale.py --images {images} --queries {n_queries} --row-copy` "
                         f"first: it builds {saved}, {qfile} and the float64 truth")
    index = CorrelationIndex.open(saved)
    queries = np.load(qfile)["queries"]
    truth = np.load(truths[-1])
    parts, q64, const_q = fixed_parts(index, queries, repeats)
    n, dim = len(index.codes), index.select.dim
    level = index.level1
    cq, rho_q, slack_q, (rho1, slack1) = projection.codes(q64, index.basis, index.delta, prefix=level or index.basis.shape[1])
    first = (cq[:, :level].contiguous(), rho1, slack1, index.codes[:, :level], index.rho1, index.slack1) if level \
        else (cq, rho_q, slack_q, index.codes, index.rho, index.slack)
    store = index.reference
    brute = brute_on_slice(store, q64, min(4096, n)) * n / min(4096, n)
    out = {}
    for k in (5, 1):
        if truth["values"].shape[1] < k:
            continue
        tau = torch.from_numpy(truth["values"][:, k - 1] - 1e-9)  # the true k-th best, a hair below
        surv = torch.cat([bounds() >= tau.float()[:, None]
                          for _, _, _, bounds in tiles.bound_blocks(*first, index.constant, const_q, "cpu")], dim=1)
        if level:
            qi, ri = tiles.cascade_pairs(surv, tau, index, (cq, rho_q, slack_q))
        else:
            qi, ri = (x.numpy() for x in torch.nonzero(surv, as_tuple=True))
        del surv
        answer_rows = np.unique(truth["indices"][:, :k])
        pairs = set(zip(np.repeat(np.arange(len(queries)), k).tolist(), truth["indices"][:, :k].reshape(-1).tolist()))
        beyond = np.array([(a, b) not in pairs for a, b in zip(np.asarray(qi).tolist(), np.asarray(ri).tolist())],
                          dtype=bool)
        copy_rows = np.unique(np.asarray(ri)[beyond])
        copy_rows = copy_rows[np.argsort(index.row_copy.rows[copy_rows])]  # in the copy's order on disk

        def read(source, rows, batch):
            with source.reader(2) as reader:
                for _ in reader.stream([rows[a:a + batch] for a in range(0, len(rows), batch)], 3):
                    pass

        def timed_read(source, rows, batch):
            times = []
            for _ in range(repeats):
                dropped = drop_page_cache()
                t0 = time.perf_counter()
                read(source, rows, batch)
                times.append(time.perf_counter() - t0)
            return min(times), dropped
        copy_s, dropped = timed_read(index.row_copy, copy_rows, tiles.tile_rows(dim))
        store_s, _ = timed_read(store, answer_rows, 16)
        gb_copy, gb_store = len(copy_rows) * dim * 2 / 1e9, len(answer_rows) * dim * 4 / 1e9
        these = {**parts,
                 f"read the rows the bound leaves at the true k-th best: {len(copy_rows):,} float16 rows "
                 f"({gb_copy:.2f} GB, {gb_copy / copy_s:.2f} GB/s)": copy_s,
                 f"read the answer's {len(answer_rows):,} rows from the store ({gb_store:.2f} GB, "
                 f"{gb_store / store_s:.2f} GB/s)": store_s}
        searched = {}
        for method in ("pruned",):
            drop_page_cache()
            t0 = time.perf_counter()
            index.topk(queries, k=k, method=method)
            searched[method] = time.perf_counter() - t0
        out[f"k{k}"] = report(f"Workload (b), k = {k}: {len(queries)} x {n} x {dim} pixels on disk"
                              + ("" if dropped else " (page cache NOT dropped: not root)"), these, brute, searched)
        out[f"k{k}"].update(pairs_left=int(len(qi)), copy_rows=int(len(copy_rows)), answer_rows=int(len(answer_rows)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", action="store_true", help="also workload (b), from the cache of search_scale.py")
    ap.add_argument("--images", type=int, default=80_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"machine": bench.machine_info(), "a": workload_a()}
    if args.scale:
        result["b"] = workload_b(args.images, args.queries)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
