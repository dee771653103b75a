"""Exact search at scale (issue 16, workload b): synthetic-like queries against a large store on disk.

    .venv/bin/python benchmarks/search_scale.py                          # 1,000 x 80,000 x 4x128x128 (21 GB store)
    .venv/bin/python benchmarks/search_scale.py --images 8192 --queries 256   # a small rehearsal
    .venv/bin/python benchmarks/search_scale.py --json runs/bench-scale.json
    .venv/bin/python benchmarks/search_scale.py --row-copy   # the index with a float16 row copy (+10.5 GB on disk)
    .venv/bin/python benchmarks/search_scale.py --row-copy --row-copy-format int8   # an int8 copy (+5.3 GB)

The store (``runs/bench-cache/scale-<N>``, git-ignored, built once): N images of 4 x 128 x 128
float32 (256 KiB each; N = 80,000 by default: 21.0 GB, more than the machine's page cache can
keep beside everything else), the training slices of the 128 x 128 brain phantom store of
``benchmarks/search.py`` in seeded rounds: the originals, then rounds of left-right flips, rolls
of up to 8 px and per-channel intensity U(0.85, 1.15), each round of distinct images, and each
round's subject names distinct.

Queries (synthetic-like): 20 % exact copies of store images, 40 % near-copies (per-channel
intensity U(0.95, 1.05) plus noise of sd 0.02) and 40 % novel slices of the 4 held-out subjects.

What runs, in a fresh child process so that its peak resident memory (VmHWM) is the search's:

1. ``CorrelationIndex(store, keep_vectors=False)``: basis, codes and bounds in memory; full rows
   stay on disk.  Timed (prepare).
2. ``index.topk(queries, k, method="pruned")`` and ``method="auto"``: timed, with the fraction of
   the full-size work evaluated, rows read, and the seconds of each stage.  The page cache is
   dropped before each search where the process may (root): the rows come from the disk, as they
   would from a BraTS-size store, whatever part of the store or copy this machine's memory holds.
3. Ground truth: a float64 torch brute force streamed over the store (cached by store id).
4. Baselines on a slice of the references (the first ``--slice`` images, in memory): torch
   float32 brute force and FAISS IndexFlatIP, extrapolated to all N (their time to read the
   store is not counted, which favours them).
5. A projection to 1,000 x 100,000 x 5x256x256 (BraTS): brute force scales with Q N D; each stage
   of the pruned search with what it is proportional to (stated in the output).

Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import out_of_core  # noqa: E402  the store builder and the memory probe are shared
from out_of_core import truth_f64, vm_hwm_gib  # noqa: E402

CACHE = Path("runs/bench-cache")
SIZE = 128


def source_store():
    import search as bench  # the phantom store of the search benchmark (cached there)

    return bench.phantom_store(SIZE, 84, 4, 0)


def build_store(path: Path, n_images: int, seed: int = 0) -> None:
    """The store of the module docstring: the out-of-core benchmark's builder at scale 1."""
    out_of_core.build_store(path, n_images, seed, source=source_store(), scale=1, benchmark="search_scale",
                            batch=512)


def make_queries(store_path: Path, n_queries: int, seed: int = 0) -> dict:
    from workbench.data.store import SliceStore

    store = SliceStore.open(store_path)
    rng = np.random.default_rng([seed, 2])
    n_copy = n_queries // 5
    n_near = 2 * n_queries // 5
    n_novel = n_queries - n_copy - n_near
    src = np.sort(rng.choice(len(store), n_copy + n_near, replace=False))
    copy_src, near_src = src[:n_copy], src[n_copy:]
    copies = store.read(copy_src)
    near = store.read(near_src) * rng.uniform(0.95, 1.05, size=(n_near, 4, 1, 1)).astype(np.float32)
    near += rng.normal(0, 0.02, size=near.shape).astype(np.float32)
    np.clip(near, 0, 1, out=near)
    test = source_store().where(split="test")
    if len(test) < n_novel:
        raise SystemExit(f"only {len(test)} held-out slices for {n_novel} novel queries: ask for fewer queries")
    novel = test.read(np.sort(rng.choice(len(test), n_novel, replace=False)))
    queries = np.ascontiguousarray(np.concatenate([copies, near, novel]), dtype=np.float32)
    return {"queries": queries, "copy_src": copy_src, "near_src": near_src,
            "counts": {"copies": n_copy, "near_copies": n_near, "novel": n_novel}}


