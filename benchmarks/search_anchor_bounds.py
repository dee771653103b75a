"""Would anchors tighten the projection bound enough to pay? (issue 16; a study, not built)

    .venv/bin/python benchmarks/search_anchor_bounds.py

Workload (a) of ``benchmarks/search.py`` (256 queries x 8,192 references of 4x64x64; the index's
d = 256 basis), with each query's true k-th best r as its threshold, the ideal case.  The built
bound is x.y <= Px.Py + ||x_r|| ||y_r|| (x_r = x - Px).  With an anchor a, a reference row whose
residual a_r is known, and beta = y_r.a_r / ||a_r||^2,

    x_r.y_r = beta x_r.a_r + x_r.(y_r - beta a_r) <= beta x_r.a_r + ||x_r|| ||y_r - beta a_r||

which is tighter where a_r explains much of y_r and x_r.a_r is known exactly.  Two sources of
anchors are measured (analysis in float32, not rigorous: it measures pruning power only):

1. *global anchors*: every s-th reference row, each reference taking the anchor that explains most
   of its residual; x.a must be evaluated at full size for every query (Q x N/s x D, 1/s of brute
   force, as a dense product);
2. *the query's own seeds* (its k + extra best by projected r, which the pruned search evaluates
   anyway, so free): each reference stores its nn best-explaining neighbours, and the anchor bound
   applies where one of them is a seed of the query.

Printed: the fraction of pairs left, of reference rows touched, and of the work of tiles of 64 rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  the workload of the search benchmark


def tile_work(mask: torch.Tensor, tile: int = 64) -> float:
    """Fraction of all pairs that tiles of ``tile`` rows evaluate for the surviving ``mask``."""
    nq, n = mask.shape
    nt = -(-n // tile)
    m = torch.zeros((nq, nt * tile), dtype=torch.bool)
    m[:, :n] = mask
    m = m.view(nq, nt, tile)
    q_any = m.any(2)
    work = 0
    for t in range(nt):
        qs = q_any[:, t]
        if qs.any():
            work += int(qs.sum()) * int(m[qs, t].any(0).sum())
    return work / (nq * n)


def line(name: str, surv: torch.Tensor) -> str:
    return (f"{name}: pairs {surv.float().mean():.4f}, rows {surv.any(0).float().mean():.3f}, "
            f"tile work {tile_work(surv):.4f}")


def main() -> None:
    from workbench.search import CorrelationIndex

    work = bench.build_workload(64, 256, 8192, 84, 4, 0)
    q, r = work["queries"], work["reference"]
    x = torch.from_numpy(bench.znorm(q, np.float32))
    y = torch.from_numpy(bench.znorm(r, np.float32))
    scores = x.double() @ y.double().T
    w = CorrelationIndex(r, precision="float32").basis
    xr, yr = x - (x @ w) @ w.T, y - (y @ w) @ w.T
    est = (x @ w) @ (y @ w).T
    rx, ry = xr.norm(dim=1), yr.norm(dim=1)
    b1 = est + rx[:, None] * ry[None, :]
    print(f"{bench.cpu_model()}; d = {w.shape[1]}; median ||x_r|| {rx.median():.3f}, ||y_r|| {ry.median():.3f}")
    taus = {k: torch.sort(scores, dim=1).values[:, -k].float()[:, None] for k in (5, 1)}
    for k, tau in taus.items():
        print(line(f"k = {k}, built bound", b1 >= tau))
        for s in (16, 8, 4):
            anchors = yr[::s]
            g = yr @ anchors.T
            an2 = anchors.norm(dim=1) ** 2
            explained = g**2 / an2[None, :]
            best = explained.argmax(dim=1)
            rows = torch.arange(len(y))
            beta = g[rows, best] / an2[best]
            e = (ry**2 - explained[rows, best]).clamp_min(0).sqrt()
            b2 = est + beta[None, :] * (xr @ anchors.T)[:, best] + rx[:, None] * e[None, :]
            print(line(f"  global anchors every {s} rows ({len(anchors)}; {1 / s:.3g} of brute force to evaluate), "
                       f"median ||y_r - beta a_r|| / ||y_r|| {(e / ry).median():.2f}", torch.minimum(b1, b2) >= tau))
    g = yr @ yr.T
    g.fill_diagonal_(0)
    explained = g**2 / (ry**2)[None, :]
    xr_y = xr @ yr.T
    for nn in (4, 16, 64):
        val, nb = torch.topk(explained, nn, dim=1)
        beta = torch.gather(g, 1, nb) / (ry**2)[nb]
        e = ((ry**2)[:, None] - val).clamp_min(0).sqrt()
        for k, tau in taus.items():
            for extra in (2, 20):
                seeds = torch.topk(est, k + extra, dim=1).indices
                is_seed = torch.zeros(est.shape, dtype=torch.bool)
                is_seed.scatter_(1, seeds, True)
                b = b1.clone()
                for j in range(nn):
                    a = nb[:, j]
                    cand = est + beta[None, :, j] * xr_y[:, a] + rx[:, None] * e[None, :, j]
                    b = torch.where(is_seed[:, a], torch.minimum(b, cand), b)
                print(line(f"  seeds as anchors, k = {k}, {k + extra} seeds, {nn} neighbours a row", b >= tau))


if __name__ == "__main__":
    main()
