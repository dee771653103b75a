"""Exact top-k Pearson correlation: a low-precision screen, then an exact float64 rescore.

Pearson r of two images is the dot product of their z-normalised, unit-norm pixel vectors
(all selected pixels of all selected channels).  So the search is one matrix product of the
normalised queries with the normalised reference, done block by block as the reference streams
from disk.

Screen.  Each block is multiplied in bfloat16 (AMX on CPU, tensor cores on GPU; about 5x the
float32 rate here) or float32, in slices of SCREEN_CHUNK pixels whose partial products are
summed in float64.

bf16: a per-pair bound.  Write x = x_h + x_l with x_h the bf16 copy of the unit vector x and
x_l what rounding left (likewise y).  Each slice c of SCREEN_CHUNK pixels is followed by an
offset column (PAD, :func:`pad_slices`): 1 in the reference, -t_c in the query, with t_c a bf16
number (the query's running k-th best times its share of energy in slice c).  So the product
of slice c comes out as acc_c ~ x_h,c.y_h,c - t_c, accumulated in float32 and rounded to bf16
relative to that small difference rather than to r.  The screened value is
s~ = sum_c (fl_bf16(acc_c) + t_c), summed in float64, and

    |s~ - x.y| <= |x_l.y_h| + |x_h.y_l| + |x_l.y_l|              input rounding (exact split)
                 + sum_c |acc_c - (x_h,c.y_h,c - t_c)|           float32 accumulation
                 + sum_c |fl_bf16(acc_c) - acc_c|                 output rounding
              <= ||x_l|| ||y_h|| + ||x_h|| ||y_l|| + ||x_l|| ||y_l||
                 + gamma_n (||x_h|| ||y_h|| + sum_c |t_c|)
                 + u/(1-u) sum_c |fl_bf16(acc_c)|  +  1e-7

with gamma_n = n u32 / (1 - n u32), n = SCREEN_CHUNK + 1 (a slice's pixels and its offset
term), u32 = 2**-24, the worst-case float32 accumulation error of an n-term dot product in any
order (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5;
Cauchy-Schwarz over the slices bounds sum_c ||x_h,c|| ||y_h,c|| by ||x_h|| ||y_h||), u = 2**-8
the unit roundoff of bf16 (round to nearest), and 1e-7 covering the final rounding of the
float64 sum to float32.  Any offsets keep the bound valid; good ones only make it smaller.  The
norms ||x_h||, ||x_l|| are computed per vector in float64 (a CorrelationIndex stores them), so
the bound costs a few element-wise operations per pair and is about 0.003-0.005 near a query's
k-th best on brain slices, against 0.012 for the worst case over all unit vectors without
offsets, which :func:`screen_error_bound` gives (2v + v^2 + 4 u32 + gamma_n (1 + v)^2 +
v (1 + 2v + gamma_n), v = 2**-8).  Where the reference is normalised in float32 on the fly
(``topk_correlation`` without an index) its ||y_l|| is taken from the float32 vector and 4 u32
is added for the float32 normalisation.

float32: one bound for all pairs, the same formula with v = u32: eps ~ 0.00025 at any image
size (5x256x256 included).

Rescore.  Each pair gets a screened interval [s~ - e, s~ + e] that holds its true r.  Let L be a
query's k-th largest lower end: its true k-th best r is at least L.  So every image whose upper
end reaches L is a candidate (tracked with the running L as blocks stream by, which is never
above the final L), and the candidates are rescored in float64 over the stored values.  The top
k of the rescored candidates is the float64 brute-force top k (ties to the lower index).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..device import resolve_device, use_bf16

#: reference images per block: about this many bytes of float32 per block
BLOCK_BYTES = 128 * 2**20
#: pixels per slice of the screen's dot products (partial sums are added in float64)
SCREEN_CHUNK = 4096
PRECISIONS = ("auto", "bf16", "float32")


@dataclass
class SearchResult:
    """Top-k matches: ``values`` (Q, k) Pearson r, descending; ``indices`` (Q, k) into the reference.

    Constant (zero-variance) queries have no Pearson r: their rows hold index -1 and value
    -inf, and ``constant_queries`` marks them.  Constant reference images are never matched
    and are listed in ``constant_reference``.  Unpacks as ``values, indices = result``.
    ``stats`` says how the search went (pairs screened, candidates rescored, the bound used).
    """

    values: np.ndarray
    indices: np.ndarray
    constant_queries: np.ndarray
    constant_reference: np.ndarray
    pairs: int = 0
    rescored: int = 0
    stats: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.values, self.indices))


# -- inputs ----------------------------------------------------------------------------------
def _as_source(x, name: str):
    """Wrap numpy arrays, torch tensors and SliceStores in one block-reading interface."""
    if isinstance(x, SliceStore):
        return x
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 3:  # (N, H, W): one channel
            x = x[:, None]
        if x.ndim != 4:
            raise WorkbenchError(f"{name}: expected images (N, C, H, W) or (N, H, W), got shape {x.shape}")
        return x
    raise WorkbenchError(f"{name}: expected a numpy array, torch tensor or SliceStore, got {type(x).__name__}")


def _blocks(src, size: int):
    if isinstance(src, SliceStore):
        yield from src.blocks(size)
    else:  # copies: normalisation works on blocks in place and must not touch the caller's array
        for start in range(0, len(src), size):
            yield start, np.array(src[start:start + size])


def _read_rows(src, positions: np.ndarray) -> np.ndarray:
    return src.read(positions) if isinstance(src, SliceStore) else np.asarray(src[positions])


def _channel_index(src, channels, n_channels: int):
    """Channel positions from names (SliceStores) or integers."""
    if channels is None:
        return None
    names = src.channels if isinstance(src, SliceStore) else None
    out = []
    for c in channels:
        if isinstance(c, str):
            if names is None or c not in names:
                raise WorkbenchError(f"channel {c!r} not found; available: {names if names else list(range(n_channels))}")
            out.append(names.index(c))
        else:
            if not 0 <= int(c) < n_channels:
                raise WorkbenchError(f"channel {c} out of range 0..{n_channels - 1}")
            out.append(int(c))
    if not out:
        raise WorkbenchError("channels: choose at least one channel")
    return out


class _Selector:
    """Picks the pixels that enter r: the chosen channels, within the mask, flattened."""

    def __init__(self, image_shape, channels, mask):
        c, h, w = image_shape
        self.channels = channels
        self.mask = None
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape == (h, w):
                mask = np.broadcast_to(mask, (len(channels) if channels else c, h, w))
            want = (len(channels) if channels else c, h, w)
            if mask.shape != want:
                raise WorkbenchError(f"mask has shape {mask.shape}; it must be (H, W) = {(h, w)} or (C, H, W) = {want}")
            if mask.sum() < 2:
                raise WorkbenchError("mask selects fewer than 2 pixels; Pearson r needs at least 2")
            self.mask = mask.reshape(-1)
        n_ch = len(channels) if channels else c
        self.dim = int(self.mask.sum()) if self.mask is not None else n_ch * h * w

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.channels is not None:
            block = block[:, self.channels]
        flat = block.reshape(len(block), -1)
        return flat[:, self.mask] if self.mask is not None else flat


def _normalise(flat: np.ndarray, dtype, device="cpu") -> tuple[torch.Tensor, np.ndarray]:
    """Z-normalised unit vectors in ``dtype`` (computed in float64 for float64, else float32).

    Works in place on a private copy: this runs on every reference block, so it is kept to a
    few passes over memory.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    # blocks are private copies (SliceStore.read, _blocks), so this may work on them in place
    x = torch.from_numpy(np.ascontiguousarray(flat)).to(device=device, dtype=work)
    mean = x.mean(dim=1, keepdim=True)
    if not torch.isfinite(mean).all():  # a NaN or inf anywhere in a row reaches its mean
        raise WorkbenchError("images contain non-finite pixels (NaN or inf)")
    x.sub_(mean)
    norm = torch.linalg.vector_norm(x, dim=1)
    # constant: what is left after centring is rounding noise, below 1e-6 of the pixel level
    # (rms deviation <= 1e-6 |mean|); an all-zero image has norm 0
    constant = norm <= 1e-6 * mean[:, 0].abs() * math.sqrt(x.shape[1])
    x.div_(torch.where(constant, torch.ones_like(norm), norm)[:, None])
    if constant.any():
        x[constant] = 0
    return x.to(dtype), constant.cpu().numpy()


