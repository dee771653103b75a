"""The exact search kernel: a low-precision screen of every pair, then a float64 rescore of the few
that can still be in the top k.

Pearson r of two images is the dot product of their z-normalised, unit-norm pixel vectors
(all selected pixels of all selected channels).  So the search is one matrix product of the
normalised queries with the normalised reference, done block by block as the reference streams
by (:mod:`workbench.search.streaming`) or is read from a prepared index
(:mod:`workbench.search.index`).

Screen.  Each block is multiplied in bfloat16 (AMX on CPU, tensor cores on GPU; about 5x the
float32 rate here) or float32, in slices of SCREEN_CHUNK pixels whose partial products are
summed in float64 (:mod:`workbench.search.layout`).  Every screened value comes with a bound on
its error (:mod:`workbench.search.bounds`: per pair for bf16, one for all pairs for float32).

Rescore.  Each pair gets a screened interval [s~ - e, s~ + e] that holds its true r.  Let L be a
query's k-th largest lower end: its true k-th best r is at least L.  So every image whose upper
end reaches L is a candidate (tracked with the running L as blocks stream by, which is never
above the final L), and the candidates are rescored in float64 over the stored values.  The top
k of the rescored candidates is the float64 brute-force top k (ties to the lower index).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from ..progress import tqdm

from ..errors import TooFewReferenceImages
from ..data.store import SliceStore
from .bounds import ieee_float32, pair_error, screen_error_bound, split_norms
from .layout import PAD, SCREEN_CHUNK, offset_columns, pad_slices, slice_bounds
from .normalise import single_thread
from .result import SearchResult, mark_constant_queries
from .sources import read_rows

#: chunks of candidate rows (about 4 MB each) read ahead from a store while one is rescored
RESCORE_AHEAD = 4
#: the float64 rescore shares a chunk's rows out between torch's threads from this many pixels on:
#: two threads of single-threaded ddots took 0.61-0.80x the time of one at 32,768-65,536 pixels,
#: but 0.96-1.2x at 16,384, where each product (about 5 us) is too short for the handover of
#: Python's lock between them (BENCHMARKS.md, issue 16 item 20)
SHARE_MIN_DIM = 32768


def screen_and_rescore(q64: torch.Tensor, const_q: np.ndarray, blocks, reference, select, *, k: int,
                       n_reference: int, dtype, dev, progress: bool, ref_lift: float = 0.0,
                       stacklevel: int = 3, stats=None, known=None, by_label=None) -> SearchResult:
    """Screen normalised reference blocks, then rescore exactly.

    ``blocks`` yields ``(cols, vectors, constant, pair_mask, norms)``: the reference positions of
    the block's rows, their low-precision unit vectors, which are constant, optionally a
    (Q, len(cols)) mask of the pairs to evaluate (pruned pairs are left out), and for a bf16
    screen the rows' split norms (:func:`~workbench.search.bounds.split_norms`).  ``ref_lift`` is
    added to every reference's ||y_l|| (NORMALISE_F32 where the reference was normalised in
    float32).  ``stats``: the reference rows' :func:`row_stats`, where an index stored them (the
    rescore then reads each row once, without a pass for its mean and norm).  ``stacklevel``: where
    the warnings about constant images point, counted from here
    (3: the caller of this function's caller).  ``known``: ``(qi, ri, values, floor)``, pairs
    already evaluated exactly (numpy; a pruned search's seeds, where ``method="auto"`` went on by
    brute force) and per query a lower bound on its k-th best r (float64, -inf where none): the
    screen's running k-th best starts at the floor, and the rescore takes their values.  Raises
    :class:`~workbench.errors.TooFewReferenceImages` when fewer than ``k`` reference images are
    non-constant.  ``by_label``: ``(codes, k_labels, k_plain)``, a label number per reference
    position: the screen's level is the labels' once k_labels labels are seen (:func:`labelled_level`;
    the k-th pair's before), and only the pairs that may be the plain top ``k_plain`` or a label's
    best among the ``k_labels`` best labels are rescored (:func:`label_keep`); the result holds the
    top ``k_plain`` and ``by_label`` (:func:`label_best`).
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
        off_cols = torch.tensor(offset_columns(select.dim), device=dev)
        # each query's share of its energy per slice: the offset of slice c is t * share_c
        share = torch.stack([(q64[:, a:b] ** 2).sum(dim=1) for a, b in slice_bounds(select.dim)], dim=1).float().to(dev)
        t_sum = torch.zeros(nq, dtype=torch.float64, device=dev)
        t_abs = torch.zeros(nq, device=dev)
    q_lo = q_lo.to(dev)
    # screen: running k-th best lower bound per query, and the candidate pairs with their upper bound
    run_top = torch.full((nq, 0), -math.inf, device=dev)
    label_max = None
    if by_label is not None and by_label[1] <= int(by_label[0].max()) + 1 \
            and nq * (int(by_label[0].max()) + 1) <= LABEL_LEVEL_ENTRIES:
        # told the labels: a pair below both the k_labels-th best label's best lower end and the
        # plain top k_plain's is neither a best label's best nor in the plain top (labelled_level)
        label_codes = torch.from_numpy(np.asarray(by_label[0], dtype=np.int64)).to(dev)
        label_max = torch.full((nq, int(by_label[0].max()) + 1), -math.inf, device=dev)
        label_run = torch.full((nq,), -math.inf, device=dev)
    cand_q, cand_r, cand_s, cand_lo = [], [], [], []
    const_r = []
    screened = 0
    dead = torch.from_numpy(const_q).to(dev) if const_q.any() else None
    floor = None
    if known is not None:  # float32, rounded down: still a lower bound
        floor = known[3].float()
        floor = torch.where(floor.double() > known[3], torch.nextafter(floor, torch.tensor(-math.inf)), floor).to(dev)
    t_screen = time.perf_counter()
    with ieee_float32():  # TF32 or bf16 inside float32 products would break the error bounds
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
            s, err = screen(q_lo, r_lo, qn, rn, eps, offsets)
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
            if label_max is not None:
                label_max.scatter_reduce_(1, label_codes[torch.from_numpy(cols).to(dev)].expand(nq, -1), lower, "amax")
                # never lowered: a pair left out under an earlier block's level (the k'-th pair's, before
                # k labels were seen) stays below every later one, as label_best's completeness needs
                label_run = torch.maximum(label_run, labelled_level(level, run_top, label_max, by_label))
                level = label_run
            if floor is not None:
                level = torch.maximum(level, floor)
            qi, ri = mask_pairs((upper >= level[:, None]) & (upper > -math.inf))
            cand_q.append(qi.cpu())
            cand_r.append(torch.from_numpy(cols)[ri.cpu()])
            cand_s.append(upper[qi, ri].cpu())
            if by_label is not None:
                cand_lo.append(lower[qi, ri].cpu())
            bar.update(len(c))
        bar.close()
    const_r = np.concatenate(const_r) if const_r else np.zeros(0, dtype=np.int64)
    if n_reference - len(const_r) < k:
        n_valid = n_reference - len(const_r)
        raise TooFewReferenceImages(f"k={k} but only {n_valid} reference images are non-constant", k=k, available=n_valid)
    if len(const_r):
        warnings.warn(f"{len(const_r)} reference image(s) are constant (zero variance) and cannot be matched: "
                      f"{const_r[:10].tolist()}", stacklevel=stacklevel)

    t_screen = time.perf_counter() - t_screen
    t_rescore = time.perf_counter()
    # keep the candidates that can still reach the final k-th place, and rescore them exactly
    final_level = run_top[:, -1].cpu() if run_top.shape[1] == k else torch.full((nq,), -math.inf)
    if label_max is not None:
        final_level = label_run.cpu()
    if floor is not None:
        final_level = torch.maximum(final_level, floor.cpu())
    qi, ri, si = torch.cat(cand_q), torch.cat(cand_r), torch.cat(cand_s)
    keep = si >= final_level[qi]
    qi, ri = qi[keep].numpy(), ri[keep].numpy()
    if by_label is not None:
        codes, k_labels, k_out = by_label
        wanted = label_keep(qi, ri, torch.cat(cand_lo)[keep].double().numpy(), si[keep].double().numpy(), codes,
                            k_labels, k_out, nq)
        qi, ri = qi[wanted], ri[wanted]
    else:
        k_out = k
    exact, have = known_values(qi, ri, *(known[:3] if known is not None else (qi[:0], ri[:0], np.zeros(0))),
                               n_reference)
    exact[~have] = exact_pairs(q64, reference, select, qi[~have], ri[~have], stats)
    values, indices = top_of(qi, ri, exact, k_out, nq)
    labelled = None
    if by_label is not None:
        labelled = label_best(qi, ri, exact, codes, k_labels, nq, final_level.double().numpy())
        labelled[0][const_q], labelled[1][const_q] = -np.inf, -1  # no r: as the plain answer marks them
    rescored = int((~have).sum())
    t_rescore = time.perf_counter() - t_rescore
    mark_constant_queries(values, indices, const_q, stacklevel=stacklevel + 1)
    info = {"precision": "bf16" if per_pair else "float32", "device": str(dev),
            "seconds": {"screen_s": round(t_screen, 4), "rescore_s": round(t_rescore, 4)},
            "error_bound": eps, "bound": "per pair" if per_pair else "uniform",
            "pixels": select.dim, "screened_pairs": screened, "candidates_per_query": len(qi) / max(nq, 1)}
    return SearchResult(values, indices, const_q, const_r, pairs=nq * n_reference, rescored=rescored, stats=info,
                        by_label=labelled)


def labelled_level(level: torch.Tensor, run_top: torch.Tensor, label_max: torch.Tensor, by_label) -> torch.Tensor:
    """A screen's level told the labels: the smaller of the k_labels-th best label's best lower end
    (``label_max``: each label's best lower end so far, per query) and the k_plain-th best pair's
    (``run_top``, descending), where k labels were seen; else ``level`` (the k'-th best pair's).

    Every best label's best and every plain top pair is at or above it, so the answer is complete in
    one pass whatever k' was asked for: a query whose 5th subject comes past its k'-th pair (4 % on
    the brain phantoms at k' = 129) is no longer searched again; the candidates are those above its
    5th subject's best, not its k' best pairs (BENCHMARKS.md, issue 16 item 25)."""
    k_labels, k_plain = by_label[1], by_label[2]
    by_labels = torch.topk(label_max, k_labels, dim=1).values[:, -1]
    plain = run_top[:, k_plain - 1] if run_top.shape[1] >= k_plain else torch.full_like(level, -math.inf)
    return torch.where(torch.isfinite(by_labels), torch.minimum(by_labels, plain), level)


def screen(q_lo: torch.Tensor, r_lo: torch.Tensor, qn=None, rn=None, eps: float = 0.0, offsets=None):
    """Screened products and their per-pair error bound (:mod:`workbench.search.bounds`).

    float32 (``qn`` None): vectors longer than SCREEN_CHUNK are multiplied in slices whose
    partial products are summed in float64; every pair gets the uniform bound ``eps``.
    bf16: both sides are in the padded layout (:func:`~workbench.search.layout.pad_slices`);
    ``offsets`` = ``(t_sum, t_abs)`` per query, the sum and the sum of |t| of the offsets written
    into the query's offset columns (each slice's product comes out as x_c.y_c - t_c, so its bf16
    rounding is relative to the small difference, not to r).
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
    return s.float(), pair_error(qn, rn, out_abs, t_abs)


def known_values(qi: np.ndarray, ri: np.ndarray, kq: np.ndarray, kr: np.ndarray, kv: np.ndarray, n: int):
    """The values of the pairs (qi, ri) among the known pairs (kq, kr) of values kv: ``(values,
    have)``, NaN where a pair is not known."""
    keys = kq.astype(np.int64) * n + kr
    order = np.argsort(keys)
    keys = keys[order]
    want = qi.astype(np.int64) * n + ri
    at = np.clip(np.searchsorted(keys, want), 0, max(0, len(keys) - 1))
    have = (keys[at] == want) if len(keys) else np.zeros(len(want), dtype=bool)
    values = np.full(len(want), np.nan)
    values[have] = kv[order][at[have]]
    return values, have


def top_of(qi: np.ndarray, ri: np.ndarray, exact: np.ndarray, k: int, nq: int):
    """Per query the top k ``(values, indices)`` of the pairs (qi, ri) of exact r ``exact``: r
    descending, ties to the lower index; -inf and -1 past a query's pairs."""
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


#: at most this many (query, label) entries of a screen's running best lower end per label
#: (:func:`screen_and_rescore` told the labels; more labels, as one image each, keep the k' list)
LABEL_LEVEL_ENTRIES = 1 << 25
#: entries of one (queries x pairs) block of :func:`kth_largest`
KTH_BLOCK = 1 << 22


def kth_largest(values: np.ndarray, qi: np.ndarray, nq: int, k: int) -> np.ndarray:
    """Per query the k-th largest of ``values`` over its pairs (-inf with fewer than k).

    The pairs are grouped by query (already, where ``qi`` is sorted, as a pruned search's are), and
    the queries with as many pairs go together: their pairs as the rows of a block padded with
    -inf, each row partitioned at its k-th largest in one call (a lexsort of 3 million pairs took
    1.0 s, this 0.1-0.3 s: BENCHMARKS.md, issue 16 item 25)."""
    out = np.full(nq, -np.inf)
    qi = np.asarray(qi, dtype=np.int64)
    if len(qi) and np.any(qi[1:] < qi[:-1]):
        order = torch.sort(torch.from_numpy(qi), stable=True).indices.numpy()
        values = values[order]
    counts = np.bincount(qi, minlength=nq)
    starts = np.cumsum(counts) - counts
    has = np.flatnonzero(counts >= k)
    has = has[np.argsort(counts[has], kind="stable")]
    a = 0
    while a < len(has):  # a block of queries whose counts are within 2x of the block's first
        low = counts[has[a]]
        b = a + int(np.searchsorted(counts[has[a:]], 2 * low, side="right"))
        b = max(a + 1, min(b, a + KTH_BLOCK // max(1, int(counts[has[b - 1]]))))
        rows = has[a:b]
        width = int(counts[rows[-1]])
        at = starts[rows][:, None] + np.arange(width)[None, :]
        block = np.where(np.arange(width)[None, :] < counts[rows][:, None],
                         values[np.minimum(at, len(values) - 1)], -np.inf)
        out[rows] = np.partition(block, width - k, axis=1)[:, width - k]
        a = b
    return out


def label_level(qi: np.ndarray, ri: np.ndarray, lower: np.ndarray, codes: np.ndarray, k_labels: int,
                nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(level, best_low, at)``: per query the k_labels-th largest of its labels' best lower ends
    (-inf with fewer labels), each (query, label)'s best lower end, and each pair's entry in it."""
    n_codes = int(codes.max()) + 1
    keys, at = np.unique(qi.astype(np.int64) * n_codes + codes[ri], return_inverse=True)
    best_low = np.full(len(keys), -np.inf)
    np.maximum.at(best_low, at, lower)
    return kth_largest(best_low, keys // n_codes, nq, k_labels), best_low, at


def labelled_floor(floor: np.ndarray, qi: np.ndarray, ri: np.ndarray, lower: np.ndarray, by_label, nq: int):
    """A pruned search's threshold told the labels (:func:`labelled_level` on pairs): per query the
    smaller of the k_labels-th best label's best lower end and the k_plain-th best pair's lower end,
    where the pairs hold k labels; else ``floor``."""
    codes, k_labels, k_plain = by_label
    by_labels = label_level(qi, ri, lower, codes, k_labels, nq)[0]
    return np.where(np.isfinite(by_labels), np.minimum(by_labels, kth_largest(lower, qi, nq, k_plain)), floor)


def label_keep(qi: np.ndarray, ri: np.ndarray, lower: np.ndarray, upper: np.ndarray, codes: np.ndarray,
               k_labels: int, k_plain: int, nq: int) -> np.ndarray:
    """Which candidate pairs a search for the plain top ``k_plain`` and for the best image of each
    of the ``k_labels`` best labels (``codes``: a label number per reference position) must
    rescore, from their screened intervals [lower, upper].

    A label's best r is at least L_label, the largest lower end among its pairs, and the k-th best
    label's at least the k-th largest L_label, so a pair can be its label's best and among the k best
    labels only where its upper end reaches both; the plain top k needs the pairs whose upper end
    reaches the k-th largest lower end.  The others are never rescored: on slices of volumes most of
    a top-k' list's pairs are a few subjects' neighbouring slices (BENCHMARKS.md, issue 16 item 24)."""
    level, best_low, at = label_level(qi, ri, lower, codes, k_labels, nq)
    keep = upper >= np.maximum(level[qi], best_low[at])
    return keep | (upper >= kth_largest(lower, qi, nq, k_plain)[qi])


def label_best(qi: np.ndarray, ri: np.ndarray, exact: np.ndarray, codes: np.ndarray, k_labels: int, nq: int,
               level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, indices, complete)``: per query the best pair of each of its ``k_labels`` best
    labels among the rescored pairs (r descending, ties to the lower index, as the first image of
    each label in the exact ordered list), and whether that is the answer: every pair left out of
    the screen's candidates has r below the query's ``level``, so where the k-th label's best
    reaches it no other label can."""
    lab = codes[ri]
    order = np.lexsort((ri, -exact, lab, qi))  # query, label, r descending, lower index
    q_s, l_s = qi[order], lab[order]
    best = order[np.r_[True, (q_s[1:] != q_s[:-1]) | (l_s[1:] != l_s[:-1])]] if len(order) else order
    values, indices = top_of(qi[best], ri[best], exact[best], k_labels, nq)
    return values, indices, (indices[:, -1] >= 0) & (values[:, -1] >= level)


def mask_pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nonzero(mask, as_tuple=True)`` of a 2D bool mask (row-major order); on the CPU by
    numpy's ``flatnonzero``, which took 7-9 ms where torch.nonzero took 24-45 ms for 1,000 x 16,384
    at 0.5 % density, a block of the pruned search's survivors at (b) (BENCHMARKS.md, issue 16
    item 22)."""
    if mask.device.type != "cpu":
        return torch.nonzero(mask, as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    return flat // mask.shape[1], flat % mask.shape[1]


def exact_pairs(q64: torch.Tensor, reference, select, qi: np.ndarray, ri: np.ndarray, stats=None) -> np.ndarray:
    """Exact float64 r of the pairs (qi[j], ri[j]), reading the reference rows once each."""
    order = np.argsort(ri, kind="stable")
    out = np.empty(len(qi))
    out[order] = _exact_sorted(q64, reference, select, qi[order], ri[order], stats)
    return out


def row_stats(flat) -> np.ndarray:
    """Per row ``[mean, ||row - mean||]`` in float64 (m x 2), by numpy's pairwise sums, which give
    the same bits in every process whatever its thread count or the rows beside it."""
    # a private copy (centred and squared in place), in row order: a masked selection comes
    # column-ordered from numpy, and its rows were then summed one column at a time, whose bits
    # differ from a row's alone (a row rescored alone got another mean than the index stored)
    x = np.array(flat, dtype=np.float64, order="C")
    mean = x.mean(axis=1)
    x -= mean[:, None]
    np.square(x, out=x)
    return np.stack([mean, np.sqrt(x.sum(axis=1))], axis=1)


def _exact_sorted(q64: torch.Tensor, reference, select, qi: np.ndarray, ri: np.ndarray, stats=None) -> np.ndarray:
    """Exact r of pairs sorted by reference row: each row is read once and widened to float64
    once, then one float64 dot product per pair (a pair's value never depends on the other pairs).

    For a unit query x (sum s_x) and a raw row y of mean m and centred norm n (:func:`row_stats`),
    r = x.(y - m)/n = (x.y - m s_x)/n, so a row needs no normalising pass.  Rows of a store are
    read in store order, a chunk at a time, into one buffer; rows of an array in memory are
    taken in place, a few MB of them at a time.  Each row is widened (exactly) into one reused
    float64 row: a fresh float64 copy per pair cost 70-100 us for 16,384 pixels, its pages
    faulting in, against 4 us for the copy into the reused row (rescore at workload (a), k = 5 /
    200: 37 / 730 ms -> 24 / 490 ms, the same bits: BENCHMARKS.md, issue 16 item 15).  The dot
    products are numpy's BLAS ``ddot`` held to one thread (twice the speed of ``torch.dot``
    here): a threaded BLAS sums in a thread-count-dependent order, and every process, Dask
    workers included, must give each pair the same bits.  For images of SHARE_MIN_DIM pixels or
    more the rows of a chunk are shared out between torch's threads instead (:func:`_shares`),
    each pair still one single-threaded ddot.
    """
    exact = np.empty(len(qi))
    if not len(qi):
        return exact
    qn = q64.numpy()
    # the sums of the queries paired here only, each row's own pairwise sum in place: the same bits
    # as a sum over all rows (tested), which took 3-5 ms for (a)'s 256 queries, a fixed cost of
    # every exact evaluation that misled method="auto"'s sample of the seeds (BENCHMARKS.md, issue 16 item 20)
    qsum = {q: qn[q].sum() for q in np.unique(qi).tolist()}
    first = np.flatnonzero(np.r_[True, ri[1:] != ri[:-1]])  # each row's first pair
    last = np.r_[first[1:], len(ri)]
    rows = ri[first]
    given = None if stats is None else np.asarray(stats)[rows].tolist()
    threads = max(1, torch.get_num_threads()) if select.dim >= SHARE_MIN_DIM else 1
    widened = [np.empty(select.dim) for _ in range(threads)]  # each thread's row widened to float64
    first, last, qi = first.tolist(), last.tolist(), qi.tolist()

    def work(share: int, g0: int, raw, st, a: int, b: int):
        """Rows a..b-1 of the chunk ``raw`` (candidate rows g0 + a...), in this share's own row."""
        row64 = widened[share]
        for j in range(a, b):
            np.copyto(row64, raw[j])
            mean, norm = st[j]
            for p in range(first[g0 + j], last[g0 + j]):
                q = qi[p]
                exact[p] = (np.dot(qn[q], row64) - mean * qsum[q]) / norm

    g = 0  # the chunk's first place among the candidate rows
    with single_thread(), ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for chunk, raw in _candidate_rows(reference, select, rows):  # in order
            st = row_stats(raw).tolist() if given is None else given[g:g + len(chunk)]
            cuts = _shares(first[g:g + len(chunk)] + [last[g + len(chunk) - 1]], threads)
            if pool is None or len(cuts) == 2:
                work(0, g, raw, st, cuts[0], cuts[-1])
            else:  # every share done before the next chunk: a store's reader reuses the chunk's buffer
                list(pool.map(work, range(len(cuts) - 1), [g] * (len(cuts) - 1), [raw] * (len(cuts) - 1),
                              [st] * (len(cuts) - 1), cuts[:-1], cuts[1:]))
            g += len(chunk)
    return exact


def _shares(bounds: list, parts: int) -> list:
    """Cut a chunk's rows into at most ``parts`` runs of about equal numbers of pairs.  ``bounds``:
    each row's first pair, then the last row's end; returns the rows where runs start, and the end."""
    n_rows = len(bounds) - 1
    if parts <= 1 or n_rows <= 1:
        return [0, n_rows]
    start, total = bounds[0], bounds[-1] - bounds[0]
    cuts = [0]
    for s in range(1, parts):
        at = int(np.searchsorted(bounds, start + total * s / parts))
        if cuts[-1] < at < n_rows:
            cuts.append(at)
    return cuts + [n_rows]


def _candidate_rows(reference, select, rows: np.ndarray):
    """``(positions, pixels)`` for the sorted reference ``rows``, in order, a chunk (~4 MB of
    float32 rows) at a time: a store's read into one buffer, an array's a list of its rows in
    place (views where nothing is selected out)."""
    step = max(1, 2**22 // (4 * select.dim))
    chunks = [rows[s:s + step] for s in range(0, len(rows), step)]
    if isinstance(reference, np.ndarray):  # in place (views of the rows): no gather into fresh memory
        plain = select.channels is None and select.mask is None and reference.flags.c_contiguous
        flat = reference.reshape(len(reference), -1) if plain else None
        for chunk in chunks:
            yield chunk, [flat[j] if plain else np.asarray(select(reference[j:j + 1]))[0] for j in chunk]
        return
    if not isinstance(reference, SliceStore):
        for chunk in chunks:
            yield chunk, np.asarray(select(read_rows(reference, chunk)))
        return
    # from a store, the next RESCORE_AHEAD chunks are read from disk while one is rescored
    # (AheadReader: rows on disk at (b), k = 5, the rescore took 1.6 s read as it came against 0.8 s cached)
    with reference.reader(RESCORE_AHEAD) as reader:
        for chunk, got in zip(chunks, reader.stream(chunks, RESCORE_AHEAD + 1)):
            yield chunk, np.asarray(select(got))
