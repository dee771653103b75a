"""The pruned search on a GPU (issue 16, item 6): one prepared script for a session lent a device.

    .venv/bin/python benchmarks/search_gpu.py --json runs/bench-search-gpu.json          # CUDA
    .venv/bin/python benchmarks/search_gpu.py --device cpu --quick                       # a rehearsal here

Measures, on the device:

- the matmul peak in float32 (TF32 off, as the search keeps it) and bf16, n x n @ n x n;
- workload (a) of ``benchmarks/search.py`` (256 queries x 8,192 references of 4x64x64; phantom
  data generated on first use, about a minute on 16 cores): torch float32 brute force on the
  device, and our ``CorrelationIndex`` brute, pruned and auto at k = 5 and k = 1 (float32 and, on
  CUDA, bf16 copies: ``precision="auto"`` picks bf16 there), with agreement with the float64 truth
  computed on the CPU; "pruned-sampled" allows the sampled tiles (``tiles.pair_product``) on the
  device, which ``tiles.SPARSE_DEVICES`` keeps to the CPU until measured there;
- every time after ``torch.cuda.synchronize()``; best of three.

It should finish within a few minutes on one GPU.  Figures go to BENCHMARKS.md with the device's
name.  Nothing here is run by the tests.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  the workload and the float64 truth of the CPU benchmark


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, dev, repeats: int = 3):
    fn()  # warm-up
    sync(dev)
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    return out, best


def peak(dtype, n: int, dev) -> float:
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    _, sec = best_of(lambda: a @ b, dev)
    return 2 * n**3 / sec / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="32 queries x 1,024 references of 6 subjects")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu for a rehearsal")
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # the peak in IEEE float32, as the search keeps it
    bench.probe_afresh()  # auto's brute probe timed on this device, not read from a cache
    nq, nr, subjects, test, n_peak = (32, 1024, 6, 2, 512) if args.quick else (256, 8192, 84, 4, 8192)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else bench.cpu_model(),
           "torch": torch.__version__,
           "peak_fp32_gflops": peak(torch.float32, n_peak, dev)}
    if dev.type == "cuda":  # bf16 on a CPU without AMX takes minutes: measured by benchmarks/search.py instead
        out["peak_bf16_gflops"] = peak(torch.bfloat16, n_peak, dev)
    work = bench.build_workload(64, nq, nr, subjects, test, 0)
    q, r = work["queries"], work["reference"]
    flops = 2.0 * nq * nr * q[0].size
    ref32 = torch.from_numpy(bench.znorm(r, np.float32)).to(dev)
    rows = []
    for k in (5, 1):
        tv, ti = bench.topk_rows(bench.znorm(q, np.float64) @ bench.znorm(r, np.float64).T, k)

        def brute():
            s = torch.from_numpy(bench.znorm(q, np.float32)).to(dev) @ ref32.T
            return torch.topk(s, k, dim=1)

        res, sec = best_of(brute, dev)
        rows.append({"method": "torch float32 brute", "k": k, "search_s": sec, "gflops": flops / sec / 1e9,
                     "topk_agree_pct": 100 * float((res.indices.cpu().numpy() == ti).all(axis=1).mean())})
        from workbench.search import CorrelationIndex, tiles

        # both copies on CUDA: precision="auto" picks bf16 there, not yet measured against float32
        for precision in ("float32", "bf16") if dev.type == "cuda" else ("float32",):
            t0 = time.perf_counter()
            index = CorrelationIndex(r, device=str(dev), precision=precision)
            prep = time.perf_counter() - t0
            for method in ("brute", "pruned", "pruned-sampled", "auto"):
                # pruned-sampled: sampled tiles allowed on this device too (tiles.SPARSE_DEVICES
                # keeps them to the CPU until this row shows whether they pay on CUDA)
                sampled = tiles.SPARSE_DEVICES
                if method == "pruned-sampled":
                    tiles.SPARSE_DEVICES = tuple(set(sampled) | {dev.type})
                try:
                    res, sec = best_of(lambda: index.topk(q, k=k, method=method.split("-")[0]), dev)
                except RuntimeError as err:  # sampled_addmm on this device untried: record, go on
                    if method != "pruned-sampled":
                        raise
                    rows.append({"method": f"CorrelationIndex {method}, {precision}", "k": k, "error": str(err)})
                    continue
                finally:
                    tiles.SPARSE_DEVICES = sampled
                rows.append({"method": f"CorrelationIndex {method}, {precision}", "k": k, "prepare_s": prep,
                             "search_s": sec, "gflops_effective": flops / sec / 1e9, "ran": res.stats.get("method"),
                             "fraction": res.stats.get("full_fraction"), "seconds": res.stats.get("seconds"),
                             "topk_agree_pct": 100 * float((res.indices == ti).all(axis=1).mean()),
                             "max_abs_dr": float(np.abs(res.values - tv).max())})
            del index
    out["rows"] = rows
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
