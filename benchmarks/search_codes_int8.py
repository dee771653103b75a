"""The query codes by exact int8 products (AMX / VNNI) against the built float32 codes (issue 16).

    .venv/bin/python benchmarks/search_codes_int8.py            # workload (a), in memory (~1 min)
    .venv/bin/python benchmarks/search_codes_int8.py --scale    # and (b): the saved index and queries
                                                                # of `search_scale.py --row-copy`

A lever measured, not built.  Integer products are exact, and on CPUs with AMX ``torch._int_mm``
(int8 x int8 -> int32) runs several times faster than a float32 product, so the codes c = W^T x,
the largest product of the pruned search (Q x D x d, 0.7-1.0 s at (b)), could be computed from
integer digits with a rigorous error bound and no slicing for rounding:

- each query row scaled by max|x| / (127 * 128) and rounded to an integer X = 128 H + L (two int8
  digits), its error e_x = x - s_x X measured in float64;
- each basis column likewise in three digits (16384 H + 128 M + L: its error, about 1e-6 a
  column, is what float32 rounding leaves);
- the six digit products in int32 (each term at most 127^2, so up to 131,072 pixels a product),
  combined in int64, exact, then scaled in float64.

The bound would be ||W^T e_x|| <= sqrt(1 + delta) ||e_x|| plus the basis digits' error: tighter
than the float32 codes' worst case.  What this measures: the time of the split and of the six
products against :func:`workbench.search.projection.codes`, and each one's actual error against
the float64 product.  Fewer digits (four products) leave the basis' error near 4e-3 a row, far
above the codes' slack (~5e-4); six products take as long as the float32 codes do.
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
import search as bench  # noqa: E402  workload (a) and the machine's description

CACHE = Path("runs/bench-cache")


def split_basis(w: torch.Tensor):
    """Three int8 digits per entry, a scale per column; the digits' error norm per column."""
    w64 = w.double()
    s = w64.abs().amax(dim=0).clamp_min(1e-300) / (127 * 16384)
    x = torch.round(w64 / s)
    h = torch.round(x / 16384)
    r = x - 16384 * h
    m = torch.round(r / 128)
    lo = r - 128 * m
    return s, h.to(torch.int8), m.to(torch.int8), lo.to(torch.int8), (w64 - s * x).norm(dim=0)


def split_rows(x: torch.Tensor):
    """Two int8 digits per entry, a scale per row; the digits' error norm per row."""
    s = x.abs().amax(dim=1) / (127 * 128)
    s = torch.where(s > 0, s, 1.0)
    q = torch.round(x / s[:, None])
    h = torch.round(q / 128)
    return s, h.to(torch.int8), (q - 128 * h).to(torch.int8), (x - s[:, None] * q).norm(dim=1)


def int_codes(x: torch.Tensor, basis_digits) -> tuple[torch.Tensor, dict, torch.Tensor]:
    sw, hw, mw, lw, _ = basis_digits
    t0 = time.perf_counter()
    sx, hx, lx, ex = split_rows(x)
    t1 = time.perf_counter()
    total = torch.zeros((len(x), hw.shape[1]), dtype=torch.int64)
    for a in range(0, x.shape[1], 65536):  # int32 holds 65,536 terms of at most 127^2 each
        b = min(a + 65536, x.shape[1])
        for dx, fx in ((hx[:, a:b].contiguous(), 128), (lx[:, a:b].contiguous(), 1)):
            for dw, fw in ((hw[a:b], 16384), (mw[a:b], 128), (lw[a:b], 1)):
                total += torch._int_mm(dx, dw).long() * (fx * fw)
    t2 = time.perf_counter()
    c = total.double() * sx[:, None] * sw[None, :]
    return c, {"split_s": t1 - t0, "products_s": t2 - t1, "scale_s": time.perf_counter() - t2}, ex


def measure(name: str, q64: torch.Tensor, basis: torch.Tensor, delta: float, repeats: int) -> dict:
    from workbench.search import projection
    digits = split_basis(basis)
    exact = q64[:200] @ basis.double()
    out = {"workload": name, "queries": int(len(q64)), "pixels": int(q64.shape[1]), "d": int(basis.shape[1])}
    f32, i8 = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        c32, _, slack = projection.codes(q64, basis, delta)
        f32.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c8, parts, ex = int_codes(q64, digits)
        i8.append((time.perf_counter() - t0, parts))
    best8 = min(i8, key=lambda t: t[0])
    out.update(float32_codes_s=min(f32), int8_codes_s=best8[0], **{f"int8_{k}": v for k, v in best8[1].items()},
               float32_error=float((c32[:200].double() - exact).norm(dim=1).max()),
               int8_error=float((c8[:200] - exact).norm(dim=1).max()),
               float32_slack=float(slack.max()),
               int8_bound=float(math.sqrt(1 + delta) * ex.max() + digits[4].norm()))
    # the raw speed of the units: one 1,000 x 4,096 x 1,024 product each way
    a = torch.randint(-127, 128, (1000, 4096), dtype=torch.int8)
    b = torch.randint(-127, 128, (4096, 1024), dtype=torch.int8)
    af, bf, ab, bb = a.float(), b.float(), a.bfloat16(), b.bfloat16()
    for label, fn in (("int8", lambda: torch._int_mm(a, b)), ("float32", lambda: af @ bf), ("bf16", lambda: ab @ bb)):
        fn()
        out[f"{label}_tops"] = 2 * 1000 * 4096 * 1024 / min(_timed(fn) for _ in range(5)) / 1e12
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", action="store_true", help="also workload (b), from the cache of search_scale.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from workbench.search import CorrelationIndex
    from workbench.search.normalise import prepare_queries
    results = {"machine": bench.machine_info(), "runs": []}
    work = bench.build_workload(64, 256, 8192, 84, 4, 0)
    index = CorrelationIndex(work["reference"], precision="float32")
    q64, _ = prepare_queries(work["queries"], index.select)
    results["runs"].append(measure("a", q64, index.basis, index.delta, args.repeats))
    print(json.dumps(results["runs"][-1], indent=1), flush=True)
    if args.scale:
        saved = CACHE / "scale-80000.index-ddefault-rowcopy"
        if not saved.exists():
            sys.exit(f"{saved}: not found; run benchmarks/search_scale.py --row-copy first")
        index = CorrelationIndex.open(saved)
        queries = np.load(CACHE / "scale-80000-q1000.npz")["queries"]
        q64, _ = prepare_queries(queries, index.select)
        results["runs"].append(measure("b", q64, index.basis, index.delta, args.repeats))
        print(json.dumps(results["runs"][-1], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