# -- precision and the error bound -----------------------------------------------------------
def _pick_precision(precision: str, dev: torch.device, prepared: bool = False) -> torch.dtype:
    if precision not in PRECISIONS:
        raise WorkbenchError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        # Measured (BENCHMARKS.md): on a prepared CorrelationIndex the bf16 screen with its
        # per-pair bound is the faster exact search where the hardware multiplies bf16 much faster
        # than float32 (AMX), which the precision probe measures on the machine at hand; CPUs with
        # only AVX-512 BF16 or none run it slower.  Unprepared, the CPU pays for the bf16 copy and
        # its split norms in every call and float32 is faster.  GPUs: bf16 (tensor cores).
        if dev.type == "cuda":
            precision = "bf16"
        else:
            precision = "bf16" if prepared and use_bf16("auto", dev, kind="matmul") else "float32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def screen_error_bound(dim: int, dtype=torch.bfloat16) -> float:
    """Bound on |screened dot - exact dot| for unit vectors of length ``dim`` (module docstring)."""
    u = 2.0**-24
    v = 2.0**-8 if dtype == torch.bfloat16 else u
    n = min(dim, SCREEN_CHUNK)
    gamma = n * u / (1 - n * u)
    return (2 * v + v * v + 4 * u) + gamma * (1 + v) ** 2 + v * (1 + 2 * v + gamma)