def baselines(store, queries: np.ndarray, n_slice: int, k: int) -> dict:
    """torch float32 and FAISS flat on the first ``n_slice`` references, in memory: seconds of the
    search against the slice (``*_s``, what scales with the references) and of normalising the
    queries (``query_prep_s``, once a search whatever the references: until 2026-12-05 it was timed
    inside the search and so extrapolated with it, which overstated the baselines at (b) by ~10 %)."""
    import torch

    def unit(x):
        x = x.reshape(len(x), -1).astype(np.float32)
        x -= x.mean(1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    ref = unit(store.read(np.arange(n_slice)))
    out = {"query_prep_s": np.inf}
    for _ in range(2):
        t0 = time.perf_counter()
        q32 = unit(queries)
        out["query_prep_s"] = min(out["query_prep_s"], time.perf_counter() - t0)
    r32, q = torch.from_numpy(ref), torch.from_numpy(q32)
    torch.topk(q[:8] @ r32.T, k, dim=1)
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        torch.topk(q @ r32.T, k, dim=1)
        best = min(best, time.perf_counter() - t0)
    out["torch_float32_s"] = best
    import search as bench  # noqa: PLC0415  faiss with its OpenBLAS told this CPU's kernel

    faiss = bench.faiss_module()
    if faiss is None:
        out["faiss_s"] = None
        return out
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref)
    index.search(q32[:8], k)
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        index.search(q32, k)
        best = min(best, time.perf_counter() - t0)
    out["faiss_s"] = best
    out["faiss_version"] = faiss.__version__
    out["faiss_blas_core"] = bench.faiss_blas_core()
    return out


