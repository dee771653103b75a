"""The pruned search's tiles: their plans, and the float32 products that evaluate them.

A tile is one product of the search's step 3 (:mod:`workbench.search.pruned`): the queries with a
surviving pair among a run of neighbouring reference rows, and those rows.  Here: how many rows a
tile holds (:func:`tile_rows`), the plans that cut the survivors into tiles (:func:`tile_plan`,
:func:`pair_plan`; the cascade's second-level bounds pair by pair, :func:`cascade_pairs`), the
first-level bounds and seeds a block of references at a time (:func:`seeds_and_bounds`), the
products (a dense tile, :func:`tile_product`; only a tile's surviving pairs, a sampled product,
:func:`pair_product`) with their rigorous error bounds (:func:`tier_error_bound`,
:func:`raw_row_error`), and ``method="auto"``'s sample of a plan (:func:`split_sample`,
:func:`predict_tiles`).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from . import projection
from .bounds import NORMALISE_F32
from .kernel import mask_pairs
from .rowcopy import widen

#: reference rows per tile: the fewest (:func:`tile_rows`)
TILE = 64
#: the most rows per tile, and the bytes of float32 rows a tile may hold (:func:`tile_rows`).
#: Larger tiles read each query once for more rows and cost fewer plans and products, and the
#: sampled tiles evaluate no more pairs for it: at (b) (rows of 256 KB) tiles of 64 / 128 / 256 /
#: 512 / 1,024 rows took 8.9 / 8.6 / 7.9 / 7.3 / 7.8 s (k = 5), at (a) (64 KB) 0.146 / 0.137 /
#: 0.128 / 0.122 s (BENCHMARKS.md, issue 16 item 14).  The bytes keep a tile of BraTS slices
#: (1.3 MB each) at 64 rows: its read buffer stays near 100 MB.
TILE_MAX = 512
TILE_BYTES = 128 * 2**20


def tile_rows(dim: int) -> int:
    """Rows per tile for images of ``dim`` pixels: the largest power of two from TILE to TILE_MAX
    whose float32 rows fit in TILE_BYTES (also reading a float16 row copy, whose rows are widened
    to float32 for the products: tiles of 1,024 rows from a copy were no faster at (b), and took
    0.2 GiB more; BENCHMARKS.md, issue 16 item 17)."""
    rows = TILE
    while rows * 2 <= TILE_MAX and rows * 2 * 4 * dim <= TILE_BYTES:
        rows *= 2
    return rows
#: evaluate a tile's whole span of rows instead of gathering its surviving rows when at least this
#: fraction of the span survives (in-memory float32 vectors only): on workload (a) the tiles took
#: 0.057 / 0.047 s (k = 5 / 1) against 0.073 / 0.055 s gathered; 0.25 and 0 were no better
#: (BENCHMARKS.md, issue 16, item 11)
SPAN_DENSITY = 0.5
#: evaluate only a tile's surviving pairs (a sampled product, :func:`pair_product`) rather than
#: every query with a survivor there times every row with one (:func:`tile_product`) where fewer
#: than this fraction of those pairs survive.  At (b) the level-2 survivors were 0.16 % of all
#: pairs while the dense tiles evaluated 3.1 %: a median tile of 59 queries x 28 rows held about
#: 100 surviving pairs.  Per pair, the sampled product cost about 4x a dense tile's (8.4 against
#: 1.9 us at 65,536 pixels, the dense tile's query gather included), so 0.25 would break even;
#: measured at (a) and (b), 0.5 was within 7 % of the best of 0.1-1.01 in every case, 0 (all
#: dense) up to 1.5x slower (BENCHMARKS.md, issue 16 item 14)
SPARSE_DENSITY = 0.5
# torch.sparse_csr_tensor warns once a process that sparse CSR support is "in beta": pair_product
# builds only the pattern of a sampled product, tested here against the dense tiles
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
#: devices whose tiles may be sampled: measured on the CPU only.  On CUDA the dense tiles run on
#: tensor cores and ``sampled_addmm`` (cuSPARSE) is unmeasured, so CUDA keeps the dense tiles
SPARSE_DEVICES = ("cpu",)
#: a sampled tile's pair counted as this many dense pairs where ``method="auto"`` predicts the
#: tiles' seconds from a sample of them (4x from disk at (b), 2.3x in memory at (a))
SPARSE_PAIR_COST = 3
#: reference rows per bound block
BOUND_ROWS = 16384
#: ``method="auto"`` times every AUTO_SAMPLE_STRIDE-th tile of the plan (about 5 %), or more often
#: so that at least AUTO_SAMPLE_TILES are timed, to predict the rest
AUTO_SAMPLE_STRIDE = 20
AUTO_SAMPLE_TILES = 8
#: ... but never more often than every AUTO_SAMPLE_MIN_STRIDE-th tile: with tiles of 512 rows (a)
#: has 16 tiles, and every 2nd made auto's samples before the seeds half the tiles' work, spent
#: before it could decide (at k = 800 it went brute at 2.83 s against brute force's 2.35 s; every
#: 4th: 2.52 s; every 8th: 2.35 s, but a bf16 index at k = 5 then misjudged its seeds from two
#: tiles, 0.225 against 0.173 s: BENCHMARKS.md, issue 16 item 14)
AUTO_SAMPLE_MIN_STRIDE = 4
#: pixels per float32 partial product of a tile (the partials are summed in float32)
TIER_CHUNK = 1024
#: slices of a float16 row copy's tile widened to float32 at a time for a sampled product
#: (:func:`pair_product`): the widened rows are read back while still in cache, where a whole
#: widened tile (128 MB at (b)) went out to memory and back.  60 tiles of (b) in cluster order,
#: widened and multiplied: whole 0.62-0.64 s; 1 / 2 / 4 / 8 / 16 slices at a time 0.91 / 0.78-0.88 /
#: 0.65-0.69 / 0.54-0.60 / 0.51-0.54 s (BENCHMARKS.md, issue 16 item 18)
WIDEN_SLICES = 16


def tier_error_bound(dim: int) -> float:
    """Bound on |tile value - x.y| for unit x rounded to float32 and y normalised in float32
    (``tile_product``): input error u + NORMALISE_F32 + u^2, each slice's float32 dot gamma_C ||x_c|| ||y_c|| (Cauchy-Schwarz over the
    slices: at most gamma_C (1 + u)^2 in all), and the float32 sum of the n_c partial products,
    gamma_{n_c} times their absolute sum."""
    chunks = max(1, -(-dim // TIER_CHUNK))
    g_c, g_n = projection.gamma(min(dim, TIER_CHUNK)), projection.gamma(chunks)
    u = projection.U32
    # a row normalised in float32 (NORMALISE_F32) rather than rounded from float64: 4u in place of u
    return (2 * u + u * u + NORMALISE_F32 + (g_c + g_n * (1 + g_c)) * (1 + 4 * u) ** 2) * (1 + 1e-6) + 1e-9


def raw_row_error(dim: int, stats: np.ndarray) -> torch.Tensor:
    """Per row (float64), the bound on |tile value - x.y| where a tile multiplies the float32 query
    x32 with the row's raw pixels y (float32, as stored: no normalising pass) and the value is
    (fl32(x32.y) - m S) / n, with the row's mean m and centred norm n (``stats``, the rescore's
    :func:`~workbench.search.kernel.row_stats`) and S = sum(x32) in float64.

    x32.y - m S = x32.(y - m) exactly, and |x.(y - m) - x32.(y - m)| <= u n (x32 is x rounded, x a
    unit vector), so after dividing by n: u.  The float32 product is off by at most
    (gamma_C + gamma_nc (1 + gamma_C)) ||x32|| ||y|| (``tier_error_bound``'s slices and sum),
    ||y|| = sqrt(n^2 + D m^2): times rho = ||y|| / n after the division, rho >= 1, near 1 for
    images whose mean is small beside their spread (1.2-1.5 on brain slices with background).
    A reference in another dtype (float64) is rounded to float32 on the way, y32 = y + d with
    |d_i| <= u |y_i|: x32.d adds at most u (1 + u) rho.  The float64 steps and the stats' own
    rounding (relative 1e-13 at most) are covered by 1e-12 rho.  Constant rows (n = 0) get 0:
    they are never candidates."""
    chunks = max(1, -(-dim // TIER_CHUNK))
    g_c, g_n = projection.gamma(min(dim, TIER_CHUNK)), projection.gamma(chunks)
    u = projection.U32
    st = torch.as_tensor(np.asarray(stats), dtype=torch.float64)
    mean, norm = st[:, 0], st[:, 1]
    live = norm > 0
    rho = torch.where(live, torch.sqrt(norm**2 + dim * mean**2) / torch.where(live, norm, 1.0), 0.0) * (1 + 1e-12)
    err = u * (1 + u) + (u * (1 + u) + (g_c + g_n * (1 + g_c)) * (1 + u) ** 2) * rho
    return torch.where(live, err * (1 + 1e-6) + 1e-12 * rho + 1e-15, 0.0)


def chunked(x: torch.Tensor, dev=None) -> torch.Tensor:
    """Queries (n, D) in float32 as (n_chunks, n, TIER_CHUNK), zero-padded: the layout
    ``tile_product`` gathers from (built 256 rows at a time: no second copy of all queries)."""
    n, dim = x.shape
    chunks = -(-dim // TIER_CHUNK)
    # every entry is written below (the padding as zeros): no zero-filling pass first
    out = torch.empty((chunks, n, TIER_CHUNK), dtype=torch.float32, device=dev or x.device)
    for a in range(0, n, 256):
        block = x[a:a + 256].to(device=out.device, dtype=torch.float32)
        pad = chunks * TIER_CHUNK - dim
        if pad:
            block = torch.nn.functional.pad(block, (0, pad))
        out[:, a:a + 256] = block.view(len(block), chunks, TIER_CHUNK).transpose(0, 1)
    return out


class Tile(NamedTuple):
    """One product of a plan: the tile's number, its queries (sorted), its rows (sorted, or in a
    row copy's order: :func:`pair_plan`), and, for
    a sampled tile, the bool (queries x rows) mask of the pairs it evaluates (None: every pair)."""
    index: int
    queries: torch.Tensor
    rows: np.ndarray
    pairs: torch.Tensor | None = None

    def pair_index(self, dev) -> tuple[torch.Tensor, torch.Tensor]:
        """``(qi, lr)`` on ``dev``: the query and the position among :attr:`rows` of each pair the
        tile evaluates (every query x row where dense), queries ascending."""
        qs = self.queries.to(dev)  # a plan's queries may come from the CPU
        if self.pairs is None:
            m = len(self.rows)
            return qs.repeat_interleave(m), torch.arange(m, device=qs.device).repeat(len(qs))
        lq, lr = torch.nonzero(self.pairs.to(dev), as_tuple=True)  # row-major: queries ascending
        return qs[lq], lr

    def work(self, sparse_cost: float = 1) -> float:
        """Pairs it evaluates, a sampled tile's counted ``sparse_cost`` times."""
        if self.pairs is None:
            return len(self.queries) * len(self.rows)
        return int(self.pairs.sum()) * sparse_cost


def make_tile(t: int, qs: torch.Tensor, rows: np.ndarray, mask: torch.Tensor, span: bool, sparse: bool) -> Tile:
    """The product that evaluates the pairs ``mask`` (len(qs) x len(rows), bool) of tile ``t``:
    sampled where ``sparse`` and under SPARSE_DENSITY of its pairs are wanted, else dense, over the
    whole span of its rows where ``span`` (rows in memory: a view) and at least SPAN_DENSITY of the
    span is wanted."""
    if sparse and int(mask.sum()) < SPARSE_DENSITY * mask.numel():
        return Tile(int(t), qs, rows, mask)
    if span and len(rows) >= SPAN_DENSITY * (rows[-1] - rows[0] + 1):
        # in memory, a contiguous span of rows is a view: its product costs less than gathering
        # the surviving rows into a copy first (the extra pairs are evaluated exactly like the rest)
        rows = np.arange(rows[0], rows[-1] + 1)
    return Tile(int(t), qs, rows)


def tile_product(qc: torch.Tensor, qs: torch.Tensor, r32: torch.Tensor, buffer: list | None = None) -> torch.Tensor:
    """Float32 products of the queries ``qs`` (rows of the chunked layout ``qc``) with the rows
    ``r32`` (m, D): one batched product over the slices, summed in float32 (tier_error_bound).

    ``buffer``: a one-item list holding the tensor the queries are gathered into, reused from
    tile to tile (grown when a tile needs more).  A fresh 10-20 MB gather per tile left the
    allocator's heap fragmented: at (b) the search peaked at 2.6-2.95 GiB against 2.2 GiB with
    the buffer, and ran no faster (BENCHMARKS.md, issue 16 item 13)."""
    chunks = qc.shape[0]
    m, dim = r32.shape
    full = dim // TIER_CHUNK
    if buffer is None:
        q = qc[:, qs]  # chunks x Qb x C
    else:
        need = chunks * len(qs) * TIER_CHUNK
        if buffer[0] is None or buffer[0].numel() < need:
            buffer[0] = None  # the old one goes before the larger one comes
            buffer[0] = torch.empty(need, dtype=qc.dtype, device=qc.device)
        q = torch.index_select(qc, 1, qs, out=buffer[0][:need].view(chunks, len(qs), TIER_CHUNK))
    out = torch.bmm(q[:full], r32[:, :full * TIER_CHUNK].view(m, full, TIER_CHUNK).permute(1, 2, 0)).sum(dim=0) \
        if full else torch.zeros((len(qs), m), dtype=torch.float32, device=qc.device)
    if full < chunks:  # the last, short slice
        rest = dim - full * TIER_CHUNK
        out += q[full, :, :rest] @ r32[:, full * TIER_CHUNK:].T
    return out


def pair_product(qc: torch.Tensor, qi: torch.Tensor, lr: torch.Tensor, r32: torch.Tensor,
                 buffer: list | None = None) -> torch.Tensor:
    """Float32 products of the pairs (query ``qi[j]``, row ``lr[j]`` of ``r32``) alone: the same
    slices of TIER_CHUNK pixels summed in float32 as :func:`tile_product`, so the same bound
    (``tier_error_bound``, any order of summation), but as one sampled product
    (``torch.sparse.sampled_addmm``, :func:`slice_products`) that reads the queries in place: no
    gather of the queries, no product of the pairs nobody asked for.  Where few of a tile's pairs
    survive, that gather and those products cost more than the wanted pairs (SPARSE_DENSITY).

    The pattern's rows are the queries' slices (row (slice b, query q) of the layout ``qc``) and
    its columns the rows' (row (row j, slice b) of ``r32``): neither side is copied (a batched
    pattern over the slices made the kernel copy a strided side: 1.2-2.1 against 0.85 ms a tile at
    (b); a view of some queries, 60 ms: BENCHMARKS.md, issue 16 item 14).

    Rows of a row copy (``r32`` float16, or :class:`~.rowcopy.Int8Rows`) are widened to float32
    (:func:`~.rowcopy.widen`) WIDEN_SLICES slices at a time into ``buffer`` (a one-item list holding the tensor, reused and grown), each
    group's partial products added to the rest: the same float32 slices, summed in another order."""
    chunks, nq, width = qc.shape
    m, dim = r32.shape
    full = dim // TIER_CHUNK
    out = torch.zeros(len(qi), dtype=torch.float32, device=qc.device)
    if full and r32.dtype == torch.float32:
        out = slice_products(qc[:full].view(full * nq, TIER_CHUNK), qi, True,
                             r32[:, :full * TIER_CHUNK].reshape(m * full, TIER_CHUNK), lr, False, full)
    elif full:
        buffer = [None] if buffer is None else buffer
        need = m * min(WIDEN_SLICES, full) * TIER_CHUNK
        if buffer[0] is None or buffer[0].numel() < need:
            buffer[0] = None
            buffer[0] = torch.empty(need, dtype=torch.float32, device=qc.device)
        patterns = {}  # one per group size: every group but a last, short one has WIDEN_SLICES slices
        for a in range(0, full, WIDEN_SLICES):
            g = min(WIDEN_SLICES, full - a)
            wide = buffer[0][:m * g * TIER_CHUNK].view(m, g * TIER_CHUNK)
            widen(r32, a * TIER_CHUNK, (a + g) * TIER_CHUNK, wide)  # float16 exactly, int8 by its scales
            if g not in patterns:
                patterns[g] = SlicePattern(qi, True, nq, lr, False, m, g)
            out += patterns[g](qc[a:a + g].reshape(g * nq, TIER_CHUNK), wide.view(m * g, TIER_CHUNK))
    if full < chunks:  # the last, short slice: one dot product per pair
        rest = dim - full * TIER_CHUNK
        out += (qc[full, qi, :rest] * widen(r32[lr], full * TIER_CHUNK, dim)).sum(dim=1)
    return out


def pair_product_by_rows(qc: torch.Tensor, qi: torch.Tensor, ri: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """:func:`pair_product` with the pattern the other way round, for many pairs over rows in
    memory: the pattern's rows are the reference rows' slices (row (row j, slice b) of ``rows``)
    and its columns the queries' (row (slice b, query q) of ``qc``), so a reference row's slice is
    read once for all its queries' pairs.  ``rows`` fill whole slices.  At (a), k = 5, the 16,942
    pairs of the tiles took 29-30 ms against 38-39 ms by :func:`pair_product`; on a tile of (b)'s,
    whose rows are few and queries many, it was not faster (BENCHMARKS.md, issue 16 item 15)."""
    nq = qc.shape[1]
    m, dim = rows.shape
    full = dim // TIER_CHUNK
    return slice_products(rows.reshape(m * full, TIER_CHUNK), ri, False, qc[:full].view(full * nq, TIER_CHUNK), qi, True,
                          full)


def slice_products(a: torch.Tensor, ai: torch.Tensor, a_slice_major: bool, b: torch.Tensor, bi: torch.Tensor,
                   b_slice_major: bool, full: int) -> torch.Tensor:
    """Per pair j, the sum over the ``full`` slices s of a's item ``ai[j]`` slice s . b's item
    ``bi[j]`` slice s (float32), as one sampled product.  ``a`` and ``b`` are 2D views of
    (items x slices) rows of TIER_CHUNK values, slice-major (row s * items + i) or item-major
    (row i * full + s).  a's slices are the pattern's rows, each holding the pairs of its item in
    pair order (sorted by item first, unless they come so); the pairs come in any order."""
    return SlicePattern(ai, a_slice_major, a.shape[0] // full, bi, b_slice_major, b.shape[0] // full, full)(a, b)


class SlicePattern:
    """The sparse pattern of :func:`slice_products` for given pairs, built once and applied to
    any operands of its shape: a row copy's tile is widened a few slices at a time
    (:func:`pair_product`), and each group's product has the same pairs and the same number of
    slices.  Building the pattern afresh for each group (its counts, offsets and column indices)
    took a third of the tiles' sampled products at (b), k = 5 (BENCHMARKS.md, issue 16 item 21)."""

    def __init__(self, ai: torch.Tensor, a_slice_major: bool, n_a: int, bi: torch.Tensor, b_slice_major: bool,
                 n_b: int, full: int):
        dev = ai.device
        self.order = None if bool((ai[1:] >= ai[:-1]).all()) else torch.argsort(ai, stable=True)
        ao, bo = (ai, bi) if self.order is None else (ai[self.order], bi[self.order])
        self.n, self.full = len(ao), full
        count = torch.bincount(ao, minlength=n_a)
        crow = torch.zeros(n_a * full + 1, dtype=torch.long, device=dev)
        torch.cumsum(count.repeat(full) if a_slice_major else count.repeat_interleave(full), 0, out=crow[1:])
        slices = torch.arange(full, device=dev)
        b_row = slices[None, :] * n_b + bo[:, None] if b_slice_major else bo[:, None] * full + slices[None, :]
        if a_slice_major:  # pattern rows (slice, item): the entries come in (slice, pair) order
            self.pos = None
            cols = b_row.T.reshape(-1)
        else:  # rows (item, slice): a pair's entry in each of its item's rows
            within = torch.arange(self.n, device=dev) - (torch.cumsum(count, 0) - count)[ao]
            self.pos = (crow[ao[:, None] * full + slices[None, :]] + within[:, None]).reshape(-1)
            cols = torch.empty(len(self.pos), dtype=torch.long, device=dev)
            cols[self.pos] = b_row.reshape(-1)
        self.pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(len(cols), dtype=torch.float32, device=dev),
                                               size=(n_a * full, n_b * full), check_invariants=False)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The pairs' sums over the slices of ``a`` and ``b`` (the shapes the pattern was built for)."""
        got = torch.sparse.sampled_addmm(self.pattern, a, b.T, beta=0.0).values()
        n, full = self.n, self.full
        sums = got.view(full, n).sum(dim=0) if self.pos is None else got[self.pos].view(n, full).sum(dim=1)
        if self.order is None:
            return sums
        out = torch.empty(n, dtype=torch.float32, device=a.device)
        out[self.order] = sums
        return out


def predict_tiles(sample: list, times: list, rest: list) -> float:
    """Seconds the ``rest`` of a plan should take, from its ``sample``'s measured ``times``: each
    tile's time fitted (least squares) as a fixed cost plus a cost per pair evaluated, both at least
    0; with fewer than three sampled tiles, or all of one size, the sample's mean cost per pair."""
    pairs = np.array([t.work(SPARSE_PAIR_COST) for t in sample], dtype=float)
    todo = np.array([t.work(SPARSE_PAIR_COST) for t in rest], dtype=float)
    t = np.asarray(times, dtype=float)
    if len(todo) == 0:
        return 0.0
    if len(pairs) >= 3 and np.ptp(pairs) > 0:
        (fixed, per_pair), *_ = np.linalg.lstsq(np.stack([np.ones_like(pairs), pairs], 1), t, rcond=None)
        if fixed < 0 or per_pair < 0:  # one of them carries it all
            fixed, per_pair = (0.0, t.sum() / pairs.sum()) if per_pair > 0 else (t.mean(), 0.0)
        return float(len(todo) * fixed + todo.sum() * per_pair)
    return float(todo.sum() * t.sum() / max(pairs.sum(), 1.0))


def bound_blocks(cq, rho_q, slack_q, codes, rho, slack, constant, const_q, dev, out: torch.Tensor | None = None):
    """``(a, b, est, ub)`` for blocks of BOUND_ROWS references: the projected r (c_x.c_y, an
    estimate of r) and the upper bounds, Q x (b - a) float32 (constant queries and references
    -inf in both).  ``ub`` is computed from ``est``, in place: read ``est`` first.  With ``out``
    (Q x N float32) each block's ``est``, and so its bounds, are the columns a:b of ``out``."""
    n = len(codes)
    dead = np.flatnonzero(constant)
    dead_q = torch.from_numpy(np.flatnonzero(const_q)).to(dev)
    for a in range(0, n, BOUND_ROWS):
        b = min(a + BOUND_ROWS, n)
        if out is None:
            est = cq @ codes[a:b].to(dev).T
        else:
            est = torch.mm(cq, codes[a:b].to(dev).T, out=out[:, a:b])
        cols = dead[(dead >= a) & (dead < b)] - a
        if len(cols):
            est[:, torch.from_numpy(cols).to(dev)] = -math.inf
        if len(dead_q):
            est[dead_q] = -math.inf
        yield a, b, est, lambda est=est, a=a, b=b: projection.finish_bounds(est, rho_q, slack_q, rho[a:b].to(dev),
                                                                             slack[a:b].to(dev))


def top_m(est: torch.Tensor, m: int, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(est, m, dim=1)`` in two stages: the maxima of runs of ``width`` columns, the m
    runs of highest maximum (which hold every one of a row's m largest values: a run holding one
    has its maximum at least the m-th largest, and at most m runs' maxima are), then the m largest
    of those runs' columns.  torch.topk over a query's 16,384 bounds took 3.5x as long (9.4 against
    2.6 ms for 400 queries, m = 6; BENCHMARKS.md, issue 16 item 22).  Among tied values it may
    pick other columns than torch.topk: any m references of highest projected r serve as seeds."""
    nq, n = est.shape
    cut = n - n % width
    if m * width * 4 > cut:  # few columns: one pass
        return torch.topk(est, m, dim=1)
    runs = est[:, :cut].unflatten(1, (cut // width, width))
    _, at = torch.topk(runs.amax(dim=2), m, dim=1)
    cand = torch.gather(runs, 1, at[:, :, None].expand(-1, -1, width)).reshape(nq, m * width)
    cols = (at[:, :, None] * width + torch.arange(width, device=est.device)).reshape(nq, m * width)
    if cut < n:  # the columns past the last whole run
        cand = torch.cat([cand, est[:, cut:]], dim=1)
        cols = torch.cat([cols, torch.arange(cut, n, device=est.device).expand(nq, -1)], dim=1)
    v, j = torch.topk(cand, m, dim=1)
    return v, cols.gather(1, j)


def seeds_and_bounds(first, constant, const_q, dev, m: int, labels=None):
    """The Q x N bounds, per query the ``m`` references of highest projected r (the seeds) and
    their projected r (Q x m, descending).  ``labels``: ``(codes, m_labels)``, a label number per
    reference (a tensor on ``dev``) and how many labels' seeds: each query's seeds then also hold,
    for its ``m_labels`` labels of highest projected r, the reference of highest projected r in
    each (Q x (m + m_labels) seeds; the values stay Q x m)."""
    nq, n = len(first[0]), len(first[3])
    ub = torch.empty((nq, n), dtype=torch.float32, device=dev)
    best_v = torch.full((nq, 0), -math.inf, device=dev)
    best_i = torch.zeros((nq, 0), dtype=torch.long, device=dev)
    if labels is not None:
        n_labels = int(labels[0].max()) + 1
        lab_v = torch.full((nq, n_labels), -math.inf, device=dev)
        lab_i = torch.zeros((nq, n_labels), dtype=torch.long, device=dev)
    for a, b, est, bounds in bound_blocks(*first, constant, const_q, dev, out=ub):
        v, i = top_m(est, min(m, b - a))
        best_v, order = torch.topk(torch.cat([best_v, v], dim=1), min(m, best_v.shape[1] + v.shape[1]), dim=1)
        best_i = torch.gather(torch.cat([best_i, i + a], dim=1), 1, order)
        if labels is not None:  # before bounds(), which overwrites est
            v, i = best_of_labels(est, labels[0][a:b], n_labels)
            better = v > lab_v
            lab_v, lab_i = torch.where(better, v, lab_v), torch.where(better, i + a, lab_i)
        bounds()  # in ub's columns a:b
    if labels is not None:
        _, top = torch.topk(lab_v, min(labels[1], n_labels), dim=1)
        best_i = torch.cat([best_i, lab_i.gather(1, top)], dim=1)
    return ub, best_i, best_v


def best_of_labels(est: torch.Tensor, lab: torch.Tensor, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, columns)``, Q x n_labels: per query each label's highest ``est`` among the columns
    (``lab``: each column's label) and a column that holds it (-inf and 0 for a label not there)."""
    nq, width = est.shape
    idx = lab[None, :].expand(nq, -1)
    best = torch.full((nq, n_labels), -math.inf, device=est.device).scatter_reduce_(1, idx, est, "amax")
    none = torch.iinfo(torch.long).max
    cols = torch.where(est == best.gather(1, idx), torch.arange(width, device=est.device), none)
    first = torch.full((nq, n_labels), none, device=est.device).scatter_reduce_(1, idx, cols, "amin")
    return best, torch.where(first == none, 0, first)


def tile_plan(surv: torch.Tensor, tau: torch.Tensor, ref, cascade, tile: int, sparse: bool = True,
              place: np.ndarray | None = None) -> list:
    """The products that evaluate the survivors ``surv`` (Q x whole tiles, bool): per tile of
    ``tile`` rows, a :class:`Tile` of the queries that have a survivor there and the rows that do
    (:func:`make_tile`: the surviving pairs alone where they are few and ``sparse``).  With a
    ``cascade`` ``(cq, rho_q, slack_q)`` of full-basis codes, the survivors are bounded again from
    all the codes against ``tau`` first: pair by pair where ``sparse`` (:func:`cascade_pairs`),
    else as a dense product per tile (CUDA, where sampled products are unmeasured).  Where
    ``sparse``, the surviving pairs are planned by :func:`pair_plan` (in the order ``place``); the
    dense tiles are cut in index order."""
    span = not getattr(ref, "from_disk", False)
    if sparse:
        if cascade is not None:
            qi, ri = cascade_pairs(surv, tau, ref, cascade)
        else:
            qi, ri = (x.cpu().numpy() for x in mask_pairs(surv))
        return pair_plan(qi, ri, tile, span, sparse, place)
    nq = surv.shape[0]
    n_tiles = surv.shape[1] // tile
    dev = surv.device
    surv = surv.view(nq, n_tiles, tile)
    q_any = surv.any(dim=2)  # nq x n_tiles
    todo = torch.nonzero(q_any.any(dim=0), as_tuple=True)[0].cpu().numpy()
    plan = []
    for t in todo:
        qs = torch.nonzero(q_any[:, t], as_tuple=True)[0]
        sub = surv[qs, t]  # Qb x tile
        cols = torch.nonzero(sub.any(dim=0), as_tuple=True)[0]
        rows = (t * tile + cols).cpu().numpy()
        sub = sub[:, cols]
        if cascade is not None:  # second level: the full codes of this tile's surviving pairs
            cq, rho_q, slack_q = cascade
            ri = torch.from_numpy(rows)  # the index's parts stay on the CPU; their rows move
            ub2 = projection.upper_bounds(cq[qs], rho_q[qs], slack_q[qs], ref.codes[ri].to(dev), ref.rho[ri].to(dev),
                                          ref.slack[ri].to(dev))
            sub &= ub2 >= tau[qs].float()[:, None]
            keep_q, keep_r = sub.any(dim=1), sub.any(dim=0)
            if not bool(keep_q.any()):
                continue
            qs, rows, sub = qs[keep_q], rows[keep_r.cpu().numpy()], sub[keep_q][:, keep_r]
        plan.append(make_tile(t, qs, rows, sub, span, sparse))
    return plan


def cascade_pairs(surv: torch.Tensor, tau: torch.Tensor, ref, cascade) -> tuple[np.ndarray, np.ndarray]:
    """``(qi, ri)``: the pairs of ``surv`` whose second-level bound, from all the codes, reaches
    the query's ``tau``.

    Each pair's codes product is taken alone (a sampled product, :func:`slice_products` over one
    slice of d), a block of BOUND_ROWS references at a time.  The same float32 product summed in
    any order has the same bound (gamma_d in :mod:`.projection`), and the three terms are added as
    :func:`~.projection.finish_bounds` adds them, so the bound is the same.  A dense product per
    tile of its queries x rows (built before) computed about 4x the pairs asked for: at (b),
    k = 5, 589,214 first-level survivors in 157 tiles, the tile plan 0.70 s, 0.35 s of it the
    products (BENCHMARKS.md, issue 16 item 17)."""
    t = tau.float()
    got_q, got_r = [], []
    for a in range(0, surv.shape[1], BOUND_ROWS):
        qi, ri = mask_pairs(surv[:, a:a + BOUND_ROWS])
        if not len(qi):
            continue
        ri = ri + a
        keep = pair_bounds(cascade, ref, qi, ri) >= t[qi]
        got_q.append(qi[keep])
        got_r.append(ri[keep])
    if not got_q:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(got_q).cpu().numpy(), torch.cat(got_r).cpu().numpy()


def pair_bounds(cascade, ref, qi: torch.Tensor, ri: torch.Tensor) -> torch.Tensor:
    """:func:`~.projection.upper_bounds` of the pairs (query ``qi[j]``, reference ``ri[j]``) alone,
    from the queries' codes ``cascade`` = ``(cq, rho_q, slack_q)`` and the index's (float32)."""
    cq, rho_q, slack_q = cascade
    dev = cq.device
    ub = slice_products(ref.codes.to(dev), ri, False, cq, qi, False, 1)
    ub.add_(rho_q.float()[qi] * ref.rho.float().to(dev)[ri])
    ub += slack_q.float()[qi] + 1e-6
    ub += ref.slack.float().to(dev)[ri]
    return ub


def pair_plan(qi: np.ndarray, ri: np.ndarray, tile: int, span: bool, sparse: bool,
              place: np.ndarray | None = None) -> list:
    """The tiles of the pairs ``(qi, ri)``: per tile of ``tile`` rows holding a pair, its queries
    (ascending), its rows and the mask of its pairs (:func:`make_tile`).  The tiles are cut in the
    order ``place`` (each reference position's row in a float16 row copy, whose rows are grouped
    by cluster: :mod:`.rowcopy`) and their rows come in that order, so that a tile reads runs of the
    copy; else in index order, rows ascending."""
    key = ri if place is None else place[ri]
    by_tile = np.argsort(key // tile, kind="stable")
    qi, ri, key = qi[by_tile], ri[by_tile], key[by_tile]
    names, first = np.unique(key // tile, return_index=True)
    plan = []
    for t, a, b in zip(names, first, np.r_[first[1:], len(ri)]):
        keys, pick = np.unique(key[a:b], return_index=True)
        r, qs = ri[a:b][pick], np.unique(qi[a:b])
        mask = torch.zeros((len(qs), len(r)), dtype=torch.bool)
        mask[np.searchsorted(qs, qi[a:b]), np.searchsorted(keys, key[a:b])] = True
        plan.append(make_tile(t, torch.from_numpy(qs), r, mask, span and place is None, sparse))
    return plan


def split_sample(plan: list, by_queries: bool = False) -> tuple[list, list]:
    """``method="auto"``'s timed sample of a plan (every AUTO_SAMPLE_STRIDE-th tile, or more often
    so that at least AUTO_SAMPLE_TILES are sampled) and the rest, both in plan order.

    ``by_queries`` (rows in memory, where a tile's rows cost nothing to take twice): a plan of
    fewer than AUTO_SAMPLE_TILES tiles is sampled within its tiles instead, every
    AUTO_SAMPLE_STRIDE-th query of each tile, the rest of each tile left in the plan.  A small
    reference has few, large tiles (2,459 rows: five tiles of 512), and two whole tiles sampled
    were 40 % of the tiles' work, thrown away where auto then went brute (6.3 s against brute
    force's 3.6 s; BENCHMARKS.md, issue 16 item 23)."""
    if by_queries and len(plan) < AUTO_SAMPLE_TILES:
        sample, rest = [], []
        for t in plan:
            pick = torch.zeros(len(t.queries), dtype=torch.bool)
            pick[::AUTO_SAMPLE_STRIDE] = True
            sample.append(query_part(t, pick))
            if not pick.all():
                rest.append(query_part(t, ~pick))
        return sample, rest
    stride = max(AUTO_SAMPLE_MIN_STRIDE, min(AUTO_SAMPLE_STRIDE, len(plan) // AUTO_SAMPLE_TILES))
    return plan[::stride], [p for j, p in enumerate(plan) if j % stride]


def query_part(tile: Tile, pick: torch.Tensor) -> Tile:
    """The part of ``tile`` that holds its queries ``pick`` (bool, one per query): same rows."""
    pairs = None if tile.pairs is None else tile.pairs[pick.to(tile.pairs.device)]
    return Tile(tile.index, tile.queries[pick.to(tile.queries.device)], tile.rows, pairs)


def plan_pairs(plan: list) -> int:
    """Pairs a plan of tiles evaluates."""
    return sum(t.work() for t in plan)


def plan_work(plan: list) -> float:
    """Pairs a plan of tiles evaluates, a sampled tile's counted SPARSE_PAIR_COST times (the unit
    of ``method="auto"``'s remembered rate)."""
    return float(sum(t.work(SPARSE_PAIR_COST) for t in plan))
