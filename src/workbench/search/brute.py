"""Exact top-k Pearson correlation by blocked matrix products (CPU or CUDA).

Pearson r of two images is the dot product of their z-normalised, unit-norm pixel vectors
(all pixels of all channels).  So the search is one matrix product of the normalised queries
with the normalised reference, done block by block as the reference streams from disk.

Exactness.  The products are screened in float32; the surviving candidates are rescored in
float64 over the stored values, and a query's answer is accepted only when the float32
error bound proves no discarded image can beat its k-th best:

    |fl32(x.y) - x.y| <= eps  for unit vectors x, y of length D, with
    eps = 2u + gamma_D,  u = 2**-24 (float32 unit roundoff), gamma_D = D u / (1 - D u)

(2u covers rounding x and y to float32, |sum x_i y_i| <= ||x|| ||y|| = 1; gamma_D is the
worst-case accumulation error of a D-term dot product, Higham, *Accuracy and Stability of
Numerical Algorithms*, eq. 3.5).  Queries that this cannot certify (near-ties at the k-th
place) are searched again in float64.  The result is the float64 brute-force top-k.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.store import SliceStore
from ..errors import WorkbenchError

#: extra float32 candidates kept per query beyond k, so that near-ties are usually certified
#: without a second pass
EXTRA_CANDIDATES = 16
#: reference images per block: about this many bytes of float32 per block
BLOCK_BYTES = 256 * 2**20


@dataclass
class SearchResult:
    """Top-k matches: ``values`` (Q, k) Pearson r, descending; ``indices`` (Q, k) into the reference.

    Constant (zero-variance) queries have no Pearson r: their rows hold index -1 and value
    -inf, and ``constant_queries`` marks them.  Constant reference images are never matched
    and are listed in ``constant_reference``.  Unpacks as ``values, indices = result``.
    """

    values: np.ndarray
    indices: np.ndarray
    constant_queries: np.ndarray
    constant_reference: np.ndarray
    pairs: int = 0
    rechecked_queries: int = 0

    def __iter__(self):
        return iter((self.values, self.indices))


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


def _shape(src) -> tuple[int, ...]:
    return tuple(src.shape)


def _blocks(src, size: int):
    if isinstance(src, SliceStore):
        yield from src.blocks(size)
    else:
        for start in range(0, len(src), size):
            yield start, np.asarray(src[start:start + size])


def _normalise(block: np.ndarray, dtype) -> tuple[torch.Tensor, np.ndarray]:
    """Z-normalised unit vectors (in float64 first, then cast) and the mask of constant rows."""
    x = torch.from_numpy(np.asarray(block, dtype=np.float64).reshape(len(block), -1))
    if not torch.isfinite(x).all():
        raise WorkbenchError("images contain non-finite pixels (NaN or inf)")
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    constant = (norm[:, 0] <= 1e-12 * math.sqrt(x.shape[1])).numpy()
    x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    x[torch.from_numpy(constant)] = 0
    return x.to(dtype), constant


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device='cuda' asked for, but torch sees no CUDA GPU")
    return dev


def float32_error_bound(dim: int) -> float:
    """Bound on |float32 dot - exact dot| for unit vectors of length ``dim`` (see module doc)."""
    u = 2.0**-24
    return 2 * u + dim * u / (1 - dim * u)


def _merge_topk(vals, idx, new_vals, new_idx, keep):
    """Merge running top-``keep`` with new candidates; return merged and the best value dropped."""
    v = torch.cat([vals, new_vals], dim=1)
    i = torch.cat([idx, new_idx], dim=1)
    keep = min(keep, v.shape[1])
    top_v, pos = torch.topk(v, keep, dim=1)
    dropped = torch.full((v.shape[0],), -math.inf, dtype=v.dtype, device=v.device)
    if v.shape[1] > keep:
        mask = torch.ones_like(v, dtype=torch.bool)
        mask.scatter_(1, pos, False)
        dropped = torch.where(mask, v, torch.full_like(v, -math.inf)).max(dim=1).values
    return top_v, torch.gather(i, 1, pos), dropped


def topk_correlation(queries, reference, k: int = 1, *, device: str = "auto",
                     block_size: int | None = None, progress: bool = False) -> SearchResult:
    """For each query image, the ``k`` reference images with the highest Pearson r.

    Parameters
    ----------
    queries, reference : numpy arrays or torch tensors ``(N, C, H, W)`` / ``(N, H, W)``, or
        SliceStores (views too).  r is computed over all pixels of all channels.
    k : matches per query.
    device : ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    block_size : reference images per block (default: about 256 MB of float32).

    Returns
    -------
    SearchResult with ``values`` (Q, k) descending and ``indices`` (Q, k) into ``reference``.

    >>> values, indices = topk_correlation(synthetic, train.where(split="train"), k=1)   # doctest: +SKIP
    """
    queries = _as_source(queries, "queries")
    reference = _as_source(reference, "reference")
    qshape, rshape = _shape(queries), _shape(reference)
    if qshape[1:] != rshape[1:]:
        raise WorkbenchError(f"queries have images of shape {qshape[1:]} but reference images are {rshape[1:]}")
    if rshape[0] == 0 or qshape[0] == 0:
        raise WorkbenchError("empty queries or reference: nothing to search")
    if not 1 <= k <= rshape[0]:
        raise WorkbenchError(f"k={k} must be between 1 and the reference size {rshape[0]}")
    dev = _pick_device(device)
    dim = int(np.prod(rshape[1:]))
    block_size = block_size or max(1, BLOCK_BYTES // (4 * dim))
    keep = k + EXTRA_CANDIDATES

    q64 = []
    const_q = []
    for _, block in _blocks(queries, 4096):
        qn, c = _normalise(block, torch.float64)
        q64.append(qn)
        const_q.append(c)
    q64 = torch.cat(q64)
    const_q = np.concatenate(const_q)
    q32 = q64.to(torch.float32).to(dev)
    nq = q64.shape[0]

    run_v = torch.full((nq, 0), -math.inf, device=dev)
    run_i = torch.zeros((nq, 0), dtype=torch.int64, device=dev)
    dropped = torch.full((nq,), -math.inf, device=dev)
    const_r = []
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would break the float32 error bound
    try:
        bar = tqdm(total=rshape[0], desc="searching", unit="img", disable=not progress)
        for start, block in _blocks(reference, block_size):
            rn, c = _normalise(block, torch.float32)
            const_r.append(np.flatnonzero(c) + start)
            s = q32 @ rn.to(dev).T
            if c.any():
                s[:, torch.from_numpy(c).to(dev)] = -math.inf
            bk = min(keep, s.shape[1])
            bv, bi = torch.topk(s, bk, dim=1)
            # anything of this block not among its top bk is below the bk-th value
            if s.shape[1] > bk:
                dropped = torch.maximum(dropped, bv[:, -1])
            run_v, run_i, d = _merge_topk(run_v, run_i, bv, bi + start, keep)
            dropped = torch.maximum(dropped, d)
            bar.update(len(block))
        bar.close()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    const_r = np.concatenate(const_r)
    n_valid = rshape[0] - len(const_r)
    if n_valid < k:
        raise WorkbenchError(f"k={k} but only {n_valid} reference images are non-constant")
    if len(const_r):
        warnings.warn(f"{len(const_r)} reference image(s) are constant (zero variance) and cannot be matched: {const_r[:10].tolist()}", stacklevel=2)

    # float64 rescore of every kept candidate, over the stored values
    cand = run_i.cpu().numpy()
    cand_ok = np.isfinite(run_v.cpu().numpy())
    values, indices = _rescore(q64, reference, cand, cand_ok, k)
    eps = float32_error_bound(dim)
    uncertain = values[:, -1] < dropped.cpu().numpy().astype(np.float64) + eps
    uncertain &= ~const_q
    if uncertain.any():  # near-ties at the k-th place: settle them in float64
        qi = np.flatnonzero(uncertain)
        v2, i2 = _float64_search(q64[qi], reference, k, block_size, const_r)
        values[qi], indices[qi] = v2, i2
    values[const_q] = -np.inf
    indices[const_q] = -1
    if const_q.any():
        warnings.warn(f"{int(const_q.sum())} query image(s) are constant (zero variance); Pearson r is undefined for them and they are reported with index -1: {np.flatnonzero(const_q)[:10].tolist()}", stacklevel=2)
    return SearchResult(values, indices, const_q, const_r, pairs=nq * rshape[0], rechecked_queries=int(uncertain.sum()))


def _read_rows(reference, rows: np.ndarray) -> np.ndarray:
    if isinstance(reference, SliceStore):
        return reference.read(rows)
    return np.asarray(reference[rows])


def _rescore(q64: torch.Tensor, reference, cand: np.ndarray, cand_ok: np.ndarray, k: int):
    """Exact float64 r for each query's candidates; return the top k, descending."""
    uniq = np.unique(cand[cand_ok])
    exact = np.full(cand.shape, -np.inf)
    col = {int(r): j for j, r in enumerate(uniq)}
    for s in range(0, len(uniq), 2048):
        rows = uniq[s:s + 2048]
        rn, c = _normalise(_read_rows(reference, rows), torch.float64)
        prod = (q64 @ rn.T).numpy()
        prod[:, c] = -np.inf
        qi, ci = np.nonzero(cand_ok & np.isin(cand, rows))
        exact[qi, ci] = prod[qi, [col[int(r)] - s for r in cand[qi, ci]]]
    order = _sort_desc(exact, cand)[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)


def _sort_desc(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row, positions sorted by value descending, ties by smaller index first."""
    return np.stack([np.lexsort((i, -v)) for v, i in zip(values, idx)])


def _float64_search(q64: torch.Tensor, reference, k: int, block_size: int, const_r: np.ndarray):
    vals = np.full((len(q64), 0), -np.inf)
    idx = np.zeros((len(q64), 0), dtype=np.int64)
    for start, block in _blocks(reference, block_size):
        rn, c = _normalise(block, torch.float64)
        s = (q64 @ rn.T).numpy()
        s[:, c] = -np.inf
        v = np.concatenate([vals, s], axis=1)
        i = np.concatenate([idx, np.broadcast_to(np.arange(start, start + len(block)), s.shape)], axis=1)
        order = _sort_desc(v, i)[:, :k]
        vals, idx = np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)
    return vals, idx