def drop_page_cache() -> bool:
    """Empty the page cache where this process may (root): the rows then come from the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def child(args) -> None:
    import torch

    from workbench.data.store import SliceStore
    from workbench.search import CorrelationIndex

    torch.set_num_threads(os.cpu_count() or 1)
    import search as bench  # noqa: E402  beside this script

    bench.probe_afresh()  # auto's first search times the probe, as in every earlier run
    store = SliceStore.open(args.store)
    work = np.load(args.query_file)
    queries = work["queries"]
    out = {"rss_start_gib": vm_hwm_gib()}
    int8 = args.row_copy_format == "int8"
    saved = Path(args.store + f".index-d{args.basis_dim or 'default'}"
                 + (("-rowcopy" + ("-int8" if int8 else "")) if args.row_copy else ""))
    copy_path = Path(args.store + f".rows{8 if int8 else 16}-d{args.basis_dim or 'default'}.npy")
    t0 = time.perf_counter()
    if args.reuse_index and (saved / "index.json").is_file():
        index = CorrelationIndex.open(saved)
        out["opened_s"] = time.perf_counter() - t0
        out["prepare_s"] = json.loads((saved / "prepare.json").read_text())["prepare_s"]
    else:
        if args.row_copy:
            copy_path.unlink(missing_ok=True)  # rebuilt with the index
        index = CorrelationIndex(store, keep_vectors=False, basis_dim=args.basis_dim,
                                 row_copy=copy_path if args.row_copy else None, row_copy_format=args.row_copy_format)
        out["prepare_s"] = time.perf_counter() - t0
        index.save(saved, overwrite=True)  # for --reuse-index
        (saved / "prepare.json").write_text(json.dumps({"prepare_s": out["prepare_s"]}))
    out["rss_after_prepare_gib"] = vm_hwm_gib()
    out["index"] = repr(index)
    runs = {}
    for k in args.k:
        for method in ("pruned", "auto"):
            out["page_cache_dropped"] = drop_page_cache()
            t0 = time.perf_counter()
            res = index.topk(queries, k=k, method=method)
            sec = time.perf_counter() - t0
            runs[f"{method}_k{k}"] = {
                "search_s": sec, "indices": res.indices.tolist(), "values": res.values.tolist(),
                "stats": {key: v for key, v in res.stats.items() if isinstance(v, (int, float, str, dict))}}
            print(f"  {method} k={k}: {sec:.2f} s, {res.stats.get('full_fraction', 1):.4f} of the work", flush=True)
    out["runs"] = runs
    out["rss_peak_gib"] = vm_hwm_gib()
    Path(args.out).write_text(json.dumps(out))


def main() -> None:
    from workbench.search.rowcopy import FORMATS as ROW_COPY_FORMATS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=80_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--basis-dim", type=int, default=None, help="principal directions (default: the index's)")
    ap.add_argument("--slice", type=int, default=4096, help="references the baselines are timed on")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse-index", action="store_true",
                    help="open the index saved by an earlier run (its build time is reported from then)")
    ap.add_argument("--row-copy", action="store_true",
                    help="build the index with a float16 copy of the unit rows beside the store (row_copy=), "
                         "which the seeds and tiles read in place of the store")
    ap.add_argument("--row-copy-format", choices=ROW_COPY_FORMATS, default="float16",
                    help="the row copy's values (with --row-copy): float16, or int8 in blocks with a scale each")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--query-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from workbench.data.store import SliceStore

    path = CACHE / f"scale-{args.images}"
    if not (path / "store.json").is_file():
        print(f"building {path} ({args.images:,} images of 4x{SIZE}x{SIZE})", flush=True)
        build_store(path, args.images)
    store = SliceStore.open(path)
    gb = len(store) * int(np.prod(store.shape[1:])) * 4 / 1e9
    work = make_queries(path, args.queries)
    qfile = CACHE / f"scale-{args.images}-q{args.queries}.npz"
    np.savez(qfile, queries=work["queries"])
    kmax = max(args.k)

    truth_file = CACHE / f"scale-{args.images}-q{args.queries}-k{kmax}-{store.meta['id']}.npz"
    if truth_file.is_file():
        t = np.load(truth_file)
        tv, ti, truth_s = t["values"], t["indices"], float(t["seconds"])
    else:
        print("float64 ground truth (streamed torch brute force, cached)...", flush=True)
        t0 = time.perf_counter()
        tv, ti = truth_f64(store, work["queries"], kmax)
        truth_s = time.perf_counter() - t0
        np.savez(truth_file, values=tv, indices=ti, seconds=truth_s)

    print("baselines on a slice...", flush=True)
    base = baselines(store, work["queries"], min(args.slice, len(store)), kmax)

    print("index and search in a fresh process...", flush=True)
    out_file = CACHE / f"scale-{args.images}-child.json"
    cmd = [sys.executable, __file__, "--child", "--store", str(path), "--query-file", str(qfile), "--out", str(out_file),
           "--k", *map(str, args.k)]
    cmd += ["--basis-dim", str(args.basis_dim)] if args.basis_dim else []
    cmd += ["--reuse-index"] if args.reuse_index else []
    cmd += ["--row-copy", "--row-copy-format", args.row_copy_format] if args.row_copy else []
    subprocess.run(cmd, check=True)
    res = json.loads(out_file.read_text())

    nq, n = len(work["queries"]), len(store)
    dim = 4 * SIZE * SIZE
    scale = n / min(args.slice, n)
    report = {"store": str(path), "images": n, "store_gb": gb, "queries": nq, "query_mix": work["counts"],
              "pixels": dim, "truth_s": truth_s, "prepare_s": res["prepare_s"], "index": res["index"],
              "row_copy": bool(args.row_copy), "row_copy_format": args.row_copy_format if args.row_copy else None,
              "page_cache_dropped": res.get("page_cache_dropped"),
              "rss_peak_gib": res["rss_peak_gib"], "rss_after_prepare_gib": res["rss_after_prepare_gib"],
              # each baseline: its search of the slice scaled to all references, plus normalising the queries once
              "torch_float32_s": base["torch_float32_s"] * scale + base["query_prep_s"],
              "faiss_s": base["faiss_s"] and base["faiss_s"] * scale + base["query_prep_s"],
              "faiss_blas_core": base.get("faiss_blas_core"),
              "baseline_query_prep_s": base["query_prep_s"],
              "baseline_slice": min(args.slice, n), "runs": {}}
    copies = np.arange(work["counts"]["copies"])
    for name, run in res["runs"].items():
        k = int(name.split("_k")[1])
        idx, val = np.asarray(run["indices"]), np.asarray(run["values"])
        agree = float(np.mean((idx == ti[:, :k]).all(axis=1)))
        entry = {"search_s": run["search_s"], "pairs_per_s": nq * n / run["search_s"],
                 "fraction": run["stats"].get("full_fraction"), "rows_read": run["stats"].get("rows_read"),
                 "seconds": run["stats"].get("seconds"), "method": run["stats"].get("method"),
                 "auto": run["stats"].get("auto"), "agree_topk_pct": 100 * agree,
                 "max_abs_dr": float(np.max(np.abs(val - tv[:, :k]))),
                 "copies_found_top1_pct": 100 * float(np.mean(idx[copies, 0] == work["copy_src"])),
                 "vs_torch": report["torch_float32_s"] / run["search_s"],
                 "vs_faiss": report["faiss_s"] / run["search_s"] if report["faiss_s"] else None}
        report["runs"][name] = entry
    report["projection"] = project(report, nq, n, dim)
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


def project(report: dict, nq: int, n: int, dim: int) -> dict:
    """Scale to 1,000 x 100,000 x 5x256x256: brute force by Q N D; each pruned stage by what it
    costs in proportion to (codes, seeds, rescore: Q D; bounds: Q N; tiles: Q N D at the same
    fraction), the rest as measured."""
    q2, n2, d2 = 1000, 100_000, 5 * 256 * 256
    f_qd, f_qn, f_qnd = (q2 * d2) / (nq * dim), (q2 * n2) / (nq * n), (q2 * n2 * d2) / (nq * n * dim)
    prep = report.get("baseline_query_prep_s", 0.0)  # the queries' normalisation scales with Q D only
    brute = (report["torch_float32_s"] - prep) * f_qnd + prep * f_qd
    out = {"torch_float32_s": brute}
    for name, run in report["runs"].items():
        sec = run.get("seconds") or {}
        if not sec:
            continue
        stage = {"codes_s": f_qd, "bounds_s": f_qn, "seeds_s": f_qd, "survivors_s": f_qn, "tiles_s": f_qnd,
                 "rescore_s": f_qd}
        total = sum(sec.get(key, 0) * f for key, f in stage.items())
        total += (run["search_s"] - sum(sec.values())) * f_qd  # query normalisation and the rest
        out[name] = {"search_s": total, "speedup_vs_torch": brute / total}
    return out


if __name__ == "__main__":
    main()