def float32_error_bound(dim: int) -> float:
    """The bound of a float32 screen (kept for callers of the first version)."""
    return screen_error_bound(dim, torch.float32)


U32 = 2.0**-24
BF16_U = 2.0**-8
#: float32 normalisation of a reference on the fly moves its unit vector by at most this much
NORMALISE_F32 = 4 * U32


def split_norms(x: torch.Tensor, x_lo_precision: torch.Tensor) -> torch.Tensor:
    """Per row ``[||x_h||, ||x - x_h||]`` in float64: x_h the low-precision copy of unit vectors x.

    ``x`` is the float64 (or float32) vector, ``x_lo_precision`` its bf16 copy; see the module
    docstring for how the screen's per-pair bound uses them.
    """
    out = torch.empty((len(x), 2), dtype=torch.float64, device=x.device)
    step = max(1, 2**24 // (8 * max(1, x.shape[1])))  # float64 ~16 MB of rows at a time: bounded temporaries
    for a in range(0, len(x), step):
        hi = x_lo_precision[a:a + step].double()
        out[a:a + step, 0] = torch.linalg.vector_norm(hi, dim=1)
        out[a:a + step, 1] = torch.linalg.vector_norm(x[a:a + step].double() - hi, dim=1)
    return out * (1 + 1e-12) + 1e-15  # round up: these only ever enlarge the bound


def _pair_error(qn: torch.Tensor, rn: torch.Tensor, out_abs: torch.Tensor, t_abs: torch.Tensor) -> torch.Tensor:
    """The bf16 screen's per-pair bound (module docstring) from split norms, the |partial sums|
    and the |offsets| of each query."""
    n = SCREEN_CHUNK + 1  # a slice's pixels and its offset term
    gamma = n * U32 / (1 - n * U32)
    qh, ql = qn[:, 0:1].float(), qn[:, 1:2].float()
    rh, rl = rn[:, 0].float()[None], rn[:, 1].float()[None]
    err = ql * rh + qh * rl + ql * rl + gamma * (qh * rh + t_abs[:, None])
    err += out_abs * (BF16_U / (1 - BF16_U))
    # float32 rounding of this sum itself: a relative 1e-6 margin covers it many times over
    return err.mul_(1 + 1e-6).add_(1e-7)


# -- the bf16 layout: every slice of SCREEN_CHUNK pixels is followed by PAD offset columns -----
#: columns after each slice: the reference holds [1, 0, ..., 0] there, a query [-t, 0, ..., 0];
#: 32 keeps every slice a multiple of the 32-wide AMX / tensor-core tiles when the slice is
PAD = 32


def slice_bounds(dim: int) -> list[tuple[int, int]]:
    """Pixel ranges of the screen's slices."""
    return [(a, min(a + SCREEN_CHUNK, dim)) for a in range(0, dim, SCREEN_CHUNK)] or [(0, 0)]


def padded_width(dim: int) -> int:
    return dim + PAD * len(slice_bounds(dim))


def pad_slices(x_lo: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Copy bf16 vectors (n, dim) into the padded layout, with ``fill`` in each offset column."""
    dim = x_lo.shape[1]
    out = torch.zeros((len(x_lo), padded_width(dim)), dtype=x_lo.dtype, device=x_lo.device)
    pos = 0
    for a, b in slice_bounds(dim):
        out[:, pos:pos + b - a] = x_lo[:, a:b]
        out[:, pos + b - a] = fill
        pos += b - a + PAD
    return out


def _offset_columns(dim: int) -> list[int]:
    cols, pos = [], 0
    for a, b in slice_bounds(dim):
        cols.append(pos + b - a)
        pos += b - a + PAD
    return cols


# -- the search ------------------------------------------------------------------------------
def topk_correlation(queries, reference, k: int = 1, *, device: str = "auto", method: str = "auto", channels=None,
                     mask=None, distinct=None, precision: str = "auto", block_size: int | None = None,
                     progress: bool = False, client=None, **dask_options) -> SearchResult:
    """For each query image, the ``k`` reference images with the highest Pearson r (exact).

    Parameters
    ----------
    queries, reference : numpy arrays or torch tensors ``(N, C, H, W)`` / ``(N, H, W)``, or
        SliceStores (views too).  r is computed over all selected pixels of all selected channels.
    k : matches per query.
    device : ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    method : ``"brute"`` (stream the reference, screen every pair), ``"pruned"`` (prepare a
        :class:`~workbench.search.CorrelationIndex` and prune with block-mean bounds; for
        repeated searches build the index once yourself) or ``"auto"`` (``"brute"`` for now).
    channels : channel names (SliceStores) or positions to use; default all.
    mask : boolean ``(H, W)`` (same for every channel) or ``(C, H, W)``: r over these pixels only
        (e.g. the brain).
    distinct : ``"subject"`` (or another manifest column of a SliceStore reference, or an array
        of one label per reference image): return the best match from each of the ``k`` best
        different subjects, so a user sees whether one patient dominates.
    precision : the screen's precision, ``"bf16"``, ``"float32"`` or ``"auto"`` (float32 on the CPU,
        bf16 on GPUs; a :class:`CorrelationIndex` uses bf16 on CPUs with AMX / AVX-512 BF16).
        The answer is exact either way.
    block_size : reference images per block (default: about 128 MB of float32).
    client : a ``dask.distributed.Client``: shard the reference store across its workers
        (see :mod:`workbench.search.distributed`).

    Returns
    -------
    SearchResult with ``values`` (Q, k) descending and ``indices`` (Q, k) into ``reference``.

    >>> values, indices = topk_correlation(synthetic, store.where(split="train"), k=5)   # doctest: +SKIP
    """
    # stores are paired by channel name: queries are read in the reference's channel order
    queries = align_channels(queries, reference, what="queries")
    if distinct is not None:
        return _topk_distinct(queries, reference, k, distinct, device=device, method=method, channels=channels,
                              mask=mask, precision=precision, block_size=block_size, progress=progress,
                              client=client, **dask_options)
    if client is not None:
        from .distributed import topk_correlation_dask

        unknown = sorted(set(dask_options) - {"shards", "worker_path", "torch_threads"})
        if unknown:
            raise TypeError(f"unexpected options {unknown} (with client=: shards, worker_path, torch_threads)")

        return topk_correlation_dask(queries, reference, k, client=client, device=device, method=method, channels=channels,
                                     mask=mask, precision=precision, block_size=block_size, progress=progress,
                                     **dask_options)
    if dask_options:
        raise TypeError(f"unexpected options {sorted(dask_options)}")
    if method not in ("auto", "brute", "pruned"):
        raise WorkbenchError(f"method must be 'auto', 'brute' or 'pruned', got {method!r}")
    if method == "pruned":
        from .index import CorrelationIndex

        index = CorrelationIndex(reference, channels=channels, mask=mask, precision=precision, device=device)
        return index.topk(queries, k, method="pruned", block_size=block_size, progress=progress)
    queries = _as_source(queries, "queries")
    reference = _as_source(reference, "reference")
    qshape, rshape = tuple(queries.shape), tuple(reference.shape)
    if qshape[1:] != rshape[1:]:
        raise WorkbenchError(f"queries have images of shape {qshape[1:]} but reference images are {rshape[1:]}")
    if rshape[0] == 0 or qshape[0] == 0:
        raise WorkbenchError("empty queries or reference: nothing to search")
    if not 1 <= k <= rshape[0]:
        raise WorkbenchError(f"k={k} must be between 1 and the reference size {rshape[0]}")
    chans = _channel_index(reference, channels, rshape[1])
    select = _Selector(rshape[1:], chans, mask)
    dev = resolve_device(device)
    dtype = _pick_precision(precision, dev)
    block_size = block_size or max(1, BLOCK_BYTES // (4 * select.dim))

    q64, const_q = _prepare_queries(queries, select)

    def blocks():
        for start, block in _blocks(reference, block_size):
            r32, c = _normalise(select(block), torch.float32, device=dev)
            r_lo = r32.to(dtype)
            rn = None
            if dtype == torch.bfloat16:
                rn = split_norms(r32, r_lo)
                r_lo = pad_slices(r_lo)
            yield np.arange(start, start + len(block)), r_lo, c, None, rn

    return _search(q64, const_q, blocks(), reference, select, k=k, n_reference=rshape[0], dtype=dtype, dev=dev,
                   progress=progress, ref_lift=NORMALISE_F32)


def _topk_distinct(queries, reference, k, distinct, **options) -> SearchResult:
    """Best match per label for the k best labels: an exact top-k' search, widened until enough.

    The exact top-k' list is ordered by r (ties to the lower index), so the first image of each
    label in it is that label's best match; k' grows until every query sees k labels.
    """
    if isinstance(distinct, str):
        if not isinstance(reference, SliceStore):
            raise WorkbenchError(f"distinct={distinct!r} needs a SliceStore reference (its manifest has the labels); "
                                 "for arrays pass one label per reference image")
        if distinct not in reference.manifest.columns:
            raise WorkbenchError(f"{reference.path}: manifest has no column {distinct!r} for distinct=")
        labels = reference.manifest[distinct].to_numpy()
    else:
        labels = np.asarray(distinct)
    n = len(reference)
    if len(labels) != n:
        raise WorkbenchError(f"distinct: {len(labels)} labels for {n} reference images")
    n_labels = len(set(labels.tolist()))
    if not 1 <= k <= n_labels:
        raise WorkbenchError(f"k={k} distinct matches asked for, but the reference has {n_labels} different labels")
    kk = min(n, max(2 * k, k + 16))
    while True:
        res = topk_correlation(queries, reference, kk, **options)
        values = np.full((len(res.values), k), -np.inf)
        indices = np.full((len(res.values), k), -1, dtype=np.int64)
        short = False
        for q in range(len(res.values)):
            if res.constant_queries[q]:
                continue
            seen, j = set(), 0
            for v, i in zip(res.values[q], res.indices[q]):
                if i < 0 or labels[i] in seen:
                    continue
                seen.add(labels[i])
                values[q, j], indices[q, j] = v, i
                j += 1
                if j == k:
                    break
            short |= j < k
        if not short or kk == n:
            break
        kk = min(n, kk * 4)
    res.values, res.indices = values, indices
    res.stats.update(distinct=distinct if isinstance(distinct, str) else "labels", searched_k=kk)
    return res


def _prepare_queries(queries, select) -> tuple[torch.Tensor, np.ndarray]:
    """Exact float64 z-normalised queries and their constant mask."""
    q64, const_q = [], []
    for _, block in _blocks(queries, 1024):
        with _one_thread():  # the same bits in every process, whatever its thread count
            x, c = _normalise(select(block), torch.float64)
        q64.append(x)
        const_q.append(c)
    return torch.cat(q64), np.concatenate(const_q)


def _search(q64: torch.Tensor, const_q: np.ndarray, blocks, reference, select, *, k: int, n_reference: int,
            dtype, dev, progress: bool, ref_lift: float = 0.0) -> SearchResult:
    """Screen normalised reference blocks, then rescore exactly.

    ``blocks`` yields ``(cols, vectors, constant, pair_mask, norms)``: the reference positions of
    the block's rows, their low-precision unit vectors, which are constant, optionally a
    (Q, len(cols)) mask of the pairs to evaluate (pruned pairs are left out), and for a bf16
    screen the rows' split norms (:func:`split_norms`).  ``ref_lift`` is added to every
    reference's ||y_l|| (NORMALISE_F32 where the reference was normalised in float32).
    """
    eps = screen_error_bound(select.dim, dtype)
    per_pair = dtype == torch.bfloat16
    q32 = q64.to(torch.float32)
    q_lo = q32.to(dtype)
    nq = len(q64)
    qn = None
    if per_pair:
        qn = split_norms(q64, q_lo).to(dev)
        q_lo = pad_slices(q_lo, 0.0)
        off_cols = torch.tensor(_offset_columns(select.dim), device=dev)
        # each query's share of its energy per slice: the offset of slice c is t * share_c
        share = torch.stack([(q64[:, a:b] ** 2).sum(dim=1) for a, b in slice_bounds(select.dim)], dim=1).float().to(dev)
        t_sum = torch.zeros(nq, dtype=torch.float64, device=dev)
        t_abs = torch.zeros(nq, device=dev)
    q_lo = q_lo.to(dev)
    # screen: running k-th best lower bound per query, and the candidate pairs with their upper bound
    run_top = torch.full((nq, 0), -math.inf, device=dev)
    cand_q, cand_r, cand_s = [], [], []
    const_r = []
    screened = 0
    dead = torch.from_numpy(const_q).to(dev) if const_q.any() else None
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would break the float32 error bound
    try:
        bar = tqdm(total=n_reference, desc="searching", unit="img", disable=not progress)
        for cols, r_lo, c, pair_mask, rn in blocks:
            if c.any():
                const_r.append(cols[c])
            if per_pair:
                if rn is None:
                    raise AssertionError("a bf16 screen needs the reference's split norms")
                rn = rn.to(dev)
                if ref_lift:
                    rn = rn + torch.tensor([0.0, ref_lift], dtype=rn.dtype, device=dev)
            offsets = None
            if per_pair:
                if run_top.shape[1] == k:  # offsets at the running k-th best lower bound
                    t = run_top[:, -1].clamp(-1, 1)
                    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
                    tc = (t[:, None] * share).to(dtype)
                    q_lo[:, off_cols] = -tc
                    t_sum = tc.double().sum(dim=1)
                    t_abs = tc.float().abs().sum(dim=1)
                offsets = (t_sum, t_abs)
            s, err = _screen(q_lo, r_lo, qn, rn, eps, offsets)
            lower, upper = s - err, s + err
            screened += s.numel() if pair_mask is None else int(pair_mask.sum())
            off = None
            if c.any():
                off = torch.from_numpy(c).to(dev)[None, :].expand_as(lower).clone()
            if pair_mask is not None:
                pm = ~pair_mask.to(dev)
                off = pm if off is None else off | pm
            if dead is not None:
                off = dead[:, None].expand_as(lower).clone() if off is None else off | dead[:, None]
            if off is not None:
                lower = lower.masked_fill(off, -math.inf)
                upper = upper.masked_fill(off, -math.inf)
            kb = min(k, lower.shape[1])
            run_top = torch.topk(torch.cat([run_top, torch.topk(lower, kb, dim=1).values], dim=1),
                                 min(k, run_top.shape[1] + kb), dim=1).values
            level = run_top[:, -1] if run_top.shape[1] == k else torch.full((nq,), -math.inf, device=dev)
            qi, ri = torch.nonzero((upper >= level[:, None]) & (upper > -math.inf), as_tuple=True)
            cand_q.append(qi.cpu())
            cand_r.append(torch.from_numpy(cols)[ri.cpu()])
            cand_s.append(upper[qi, ri].cpu())
            bar.update(len(c))
        bar.close()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    const_r = np.concatenate(const_r) if const_r else np.zeros(0, dtype=np.int64)
    if n_reference - len(const_r) < k:
        raise WorkbenchError(f"k={k} but only {n_reference - len(const_r)} reference images are non-constant")
    if len(const_r):
        warnings.warn(f"{len(const_r)} reference image(s) are constant (zero variance) and cannot be matched: "
                      f"{const_r[:10].tolist()}", stacklevel=3)

    # keep the candidates that can still reach the final k-th place, and rescore them exactly
    final_level = run_top[:, -1].cpu() if run_top.shape[1] else torch.full((nq,), -math.inf)
    qi, ri, si = torch.cat(cand_q), torch.cat(cand_r), torch.cat(cand_s)
    keep = si >= final_level[qi]
    qi, ri = qi[keep].numpy(), ri[keep].numpy()
    values, indices = _rescore(q64, reference, select, qi, ri, k, nq)
    mark_constant_queries(values, indices, const_q)
    stats = {"precision": "bf16" if per_pair else "float32", "device": str(dev),
             "error_bound": eps, "bound": "per pair" if per_pair else "uniform",
             "pixels": select.dim, "screened_pairs": screened, "candidates_per_query": len(qi) / max(nq, 1)}
    return SearchResult(values, indices, const_q, const_r, pairs=nq * n_reference, rescored=len(qi), stats=stats)


def mark_constant_queries(values: np.ndarray, indices: np.ndarray, const_q: np.ndarray) -> None:
    """Constant queries have no Pearson r: value -inf, index -1, and a warning that lists them."""
    values[const_q] = -np.inf
    indices[const_q] = -1
    if const_q.any():
        warnings.warn(f"{int(const_q.sum())} query image(s) are constant (zero variance); Pearson r is undefined "
                      f"for them and they are reported with index -1: {np.flatnonzero(const_q)[:10].tolist()}",
                      stacklevel=4)


def _screen(q_lo: torch.Tensor, r_lo: torch.Tensor, qn=None, rn=None, eps: float = 0.0, offsets=None):
    """Screened products and their per-pair error bound (module docstring).

    float32 (``qn`` None): vectors longer than SCREEN_CHUNK are multiplied in slices whose
    partial products are summed in float64; every pair gets the uniform bound ``eps``.
    bf16: both sides are in the padded layout (:func:`pad_slices`); ``offsets`` =
    ``(t_sum, t_abs)`` per query, the sum and the sum of |t| of the offsets written into the
    query's offset columns (each slice's product comes out as x_c.y_c - t_c, so its bf16 rounding
    is relative to the small difference, not to r).
    """
    if qn is None:
        dim = q_lo.shape[1]
        if dim <= SCREEN_CHUNK:
            return (q_lo @ r_lo.T).float(), eps
        acc = torch.zeros((q_lo.shape[0], r_lo.shape[0]), dtype=torch.float64, device=q_lo.device)
        for a in range(0, dim, SCREEN_CHUNK):
            acc += (q_lo[:, a:a + SCREEN_CHUNK] @ r_lo[:, a:a + SCREEN_CHUNK].T).double()
        return acc.float(), eps  # rounding to float32 adds at most u32 |s|, inside the bound's slack
    width = q_lo.shape[1]
    t_sum, t_abs = offsets
    step = SCREEN_CHUNK + PAD
    if width <= step:
        part = (q_lo @ r_lo.T).float()
        out_abs = part.abs()
        s = part.double()
    else:
        s = torch.zeros((q_lo.shape[0], r_lo.shape[0]), dtype=torch.float64, device=q_lo.device)
        out_abs = torch.zeros((q_lo.shape[0], r_lo.shape[0]), device=q_lo.device)
        for a in range(0, width, step):
            part = (q_lo[:, a:a + step] @ r_lo[:, a:a + step].T).float()
            s += part
            out_abs += part.abs()
    s += t_sum[:, None]
    return s.float(), _pair_error(qn, rn, out_abs, t_abs)


def _rescore(q64: torch.Tensor, reference, select, qi: np.ndarray, ri: np.ndarray, k: int, nq: int):
    """Exact float64 r of each candidate pair; per query the top k (ties to the lower index)."""
    order = np.argsort(ri, kind="stable")
    qi, ri = qi[order], ri[order]
    exact = _exact_sorted(q64, reference, select, qi, ri)
    values = np.full((nq, k), -np.inf)
    indices = np.full((nq, k), -1, dtype=np.int64)
    by_query = np.lexsort((ri, -exact, qi))  # query, then r descending, then lower index
    qs, first = np.unique(qi[by_query], return_index=True)
    for q, f in zip(qs, first):
        pick = by_query[f:f + k]
        pick = pick[qi[pick] == q]
        values[q, :len(pick)] = exact[pick]
        indices[q, :len(pick)] = ri[pick]
    return values, indices


def exact_pairs(q64: torch.Tensor, reference, select, qi: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """Exact float64 r of the pairs (qi[j], ri[j]), reading the reference rows once each."""
    order = np.argsort(ri, kind="stable")
    out = np.empty(len(qi))
    out[order] = _exact_sorted(q64, reference, select, qi[order], ri[order])
    return out


class _one_thread:
    """Run torch single-threaded: MKL's dot product sums in a thread-count-dependent order, and
    every process (Dask workers included) must give each pair the same float64 bits."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _exact_sorted(q64: torch.Tensor, reference, select, qi: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """Exact r of pairs sorted by reference row: each row is read and normalised in float64 once,
    then one float64 dot product per pair (a pair's value never depends on the other pairs).

    The dot products are numpy's BLAS ``ddot`` held to one thread (twice the speed of
    ``torch.dot`` here): a threaded BLAS sums in a thread-count-dependent order, and every
    process, Dask workers included, must give each pair the same bits.
    """
    exact = np.empty(len(qi))
    rows = np.unique(ri)
    qn = q64.numpy()
    step = max(1, 2**21 // (8 * select.dim))  # rows per chunk: ~2 MB of float64, so the passes stay in cache
    with _one_thread(), threadpool_limits(limits=1, user_api="blas"):
        for s in range(0, len(rows), step):  # read candidate rows in store order, a chunk at a time
            chunk = rows[s:s + step]
            r64 = _normalise(select(_read_rows(reference, chunk)), torch.float64)[0].numpy()
            lo, hi = np.searchsorted(ri, chunk[0]), np.searchsorted(ri, chunk[-1], side="right")
            local = np.searchsorted(chunk, ri[lo:hi])
            # by query within the chunk: a query's candidates are often neighbouring rows, so its
            # vector is fetched once for them (the chunk's rows are in cache already)
            for j in np.argsort(qi[lo:hi], kind="stable"):
                exact[lo + j] = qn[qi[lo + j]] @ r64[local[j]]
    return exact
