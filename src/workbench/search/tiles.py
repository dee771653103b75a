"""The pruned search: projection bounds for every pair, then dense tiles of the survivors.

Bounds alone do not make a search fast: on brain slices the survivors of the novel queries touch
most reference rows, so a search that evaluates them pair by pair reads the whole reference at
gather speed (BENCHMARKS.md, issue 3).  Here survivors are evaluated as dense tiles:

1. **Bounds.** Every pair gets an upper bound on r from the index's codes
   (:mod:`workbench.search.projection`): one Q x N x d product.
2. **Seeds.** Each query's best-bounded reference lies in one tile (TILE consecutive rows of the
   index).  That whole tile is evaluated first, queries grouped by tile, so a query's k-th best
   lower bound tau comes from real values of its nearest slices (the neighbours of a slice in
   its volume sit in the same tile).  If a tile holds fewer than k images, tau stays -inf and
   nothing is pruned for that query: slower, never wrong.
3. **Tiles.** Every pair whose bound reaches tau survives.  For each tile of TILE rows, the
   queries with a survivor there and the rows with a survivor there form one dense float32
   product (float32 tier: slices of SCREEN_CHUNK pixels summed in float64, error at most
   :func:`~workbench.search.bounds.screen_error_bound`).  Rows are read only for these tiles,
   in index order, the next tile's rows read in the background (``prefetch``) when they come from
   disk.
4. **Rescore.** Pairs whose float32 interval reaches the k-th best lower end are rescored in
   float64 (:func:`~workbench.search.kernel.rescore`); the top k is the float64 brute-force top k.

Every pair of the true top k has r >= its query's true k-th best >= tau, so its bound reaches tau
and it is evaluated in step 2 or 3: the answer is exact.  Reference order matters (survivors of a
query must share tiles); store order (subject, then slice) groups them as well as k-means on the
codes did on brain phantoms (BENCHMARKS.md), so the index keeps store order.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import TooFewReferenceImages
from ..progress import tqdm
from . import projection
from .kernel import rescore
from .result import SearchResult, mark_constant_queries

#: reference rows per tile
TILE = 64
#: tiles evaluated first for each query (k > 1), to set its k-th best lower bound
SEED_TILES = 2
#: reference rows per bound block (bounds are held for all pairs: Q x N float32)
BOUND_ROWS = 16384
#: pixels per float32 partial product of a tile (the partials are summed in float32)
TIER_CHUNK = 1024


def tier_error_bound(dim: int) -> float:
    """Bound on |tile value - x.y| for unit x, y rounded to float32 (``tile_product``): input
    rounding 2u + u^2, each slice's float32 dot gamma_C ||x_c|| ||y_c|| (Cauchy-Schwarz over the
    slices: at most gamma_C (1 + u)^2 in all), and the float32 sum of the n_c partial products,
    gamma_{n_c} times their absolute sum."""
    chunks = max(1, -(-dim // TIER_CHUNK))
    g_c, g_n = projection.gamma(min(dim, TIER_CHUNK)), projection.gamma(chunks)
    u = projection.U32
    return (2 * u + u * u + (g_c + g_n * (1 + g_c)) * (1 + u) ** 2) * (1 + 1e-6) + 1e-9


def chunked(x32: torch.Tensor) -> torch.Tensor:
    """Queries (n, D) as (n_chunks, n, TIER_CHUNK), zero-padded: the layout ``tile_product`` gathers from."""
    n, dim = x32.shape
    chunks = -(-dim // TIER_CHUNK)
    pad = chunks * TIER_CHUNK - dim
    if pad:
        x32 = torch.nn.functional.pad(x32, (0, pad))
    return x32.view(n, chunks, TIER_CHUNK).transpose(0, 1).contiguous()


def tile_product(qc: torch.Tensor, qs: torch.Tensor, r32: torch.Tensor) -> torch.Tensor:
    """Float32 products of the queries ``qs`` (rows of the chunked layout ``qc``) with the rows
    ``r32`` (m, D): one batched product over the slices, summed in float32 (tier_error_bound)."""
    chunks = qc.shape[0]
    m, dim = r32.shape
    full = dim // TIER_CHUNK
    q = qc[:, qs]  # chunks x Qb x C
    out = torch.bmm(q[:full], r32[:, :full * TIER_CHUNK].view(m, full, TIER_CHUNK).permute(1, 2, 0)).sum(dim=0) \
        if full else torch.zeros((len(qs), m), dtype=torch.float32, device=qc.device)
    if full < chunks:  # the last, short slice
        rest = dim - full * TIER_CHUNK
        out += q[full, :, :rest] @ r32[:, full * TIER_CHUNK:].T
    return out


def upper_bound_matrix(q64, cq, rho_q, slack_q, ref, const_q, dev) -> torch.Tensor:
    """Q x N float32 upper bounds; constant queries and references get -inf."""
    nq, n = len(q64), len(ref.codes)
    ub = torch.empty((nq, n), dtype=torch.float32, device=dev)
    for a in range(0, n, BOUND_ROWS):
        b = min(a + BOUND_ROWS, n)
        ub[:, a:b] = projection.upper_bounds(cq, rho_q, slack_q, ref.codes[a:b].to(dev), ref.rho[a:b].to(dev),
                                             ref.slack[a:b].to(dev))
    if ref.constant.any():
        ub[:, torch.from_numpy(ref.constant).to(dev)] = -math.inf
    if const_q.any():
        ub[torch.from_numpy(const_q).to(dev)] = -math.inf
    return ub


def kth_lower(values: torch.Tensor, qi: torch.Tensor, nq: int, k: int) -> torch.Tensor:
    """Per query, the k-th largest of ``values`` over its pairs (-inf with fewer than k pairs)."""
    out = torch.full((nq,), -math.inf, dtype=torch.float64)
    if len(values) == 0:
        return out
    order = np.lexsort((-values.numpy(), qi.numpy()))
    qs = qi.numpy()[order]
    first = np.searchsorted(qs, np.arange(nq))
    last = np.searchsorted(qs, np.arange(nq), side="right")
    has = (last - first) >= k
    pick = order[first[has] + k - 1]
    out[torch.from_numpy(np.flatnonzero(has))] = values[torch.from_numpy(pick)]
    return out


def tiled_search(q64: torch.Tensor, const_q: np.ndarray, ref, reference, select, *, k: int, dev, tile: int = TILE,
                 progress: bool = False, stacklevel: int = 4, max_fraction: float | None = None) -> SearchResult | None:
    """Exact top-k by the four steps of the module docstring.

    ``ref`` carries the index's parts: ``basis``, ``delta``, ``codes``, ``rho``, ``slack``,
    ``constant`` (numpy bool) and ``rows32(positions)``, the float32 unit vectors of sorted
    reference positions.  ``max_fraction`` (``method="auto"``): return None, having spent only the
    bounds and the seed tiles, when the tiles would evaluate more than this fraction of all pairs.
    """
    nq, n = len(q64), len(ref.codes)
    n_valid = n - int(ref.constant.sum())
    if n_valid < k:
        raise TooFewReferenceImages(f"k={k} but only {n_valid} reference images are non-constant", k=k, available=n_valid)
    query_codes = projection.codes(q64.to(dev), ref.basis.to(dev), ref.delta)
    ub = upper_bound_matrix(q64, *query_codes, ref, const_q, dev)
    eps = tier_error_bound(select.dim)
    qc = chunked(q64.to(device=dev, dtype=torch.float32))
    live = torch.from_numpy(~const_q).to(dev)
    n_tiles = -(-n // tile)

    got_q, got_r, got_s = [], [], []  # evaluated pairs and their float32 values (kept if they may matter)
    evaluated = 0

    def evaluate(qs: torch.Tensor, rows: np.ndarray, r32: torch.Tensor, floor: torch.Tensor | None):
        nonlocal evaluated
        s = tile_product(qc, qs, r32)
        evaluated += s.numel()
        if floor is not None:  # keep what can still reach a k-th place: upper end >= the query's tau
            qq, rr = torch.nonzero(s + eps >= floor[qs][:, None], as_tuple=True)
        else:
            qq, rr = torch.nonzero(torch.ones_like(s, dtype=torch.bool), as_tuple=True)
        got_q.append(qs[qq].cpu())
        got_r.append(torch.from_numpy(rows)[rr.cpu()])
        got_s.append(s[qq, rr].double().cpu())

    # 2. seeds: the whole tile of each query's best-bounded reference (and, for k > 1, the tile of
    # its next best tile bound: a slice's k nearest neighbours may straddle a tile's edge)
    pad = n_tiles * tile - n
    tile_max = (torch.nn.functional.pad(ub, (0, pad), value=-math.inf) if pad else ub).view(nq, n_tiles, tile).amax(2)
    seeds = torch.topk(tile_max, min(SEED_TILES if k > 1 else 1, n_tiles), dim=1).indices  # nq x s
    seeds[~live] = -1
    seed_tiles = torch.unique(seeds[live]).cpu().numpy()
    for t in seed_tiles:
        rows = np.arange(t * tile, min((t + 1) * tile, n))
        rows = rows[~ref.constant[rows]]
        qs = torch.nonzero((seeds == int(t)).any(dim=1), as_tuple=True)[0]
        evaluate(qs, rows, ref.rows32(rows).to(dev), None)
    tau = kth_lower(torch.cat(got_s) - eps, torch.cat(got_q), nq, k) if got_s else torch.full((nq,), -math.inf,
                                                                                          dtype=torch.float64)
    tau_dev = tau.to(dev)

    # 3. survivors, as dense tiles (the seed tiles are done)
    surv = (ub >= tau_dev.float()[:, None]) & (ub > -math.inf)  # constant images are never matched
    del ub
    if pad:
        surv = torch.nn.functional.pad(surv, (0, pad))
    surv = surv.view(nq, n_tiles, tile)
    q_live = torch.nonzero(live, as_tuple=True)[0]
    for j in range(seeds.shape[1]):
        surv[q_live, seeds[q_live, j]] = False
    q_any = surv.any(dim=2)  # nq x n_tiles
    todo = torch.nonzero(q_any.any(dim=0), as_tuple=True)[0].cpu().numpy()
    r_any = surv.any(dim=0).cpu().numpy()  # n_tiles x tile
    work = (q_any.sum(dim=0).double().cpu() * torch.from_numpy(r_any.sum(axis=1)).double()).sum().item()
    if max_fraction is not None and (work + evaluated) > max_fraction * nq * n:
        return None

    def tile_rows(t):
        rows = t * tile + np.flatnonzero(r_any[t])
        return rows[rows < n]

    bar = tqdm(total=len(todo), desc="searching tiles", unit="tile", disable=not progress)
    prefetch = getattr(ref, "from_disk", False)
    pool = ThreadPoolExecutor(1) if prefetch and len(todo) > 1 else None
    try:
        pending = pool.submit(ref.rows32, tile_rows(todo[0])) if pool is not None else None
        for j, t in enumerate(todo):
            rows = tile_rows(t)
            if pool is not None:
                r32 = pending.result()
                if j + 1 < len(todo):
                    pending = pool.submit(ref.rows32, tile_rows(todo[j + 1]))
            else:
                r32 = ref.rows32(rows)
            qs = torch.nonzero(q_any[:, t], as_tuple=True)[0]
            evaluate(qs, rows, r32.to(dev), tau_dev)
            bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()

    # 4. rescore the pairs whose interval reaches the k-th best lower end
    qi, ri, si = torch.cat(got_q), torch.cat(got_r), torch.cat(got_s)
    level = kth_lower(si - eps, qi, nq, k)
    keep = (si + eps) >= level[qi]
    qi, ri = qi[keep].numpy(), ri[keep].numpy()
    values, indices = rescore(q64, reference, select, qi, ri, k, nq, getattr(ref, "stats", None))
    mark_constant_queries(values, indices, const_q, stacklevel=stacklevel)
    n_pairs = nq * n
    stats = {"method": "pruned", "basis": ref.basis_name, "basis_dim": int(ref.basis.shape[1]), "tile": tile,
             "precision": "float32", "device": str(dev), "error_bound": eps, "bound": "uniform", "pixels": select.dim,
             "screened_pairs": evaluated, "full_fraction": evaluated / max(n_pairs, 1),
             "tiles_evaluated": int(len(todo) + len(seed_tiles)), "candidates_per_query": len(qi) / max(nq, 1)}
    return SearchResult(values, indices, const_q, np.flatnonzero(ref.constant), pairs=n_pairs, rescored=len(qi),
                        stats=stats)

