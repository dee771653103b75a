"""The pruned search: projection bounds for every pair, then dense tiles of the survivors.

Bounds alone do not make a search fast: on brain slices the survivors of the novel queries touch
most reference rows, so a search that evaluates them pair by pair reads the whole reference at
gather speed (BENCHMARKS.md, issue 3).  Here survivors are evaluated as dense tiles:

1. **Bounds.** Every pair gets an upper bound on r from the index's codes
   (:mod:`workbench.search.projection`): one Q x N x d product, or, for a large basis, a cascade:
   the first ``level1`` codes for every pair and all d only for the pairs that survive those.
   Steps 1-2 and the survivors of step 3 go a group of queries at a time where all the bounds
   would take more than HOLD_BOUNDS_BYTES: each group's are computed once, held to its survivors.
2. **Seeds.** Each query's k + SEED_EXTRA references of highest projected r (c_x.c_y) are
   evaluated first, exactly (the float64 kernel of the rescore, :func:`~workbench.search.kernel.exact_pairs`);
   the k-th best of them is tau, a lower bound on the query's true k-th best.  Projected r
   ranks near-copies and neighbouring slices well, so tau lands close to the truth, and the
   seeds are most of the pairs the rescore needs (BENCHMARKS.md).
3. **Tiles.** Every pair whose bound reaches tau survives.  For each tile of consecutive rows
   (:func:`tile_rows`: 64-512), the queries with a survivor there and the rows with a survivor
   there form one dense float32 product (slices of TIER_CHUNK pixels, error at most
   :func:`tier_error_bound`; a bf16 index's rows are widened to float32, each off by at most its
   ``row_error``), or, where under SPARSE_DENSITY of those pairs survive, the surviving pairs
   alone are computed in the same slices (:func:`pair_product`, a sampled product): the
   survivors are scattered, 0.16 % of the pairs at (b) against 3.1 % in dense tiles.  Rows are
   read only for these tiles, in index order; from disk, threads read the next tiles' rows
   (O_DIRECT) while one is multiplied, and the rows enter the products as stored, divided by the
   index's mean and norm of each row (:func:`raw_row_error`).
4. **Rescore.** Pairs whose float32 interval reaches the k-th best lower end are rescored in
   float64, beside the seeds; the top k is the float64 brute-force top k.

Every pair of the true top k has r >= its query's true k-th best >= tau, so its bound reaches tau
and it is evaluated in step 2 or 3: the answer is exact.  Reference order matters (survivors of a
query must share tiles); store order (subject, then slice) groups them as well as k-means on the
codes did on brain phantoms, and ball bounds per k-means cluster pruned almost nothing
(BENCHMARKS.md), so the index keeps store order and has no cluster level.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..errors import TooFewReferenceImages
from ..progress import tqdm
from . import projection
from .bounds import NORMALISE_F32, ieee_float32
from .kernel import exact_pairs, kth_largest, label_best, label_keep, labelled_floor, mask_pairs, top_of
from .result import SearchResult, mark_constant_queries
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
#: (pair, slice) entries of one sampled product where the sampled tiles of a stage are evaluated
#: together (rows in memory): bounds its pattern (about 20 bytes an entry)
MERGED_ENTRIES = 2**22
#: devices whose tiles may be sampled: measured on the CPU only.  On CUDA the dense tiles run on
#: tensor cores and ``sampled_addmm`` (cuSPARSE) is unmeasured, so CUDA keeps the dense tiles
SPARSE_DEVICES = ("cpu",)
#: a sampled tile's pair counted as this many dense pairs where ``method="auto"`` predicts the
#: tiles' seconds from a sample of them (4x from disk at (b), 2.3x in memory at (a))
SPARSE_PAIR_COST = 3
#: seeds per query beyond k: its k + SEED_EXTRA references of highest projected r are evaluated
#: first, and the k-th best of them sets the query's threshold tau
SEED_EXTRA = 1
#: seed pairs evaluated in float64 to time the float64 kernel where the seeds are float32 (``by_label``)
RATE_PAIRS = 512
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
#: ``method="auto"`` goes brute without sampling where the tiles would evaluate more than this
#: fraction of the pairs (a tile's pair costs 2-9x a brute-force pair, BENCHMARKS.md)
AUTO_MAX_FRACTION = 0.5
#: ``method="auto"`` also goes brute without sampling where the tiles, at the seconds per pair that
#: an earlier search of the same index measured on its sample (``auto["tile_rate"]``), would take
#: this many times brute force's screen: a sample is lost where it goes brute
#: (at (a), k = 50, bf16 rows: 51-53 ms of a 0.39 s search that brute force alone did in 0.30-0.32 s;
#: BENCHMARKS.md, issue 16 item 21)
AUTO_SKIP_MARGIN = 1.5
#: the float32 bounds of a group of queries x N references are held from the seeds to the survivors
#: up to this size; larger searches go a group of queries at a time (at workload (b), 1,000 x 80,000,
#: holding all of them took 320 MB of a peak near the 3 GB target; computing them a second time for
#: the survivors instead, as until issue 16 item 22, cost 0.3-0.5 s)
HOLD_BOUNDS_BYTES = 128 * 2**20
#: rows read from disk: while a tile is multiplied, the rows of the next PREFETCH_TILES + 1 tiles are
#: read (``CorrelationIndex.raw_reader``: O_DIRECT, by a few threads, into buffers of the reader's own,
#: at most PREFETCH_TILES + 2 of them).  At (b),
#: k = 5, rows on disk, the tiles took 5.5 s so against 16.5-17.5 s when the kernel was asked for
#: them (posix_fadvise) and they were read through the page cache in the search's own thread
#: (BENCHMARKS.md, issue 16 item 16; a thread reading through the page cache had taken the
#: products' second core for its copies, item 13)
PREFETCH_TILES = 2
#: ... and reading a float16 row copy (``row_copy``): one tile fewer, so that its reading buffers
#: and the rows widened to float32 take no more memory than a search reading the store.  At (b),
#: k = 5, rows on disk, in one script: 512-row tiles 1 ahead 6.9-7.6 s, peak 2.33 GiB; 0 ahead
#: 8.8-10.9 s, 2.28 GiB; 1,024-row tiles 0 ahead 7.1-7.7 s, 2.52 GiB (the store 2 ahead:
#: 10.3-10.7 s, 2.32 GiB; BENCHMARKS.md, issue 16 item 17)
COPY_PREFETCH_TILES = 1
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


def unique_pairs(qi: torch.Tensor, ri: torch.Tensor, si: torch.Tensor | None, n: int):
    """Each evaluated (query, reference) pair once: ``(qi, ri, si)`` without repeats, or, with
    ``si`` None, the positions that keep the first of each."""
    _, once = np.unique(qi.numpy() * n + ri.numpy(), return_index=True)
    once = torch.from_numpy(once)
    return once if si is None else (qi[once], ri[once], si[once])


def kth_lower(values: torch.Tensor, qi: torch.Tensor, nq: int, k: int) -> torch.Tensor:
    """Per query, the k-th largest of ``values`` over its pairs (-inf with fewer than k pairs):
    :func:`~workbench.search.kernel.kth_largest` on tensors."""
    return torch.from_numpy(kth_largest(values.numpy(), qi.numpy(), nq, k))


@ieee_float32()
def tiled_search(q64: torch.Tensor, const_q: np.ndarray, ref, reference, select, *, k: int, dev, tile: int | None = None,
                 progress: bool = False, stacklevel: int = 4, auto: dict | None = None,
                 by_label=None) -> SearchResult | None:
    """Exact top-k by the four steps of the module docstring.

    ``ref`` carries the index's parts: ``basis``, ``delta``, ``codes``, ``rho``, ``slack``,
    ``constant`` (numpy bool) and ``rows32(positions)``, the float32 unit vectors of sorted
    reference positions.

    ``auto`` (``method="auto"``): a dict holding, from the index's probe, ``brute_s`` (the predicted
    seconds of a brute-force screen) and ``brute_eps`` (its error bound: a number, or per reference
    row).  The float64 evaluation's cost per pair is measured on the seeds (``exact_pair_s``), the
    tiles' on a sample of them (every AUTO_SAMPLE_STRIDE-th tile of the plan, kept), and each
    path's rescore predicted from the pairs evaluated so far that its bound cannot rule out; where
    the rest of the pruned search would take longer than brute force, or the tiles would evaluate
    more than AUTO_MAX_FRACTION of all pairs, this returns None, having spent the bounds, the seeds
    and the sample, and leaves the seeds in the dict (``known``: pairs, exact values and each
    query's k-th best of them) for brute force to take.  ``tile_rate`` (seconds per pair of
    :func:`plan_work`), where given, is an earlier search's measure of the tiles on the same
    index: where the tiles at that rate would take AUTO_SKIP_MARGIN times the brute screen, this
    returns None without a sample.  The dict receives what was measured and predicted (a sample's
    ``tile_rate`` included).

    ``by_label``: ``(codes, k_labels, k_plain)`` (a distinct search's, as
    :func:`~workbench.search.kernel.screen_and_rescore` takes it): the seeds are float32 tiles of
    each query's best projected references and of its best labels' (:func:`seeds_and_bounds`), tau
    and the final level the labels' (:func:`~workbench.search.kernel.labelled_floor`), and the
    rescore keeps only the pairs that may be the top ``k_plain`` or a label's best among the
    ``k_labels`` best labels (:func:`~workbench.search.kernel.label_keep`); the result holds the top
    ``k_plain`` and ``by_label`` (:func:`~workbench.search.kernel.label_best`).
    """
    nq, n = len(q64), len(ref.codes)
    in_memory = not getattr(ref, "from_disk", False)
    # rows from disk are read ahead (ref.raw_reader): the float16 row copy's where the index has one
    copied = not in_memory and getattr(ref, "row_copy", None) is not None
    place = ref.row_copy.rows if copied else None  # the tiles are cut in the copy's (cluster) order
    tile = tile or tile_rows(select.dim)
    n_valid = n - int(ref.constant.sum())
    if n_valid < k:
        raise TooFewReferenceImages(f"k={k} but only {n_valid} reference images are non-constant", k=k, available=n_valid)
    clock = {"start": time.perf_counter()}

    def lap(name):  # the seconds since the last lap, added to stage ``name``'s
        now = time.perf_counter()
        clock[name] = clock.get(name, 0.0) + now - clock.pop("last", clock["start"])
        clock["last"] = now

    level1 = getattr(ref, "level1", None)
    qdev = q64.to(dev)  # float64: the codes and the tiles' layout round it to float32 block by block
    if level1:  # a cascade: bounds from the first level1 codes for every pair, the rest per tile
        cq, rho_q, slack_q, (rho1_q, slack1_q) = projection.codes(qdev, ref.basis.to(dev), ref.delta,
                                                                    prefix=level1)
        first = (cq[:, :level1].contiguous(), rho1_q, slack1_q, ref.codes[:, :level1], ref.rho1, ref.slack1)
    else:
        cq, rho_q, slack_q = projection.codes(qdev, ref.basis.to(dev), ref.delta)
        first = (cq, rho_q, slack_q, ref.codes, ref.rho, ref.slack)
    lap("codes_s")
    m = min(k + SEED_EXTRA, n_valid)
    eps = tier_error_bound(select.dim)
    # a bf16 index's rows are bf16 copies of the unit vectors (a row copy's on disk float16 ones):
    # each row's tiles are off by at most its own bound (ref.row_error, per row), else one bound for all pairs
    row_eps = getattr(ref, "row_error", None)
    # rows from disk (without a row copy) enter the tiles as stored, with the index's mean and norm
    # of each row (raw_row_error): normalising each tile's rows took 2.1 s of (b)'s 17 s (BENCHMARKS.md, item 14)
    raw = not in_memory and not copied and getattr(ref, "stats", None) is not None
    streamed = raw or copied
    ahead = COPY_PREFETCH_TILES if copied else PREFETCH_TILES
    if raw:
        row_eps = raw_row_error(select.dim, ref.stats)
        st = torch.as_tensor(np.asarray(ref.stats), dtype=torch.float64)
        raw_mean, raw_norm = st[:, 0].to(dev), st[:, 1].to(dev)
    row_eps_dev = None if row_eps is None else row_eps.to(dev)  # float64

    def pair_eps(ri: torch.Tensor):
        return eps if row_eps is None else row_eps[ri]
    qc = chunked(qdev)
    # S = sum(x32) per query in float64 (raw rows), x32 the float32 rounding of the query that the
    # layout qc holds: exact to far below the bound's 1e-12; from the contiguous float64 rows on
    # the CPU, 64 at a time, by numpy's float32-to-float64 sum (torch's sum with dtype=float64 took
    # 0.4-0.8 s at (b), numpy's 0.08-0.1 s; the same sum over the slices of qc 0.75 s)
    qsum = torch.from_numpy(np.concatenate([np.add.reduce(q64[a:a + 64].float().numpy(), axis=1, dtype=np.float64)
                                            for a in range(0, len(q64), 64)])).to(dev) if raw else None
    del qdev
    live = torch.from_numpy(~const_q).to(dev)
    n_tiles = -(-n // tile)

    # evaluated pairs and their float32 values (kept if they may matter); empty to start with, so
    # that a search with nothing to evaluate (every query constant) still concatenates
    got_q, got_r = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    got_s = [torch.zeros(0, dtype=torch.float64)]
    evaluated = 0
    gathered = [None]  # the tiles' query gathers, one buffer reused (tile_product)
    widened = [None]  # a row copy's rows widened a few slices at a time, one buffer reused (pair_product)

    const_dev = torch.from_numpy(ref.constant).to(dev)  # constant references: never candidates
    # in memory, float32 rows filling whole slices: the sampled tiles' pairs are taken from the index's
    # rows in place (global positions), all tiles of a stage in a few products (pair_product_by_rows); per
    # tile, gathering their rows and one small product each cost more than the pairs at (a)
    whole = None
    sparse_here = torch.device(dev).type in SPARSE_DEVICES
    if sparse_here and in_memory and row_eps is None and select.dim % TIER_CHUNK == 0:
        whole = getattr(ref, "vectors", None)
        whole = whole.to(dev) if whole is not None and whole.dtype == torch.float32 else None

    def product(tile: Tile, r32: torch.Tensor):
        """``(qi, ri, s)``: the tile's evaluated pairs (query, reference position) and their values."""
        qi, lr = tile.pair_index(dev)
        if tile.pairs is None:  # every pair, as a (queries x rows) product, then pair by pair
            s = tile_product(qc, tile.queries.to(dev), r32.float(), gathered).reshape(-1)  # a row copy's widened
        else:
            s = pair_product(qc, qi, lr, r32, widened)
        return qi, torch.from_numpy(tile.rows).to(dev)[lr], s

    def keep_pairs(qi: torch.Tensor, ri: torch.Tensor, s: torch.Tensor, floor: torch.Tensor | None):
        """Keep the evaluated pairs that may still reach a k-th place (all, before tau is known)."""
        nonlocal evaluated
        if raw:  # (x32.y - m S) / n in float64 (raw_row_error); constant rows are set to -inf below
            s = s.double().sub_(qsum[qi] * raw_mean[ri]).div_(raw_norm[ri])
        evaluated += s.numel()
        s[const_dev[ri]] = -math.inf  # a span may hold constant references
        if floor is None:
            keep = s > -math.inf
        else:
            e = eps if row_eps is None else row_eps_dev[ri]
            # s >= tau - e compared in float64 (s is exact there): s + e rounded to float32 could
            # fall below tau by a rounding the bound does not cover
            keep = s >= floor[qi] - e
        got_q.append(qi[keep].cpu())
        got_r.append(ri[keep].cpu())
        got_s.append(s[keep].double().cpu())

    def run(plan, floor, desc, times=None):
        """Evaluate the plan's tiles in order.  Rows from disk are read ahead, the next
        PREFETCH_TILES + 1 tiles' rows (COPY_PREFETCH_TILES + 1 from a row copy) while a tile is
        multiplied (``raw_reader``).
        In memory (``whole``), the sampled tiles' pairs are evaluated together, in products of up
        to MERGED_ENTRIES (pair, slice) entries.  ``times``: a list that receives each tile's
        seconds, in plan order (the sampled tiles evaluated together share theirs by pairs)."""
        seconds = {}
        merged = [j for j, t in enumerate(plan) if t.pairs is not None] if whole is not None else []
        with tqdm(total=len(plan), desc=desc, unit="tile", disable=not progress) as bar:
            if merged:
                t0 = time.perf_counter()
                parts = [pairs_of(plan[j]) for j in merged]
                qi, ri = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                order = torch.sort(ri, stable=True).indices  # each product's pairs over a range of rows
                qi, ri = qi[order], ri[order]
                step = max(1, MERGED_ENTRIES // max(1, select.dim // TIER_CHUNK))
                for a in range(0, len(qi), step):
                    keep_pairs(qi[a:a + step], ri[a:a + step],
                               pair_product_by_rows(qc, qi[a:a + step], ri[a:a + step], whole), floor)
                spent = time.perf_counter() - t0
                total = sum(len(p[0]) for p in parts)
                merged_tally[0] += spent
                merged_tally[1] += total
                for j, p in zip(merged, parts):
                    seconds[j] = spent * len(p[0]) / max(total, 1)
                bar.update(len(merged))
            skip = set(merged)
            todo = [j for j in range(len(plan)) if j not in skip]
            with ref.raw_reader(ahead) if streamed else contextlib.nullcontext() as reader:
                rows = reader.stream([plan[j].rows for j in todo], ahead + 1) if streamed else None
                for j in todo:
                    t0 = time.perf_counter()
                    r32 = next(rows) if streamed else ref.rows32(plan[j].rows)
                    keep_pairs(*product(plan[j], r32.to(dev)), floor)
                    seconds[j] = time.perf_counter() - t0
                    bar.update(1)
        if times is not None:
            times.extend(seconds[j] for j in range(len(plan)))

    # seconds and pairs of every product of sampled tiles taken together (``whole``): auto's rate
    # for the rest of such tiles.  One product's fixed cost weighs on a small sample: at (a), k = 200,
    # a sample of 946 pairs cost 5.9 us a pair against 1.7 over a whole stage, predicted 0.42 s for
    # the rest against 0.13 s by the larger sample before the seeds, and auto switched to brute
    # force after the seeds (1.13-1.33 s; brute force alone 0.80 s: BENCHMARKS.md, issue 16 item 14)
    merged_tally = [0.0, 0]

    def pairs_of(tile: Tile):
        """A tile's pairs as (query, reference position), queries ascending."""
        qi, lr = tile.pair_index(dev)
        return qi, torch.from_numpy(tile.rows).to(dev)[lr]

    def float_seeds_tau(sq: torch.Tensor, sr: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """The seeds ``(sq, sr)`` of queries a:b evaluated as float32 tiles (kept as evaluated pairs,
        those that may reach a k-th place), and per query the k-th largest of their lower ends."""
        n0 = len(got_q)
        run(pair_plan(sq.numpy(), sr.numpy(), tile, in_memory, sparse_here, place), None, "seeding tiles")
        gq, gr, gs = (torch.cat(x[n0:]) if len(x) > n0 else x[0] for x in (got_q, got_r, got_s))
        e = pair_eps(gr)
        t = kth_lower(gs - e, gq - a, b - a, k)
        # below the k-th best label's best and the plain top's, where the seeds hold k labels
        t = torch.from_numpy(labelled_floor(t.numpy(), (gq - a).numpy(), gr.numpy(), (gs - e).numpy(), by_label,
                                            b - a))
        near = gs >= t[gq - a] - e  # as keep_pairs keeps the tiles' pairs against tau
        for x, y in ((got_q, gq), (got_r, gr), (got_s, gs)):
            del x[n0:]
            x.append(y[near])
        return t

    # 2. seeds: each query's m references of highest projected r, evaluated exactly, in float64 by
    # the rescore's own kernel: every seed is a real pair, so the k-th best of a query's m distinct
    # seeds is a lower bound on its true k-th best (tau), and the seeds are most of the final
    # rescore's pairs, whose rows are so read once (at (b), k = 5, 5,001 of its 5,401 pairs: as
    # float32 tiles of the row copy and then rescored from the store, seeds and rescore took
    # 1.9 s, exactly 0.9 s; BENCHMARKS.md, issue 16 item 20).
    # Then the survivors: the pairs whose bound reaches tau (constant references have bound -inf and
    # every live query a finite tau, so they never survive; constant queries are cut; the seeds are
    # left out), planned as tiles (3.).
    # Bounds, seeds and survivors go a group of queries at a time, whose Q_g x N bounds are held from
    # the seeds to the survivors (at most HOLD_BOUNDS_BYTES): at (b) all 1,000 queries' bounds are 320 MB
    # of a peak near the 3 GB target, and computing them a second time for the survivors cost 0.3 s
    # A distinct search (``by_label``) rescores only a few of a query's top k' (k' of 129 on brain
    # phantoms, about 10 of them rescored): its seeds are float32 products like the tiles', and tau
    # the k-th largest of their lower ends, still a lower bound on the true k-th best (exact seeds
    # took 8.5 s of 14.6 s at 6,000 x 6,216, k' = 129; BENCHMARKS.md, issue 16 item 25)
    float_seeds = by_label is not None
    label_seeds = None
    if float_seeds and len(np.unique(by_label[0])) >= by_label[1]:
        # each query's k_plain + 1 best projected and the best projected of its k_labels + 1 best
        # labels: the labels' level then holds from the seeds on (labelled_floor); with fewer
        # labels than asked for (a Dask shard's), the k + 1 best projected as ever
        m = min(by_label[2] + SEED_EXTRA, n_valid)
        label_seeds = (torch.from_numpy(np.asarray(by_label[0], dtype=np.int64)).to(dev), by_label[1] + SEED_EXTRA)
    per_group = max(1, HOLD_BOUNDS_BYTES // (4 * n))
    surv = torch.zeros((nq, n_tiles * tile), dtype=torch.bool, device=dev)  # padded to whole tiles
    seed_q, seed_r, seed_s, taus = [], [], [], []
    seen_q, seen_r = [], []  # every seed, exact or float32
    lap("codes_s")  # with the codes, the queries' layout for the tiles (qc) and their sums
    for a in range(0, nq, per_group):
        g = slice(a, min(a + per_group, nq))
        ub, seeds, _ = seeds_and_bounds((*(x[g] for x in first[:3]), *first[3:]), ref.constant, const_q[g], dev, m,
                                        label_seeds)
        lap("bounds_s")
        q_live = torch.nonzero(live[g], as_tuple=True)[0].cpu()
        seen_q.append(q_live.repeat_interleave(seeds.shape[1]) + a)
        seen_r.append(seeds[q_live.to(dev)].reshape(-1).cpu())
        if float_seeds:
            taus.append(float_seeds_tau(seen_q[-1], seen_r[-1], a, g.stop))
        else:
            seed_q.append(seen_q[-1])
            seed_r.append(seen_r[-1])
            seed_s.append(torch.from_numpy(exact_pairs(q64, reference, select, seed_q[-1].numpy(),
                                                       seed_r[-1].numpy(), getattr(ref, "stats", None))))
            taus.append(kth_lower(seed_s[-1], seed_q[-1] - a, g.stop - a, k))  # -inf for constant queries
        lap("seeds_s")
        torch.ge(ub, taus[-1].float().to(dev)[:, None], out=surv[g, :n])
        del ub
        lap("survivors_s")
    seed_q, seed_r, seed_s = (torch.cat(x) if x else torch.zeros(0, dtype=dt)
                              for x, dt in ((seed_q, torch.long), (seed_r, torch.long), (seed_s, torch.float64)))
    seen_q, seen_r, tau = torch.cat(seen_q), torch.cat(seen_r), torch.cat(taus)
    tau_dev = tau.to(dev)
    seed_rows = len(np.unique(seen_r.numpy()))
    cascade = (cq, rho_q, slack_q) if level1 else None

    def pairs_so_far():
        """Every evaluated pair once, ``(qi, ri, si, ei, exact)``: value, its error bound, and
        whether it is an exact seed (bound 0; its value kept over a tile's: a dense tile may
        evaluate a seed pair again, and a pair counted twice could lift the k-th best above the
        truth)."""
        qi, ri, si = torch.cat([seed_q, *got_q]), torch.cat([seed_r, *got_r]), torch.cat([seed_s, *got_s])
        at = unique_pairs(qi, ri, None, n)  # the first of each: a seed's exact value
        qi, ri, si = qi[at], ri[at], si[at]
        exact = at < len(seed_q)
        ei = torch.zeros(len(qi), dtype=torch.float64) + pair_eps(ri)
        ei[exact] = 0
        return qi, ri, si, ei, exact

    # 3. the survivors planned as tiles
    surv[~live] = False
    surv[seen_q.to(dev), seen_r.to(dev)] = False
    plan = tile_plan(surv, tau_dev, ref, cascade, tile, sparse_here, place)
    del surv
    work = plan_pairs(plan)
    lap("survivors_s")

    rows_read = int(sum(len(t.rows) for t in plan))
    n_planned = len(plan)  # the tiles beyond the seeds, the sample of method="auto" included
    if auto is not None:
        # where brute force goes on, it takes the seeds' exact values and their k-th best as each
        # query's floor (kernel.screen_and_rescore): the seeds are its rescore's pairs too, so
        # they are decided after, not before (a check before them, on samples of the seeds and of
        # tiles planned on projected r, went brute at (a), k = 1-5, bf16, 40-70 % slower than either)
        auto["known"] = (seed_q.numpy(), seed_r.numpy(), seed_s.numpy(), tau)
        auto["fraction"] = (work + len(seed_q)) / max(nq * n, 1)
        if auto["fraction"] > AUTO_MAX_FRACTION:
            return None
        at_rate = None if auto.get("tile_rate") is None else auto["tile_rate"] * plan_work(plan)
        if at_rate is not None and at_rate > AUTO_SKIP_MARGIN * auto["brute_s"]:
            auto["tiles_at_rate_s"] = at_rate
            return None
        # the tiles' cost on this machine, measured on a strided sample of them (their pairs kept):
        # each tile's seconds fitted as a fixed cost plus a cost per pair, which predicts the rest
        # (a cost per pair alone misjudged the rest by a third where the sample's tiles were larger)
        sample, plan = split_sample(plan, by_queries=not streamed)
        times = []
        run(sample, tau_dev, "sampling tiles", times)
        spent = float(sum(times))
        done = plan_pairs(sample)
        auto["tile_rate"] = spent / max(plan_work(sample), 1)  # seconds per pair (sampled ones weighted): kept by the index
        sampled = [t for t in plan if t.pairs is not None]
        if whole is not None and sampled and merged_tally[1]:  # evaluated together: at the rate of all so far
            dense = [(t, sec) for t, sec in zip(sample, times) if t.pairs is None]
            rest = [t for t in plan if t.pairs is None]
            rest_s = merged_tally[0] / merged_tally[1] * plan_pairs(sampled)
            if rest:
                rest_s += predict_tiles(*zip(*dense), rest) if dense else predict_tiles(sample, times, rest)
        else:
            rest_s = predict_tiles(sample, times, plan)
        auto.update(sample_pairs=done, sample_tiles=len(sample), sample_s=spent, tiles_s=spent + rest_s)
        # each path's rescore beyond the seeds (both have them): the pairs evaluated so far (the
        # seeds, and the sample scaled to the whole plan) that each path's bound could not rule
        # out, at the seeds' measured seconds a pair (the index's probe, one pair per row spread
        # over the reference, took 40-45 us a pair at (a), seeds sharing rows and queries 10-25 us)
        t1 = time.perf_counter()
        qi, ri, si, ei, exact = pairs_so_far()
        scale = torch.where(exact, 1.0, work / max(done, 1)).double()
        level = kth_lower(si - ei, qi, nq, k)[qi]
        e_b = auto["brute_eps"][ri] if torch.is_tensor(auto["brute_eps"]) else auto["brute_eps"]
        auto["rescore_pairs"] = int((((si + ei >= level) & ~exact) * scale).sum())
        auto["brute_rescore_pairs"] = int((((si + e_b >= level - e_b) & ~exact) * scale).sum())
        # both paths rescore what their bounds leave: brute force pays for the pairs beyond the tiles'
        pruned_rest = auto["tiles_s"] - spent
        if float_seeds:  # the float64 kernel's rate timed on a few seeds
            t2, few = time.perf_counter(), slice(0, min(len(seen_q), RATE_PAIRS))
            exact_pairs(q64, reference, select, seen_q[few].numpy(), seen_r[few].numpy(), getattr(ref, "stats", None))
            auto["exact_pair_s"] = (time.perf_counter() - t2) / max(1, few.stop)
        else:
            auto["exact_pair_s"] = clock["seeds_s"] / max(1, len(seed_q))
        brute = auto["brute_s"] + max(0, auto["brute_rescore_pairs"] - auto["rescore_pairs"]) * auto["exact_pair_s"]
        auto.update(pruned_rest_s=pruned_rest, brute_total_s=brute, weigh_s=time.perf_counter() - t1)
        if pruned_rest > brute:  # the seeds and the sample are spent either way
            return None
    run(plan, tau_dev, "searching tiles")
    lap("tiles_s")

    # 4. rescore the pairs whose interval reaches the k-th best lower end (the seeds are exact)
    qi, ri, si, ei, exact = pairs_so_far()
    level = kth_lower(si - ei, qi, nq, k)
    if by_label is not None:  # every pair below the labels' level is below tau too (float_seeds_tau)
        level = torch.from_numpy(labelled_floor(level.numpy(), qi.numpy(), ri.numpy(), (si - ei).numpy(), by_label,
                                                nq))
    keep = (si + ei) >= level[qi]
    k_out, labelled = k, None
    if by_label is not None:  # only what the plain top k_plain and each best label's best need
        codes, k_labels, k_out = by_label
        at = torch.nonzero(keep).squeeze(1)
        wanted = label_keep(qi[at].numpy(), ri[at].numpy(), (si - ei)[at].numpy(), (si + ei)[at].numpy(), codes,
                            k_labels, k_out, nq)
        keep[at[torch.from_numpy(~wanted)]] = False
    todo = keep & ~exact
    si[todo] = torch.from_numpy(exact_pairs(q64, reference, select, qi[todo].numpy(), ri[todo].numpy(),
                                            getattr(ref, "stats", None)))
    values, indices = top_of(qi[keep].numpy(), ri[keep].numpy(), si[keep].numpy(), k_out, nq)
    if by_label is not None:
        # every pair left out has r below its query's level or tau (unevaluated and dropped ones)
        labelled = label_best(qi[keep].numpy(), ri[keep].numpy(), si[keep].numpy(), codes, k_labels, nq,
                              torch.maximum(level, tau).numpy())
        labelled[0][const_q], labelled[1][const_q] = -np.inf, -1  # no r: as the plain answer marks them
    mark_constant_queries(values, indices, const_q, stacklevel=stacklevel)
    lap("rescore_s")
    clock.pop("start"), clock.pop("last")
    n_pairs = nq * n
    rescored = len(seed_q) + int(todo.sum())
    stats = {"method": "pruned", "basis": ref.basis_name, "basis_dim": int(ref.basis.shape[1]), "tile": tile,
             "precision": "float32" if row_eps is None else "raw rows, float32 products" if raw
             else f"{ref.row_copy.fmt} row copy, float32 products" if copied else "bf16 rows, float32 products", "device": str(dev),
             "error_bound": eps if row_eps is None else float(row_eps.max()),
             "bound": "uniform" if row_eps is None else "per row", "pixels": select.dim,
             "screened_pairs": evaluated + len(seed_q), "full_fraction": (evaluated + len(seed_q)) / max(n_pairs, 1),
             "tiles_evaluated": n_planned, "tiles_sampled": sum(t.pairs is not None for t in plan),
             "level1": level1, "candidates_per_query": rescored / max(nq, 1), "seed_pairs": len(seen_q),
             "seeds": "float32" if float_seeds else "exact",
             "rows_read": rows_read + seed_rows, "seconds": {key: round(v, 4) for key, v in clock.items()}}
    return SearchResult(values, indices, const_q, np.flatnonzero(ref.constant), pairs=n_pairs, rescored=rescored,
                        stats=stats, by_label=labelled)
