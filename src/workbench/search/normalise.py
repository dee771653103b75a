"""Z-normalisation: image rows to zero-mean unit vectors, whose dot product is Pearson r.

The exact float64 side (queries, the rescore) must give every pair the same bits in every
process, Dask workers included, whatever their thread count: :class:`single_thread` holds torch
to one thread where that matters.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from ..errors import WorkbenchError
from .sources import iter_blocks

#: rows normalised together in float64 (bytes), a block per thread: 4 MB blocks in two threads took 11 ms
#: for 256 x 16,384 pixels, whole-array passes 16 ms, 1 MB blocks 14 ms, 32 MB 22 ms
NORMALISE_BLOCK_BYTES = 2**22


def normalise(flat: np.ndarray, dtype, device="cpu", out: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Z-normalised unit vectors in ``dtype`` (computed in float64 for float64, else float32).

    Works in place on a private copy: this runs on every reference block, so it is kept to a
    few passes over memory.  The float64 path (queries, the index, the rescore) uses numpy's
    pairwise sums along each row, which give the same bits in every process whatever its thread
    count or blocking (tested); its ``out`` (float64, the shape of ``flat``) receives the result
    without a further copy.
    """
    if dtype == torch.float64:
        flat = np.asarray(flat)
        x = np.empty(flat.shape, dtype=np.float64) if out is None else out
        constant = np.zeros(len(x), dtype=bool)
        mean_ok = np.ones(len(x), dtype=bool)
        step = max(1, NORMALISE_BLOCK_BYTES // (8 * max(1, x.shape[1])))
        starts = range(0, len(x), step)

        def rows(a: int) -> None:
            # every operation is per row (numpy's pairwise sums along the row): a row's bits do not
            # depend on the block or the thread that computes it
            b = min(a + step, len(x))
            xb = x[a:b]
            np.copyto(xb, flat[a:b])
            mean = xb.mean(axis=1, keepdims=True)
            mean_ok[a:b] = np.isfinite(mean[:, 0])
            xb -= mean
            norm = np.linalg.norm(xb, axis=1)
            constant[a:b] = norm <= 1e-6 * np.abs(mean[:, 0]) * math.sqrt(x.shape[1])
            xb /= np.where(constant[a:b], 1.0, norm)[:, None]
            xb[constant[a:b]] = 0

        # blocks of rows that stay in cache through the five passes, in parallel threads (numpy
        # releases the GIL; NORMALISE_BLOCK_BYTES)
        workers = min(torch.get_num_threads(), len(starts))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(rows, starts))
        else:
            for a in starts:
                rows(a)
        if not mean_ok.all():  # a NaN or inf anywhere in a row reaches its mean
            raise WorkbenchError("images contain non-finite pixels (NaN or inf)")
        return torch.from_numpy(x).to(device), constant
    # blocks are private copies (SliceStore.read, iter_blocks), so this may work on them in place
    x = torch.from_numpy(np.ascontiguousarray(flat)).to(device=device, dtype=torch.float32)
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


class single_thread:
    """Run torch and numpy's BLAS single-threaded: a threaded dot product sums in a
    thread-count-dependent order, and every process (Dask workers included) must give each pair
    the same float64 bits."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)
        self.blas = _blas().limit(limits=1, user_api="blas")
        self.blas.__enter__()

    def __exit__(self, *exc):
        self.blas.__exit__(*exc)
        torch.set_num_threads(self.n)


_BLAS = []


def _blas() -> ThreadpoolController:
    """One controller of the loaded BLAS libraries for the process: ``threadpool_limits`` scans
    them afresh each time, 0.5-1.5 ms a call, a fixed cost of every exact evaluation (a sample of
    the seeds of 78 pairs took 4.5 ms at (a), 25 us a pair in a larger batch; BENCHMARKS.md, issue
    16 item 20).  Made on first use, when numpy's BLAS is loaded."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def prepare_queries(queries, select) -> tuple[torch.Tensor, np.ndarray]:
    """Exact float64 z-normalised queries and their constant mask (filled in place, block by block:
    1,000 queries of 5 x 256 x 256 are 2.6 GB in float64, and a concatenation would double that)."""
    n = len(queries)
    q64 = torch.empty((n, select.dim), dtype=torch.float64)
    const_q = np.zeros(n, dtype=bool)
    # views of an array's blocks: the float64 normalisation reads them into q64 and leaves them be
    # (a private copy of each block first took 0.26 s of a search at (b), fresh memory faulting in)
    for start, block in iter_blocks(queries, 256, copy=False):
        flat = select(block)  # numpy: the same bits in every process; written straight into q64
        _, const_q[start:start + len(flat)] = normalise(flat, torch.float64, out=q64[start:start + len(flat)].numpy())
    return q64, const_q
