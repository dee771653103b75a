"""Z-normalisation: image rows to zero-mean unit vectors, whose dot product is Pearson r.

The exact float64 side (queries, the rescore) must give every pair the same bits in every
process, Dask workers included, whatever their thread count: :class:`single_thread` holds torch
to one thread where that matters.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import WorkbenchError
from .sources import iter_blocks


def normalise(flat: np.ndarray, dtype, device="cpu", out: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Z-normalised unit vectors in ``dtype`` (computed in float64 for float64, else float32).

    Works in place on a private copy: this runs on every reference block, so it is kept to a
    few passes over memory.  The float64 path (queries, the index, the rescore) uses numpy's
    pairwise sums, which give the same bits in every process whatever its thread count; its
    ``out`` (float64, the shape of ``flat``) receives the result without a further copy.
    """
    if dtype == torch.float64:
        if out is None:
            x = np.array(flat, dtype=np.float64)  # a private copy, worked on in place
        else:
            x = out
            np.copyto(x, flat)
        mean = x.mean(axis=1, keepdims=True)
        if not np.isfinite(mean).all():  # a NaN or inf anywhere in a row reaches its mean
            raise WorkbenchError("images contain non-finite pixels (NaN or inf)")
        x -= mean
        norm = np.empty(len(x))
        for a in range(0, len(x), 64):  # bounded temporaries
            norm[a:a + 64] = np.linalg.norm(x[a:a + 64], axis=1)
        constant = norm <= 1e-6 * np.abs(mean[:, 0]) * math.sqrt(x.shape[1])
        x /= np.where(constant, 1.0, norm)[:, None]
        x[constant] = 0
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
    """Run torch single-threaded: MKL's dot product sums in a thread-count-dependent order, and
    every process (Dask workers included) must give each pair the same float64 bits."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def prepare_queries(queries, select) -> tuple[torch.Tensor, np.ndarray]:
    """Exact float64 z-normalised queries and their constant mask (filled in place, block by block:
    1,000 queries of 5 x 256 x 256 are 2.6 GB in float64, and a concatenation would double that)."""
    n = len(queries)
    q64 = torch.empty((n, select.dim), dtype=torch.float64)
    const_q = np.zeros(n, dtype=bool)
    for start, block in iter_blocks(queries, 256):
        flat = select(block)  # numpy: the same bits in every process; written straight into q64
        _, const_q[start:start + len(flat)] = normalise(flat, torch.float64, out=q64[start:start + len(flat)].numpy())
    return q64, const_q
