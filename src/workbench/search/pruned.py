"""Pruning with proven bounds: block means give an upper bound on r for every pair at 1/b^2 cost.

For z-normalised unit vectors x, y and an orthogonal projection P,

    x.y = Px.Py + (x - Px).(y - Py) <= Px.Py + ||x - Px|| ||y - Py||        (Cauchy-Schwarz)

P here averages the selected pixels of each b x b block of each channel (the mask is allowed:
a block averages the pixels of it that are selected), which is an orthogonal projection.  In
coordinates c_j = (sum of x over block j) / sqrt(n_j), Px.Py = c(x).c(y), and
||x - Px||^2 = 1 - ||c(x)||^2.  The coarse coordinates and residual norms are computed in float64
and stored in float32 / float64; the float32 coarse product over m coordinates is off by at most
gamma_m + 2u (u = 2**-24), which is added to the bound, so the bound is never below the true r.

A query's k-th best r is at least tau, the k-th best exact r among the k pairs with the
highest bound.  Every pair whose bound is below tau is pruned; the others go to the full-size
screen and exact rescore, whose answer is therefore the exact top k.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .bounds import U32


def block_ids(selector, image_shape, block: int) -> tuple[np.ndarray, int]:
    """Coarse block id of every selected pixel (channel, row // b, col // b), and their count."""
    c, h, w = image_shape
    n_ch = len(selector.channels) if selector.channels else c
    hb, wb = -(-h // block), -(-w // block)
    ch = np.arange(n_ch)[:, None, None]
    rr = (np.arange(h) // block)[None, :, None]
    cc = (np.arange(w) // block)[None, None, :]
    ids = (ch * hb * wb + rr * wb + cc).reshape(-1)
    if selector.mask is not None:
        ids = ids[selector.mask]
    uniq, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int64), len(uniq)


def coarse(x64: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse coordinates (float32) and residual norms (float64, rounded up) of unit vectors."""
    sums = torch.zeros((x64.shape[0], m), dtype=torch.float64, device=x64.device)
    sums.index_add_(1, ids, x64)
    c = sums / counts.sqrt()
    resid = (1.0 - (c * c).sum(dim=1)).clamp_min(0).sqrt()
    resid = resid * (1 + 1e-9) + 1e-9  # round up: the bound must not fall below the true r
    return c.to(torch.float32), resid


def coarse_error_bound(m: int) -> float:
    """Bound on the float32 coarse product's error for coordinates of norm <= 1."""
    n = max(m, 1)
    return n * U32 / (1 - n * U32) + 4 * U32 + 1e-9


def upper_bounds(cq: torch.Tensor, rq: torch.Tensor, cr: torch.Tensor, rr: torch.Tensor, m: int) -> torch.Tensor:
    """Upper bound on r for every (query, reference) pair: Q x N, float64."""
    return (cq @ cr.T).double() + rq[:, None] * rr[None, :] + coarse_error_bound(m)


def prune(bounds: torch.Tensor, exact_of, k: int, constant_ref: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Survivor mask (Q x N) and the threshold tau per query.

    ``exact_of(qi, ri)`` returns exact r for pairs; the k pairs with the highest bound per query
    give tau, a lower bound on the true k-th best r.
    """
    b = bounds.clone()
    if len(constant_ref):
        b[:, torch.from_numpy(constant_ref)] = -math.inf
    top = torch.topk(b, k, dim=1).indices
    qi = np.repeat(np.arange(b.shape[0]), k)
    ri = top.reshape(-1).cpu().numpy()
    exact = exact_of(qi, ri).reshape(b.shape[0], k)
    tau = exact.min(axis=1)
    survivors = b >= torch.from_numpy(tau).to(b.device)[:, None]
    return survivors, tau
