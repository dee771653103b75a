"""Streaming brute force: every pair screened as the reference streams from disk block by block.

Nothing is prepared: each reference block is read, z-normalised in float32 on the fly and
screened against all queries, then the candidates are rescored exactly
(:mod:`workbench.search.kernel`).  Memory holds the queries and one block, so a reference far
larger than memory can be searched.  For repeated searches of one reference, a prepared
:class:`~workbench.search.index.CorrelationIndex` skips the normalisation.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.store import align_channels
from ..device import resolve_device
from ..errors import WorkbenchError
from .bounds import NORMALISE_F32, split_norms
from .kernel import screen_and_rescore
from .layout import pad_slices
from .normalise import normalise, prepare_queries
from .precision import pick_precision
from .result import SearchResult
from .sources import BLOCK_BYTES, Selector, as_source, channel_index, iter_blocks


def topk_streaming(queries, reference, k: int = 1, *, device: str = "auto", channels=None, mask=None,
                   precision: str = "auto", block_size: int | None = None, progress: bool = False,
                   stacklevel: int = 4, by_label=None) -> SearchResult:
    """Exact top-k Pearson r of each query, streaming the reference (``method="brute"`` of
    :func:`~workbench.search.topk_correlation`, which documents the parameters).

    ``stacklevel``: where warnings about constant images point, counted from the kernel
    (4: the caller of this function's caller, the user's call of ``topk_correlation``).
    ``by_label``: the distinct search's labels (:func:`~workbench.search.kernel.screen_and_rescore`).
    """
    queries = as_source(align_channels(queries, reference, what="queries"), "queries")
    reference = as_source(reference, "reference")
    qshape, rshape = tuple(queries.shape), tuple(reference.shape)
    if qshape[1:] != rshape[1:]:
        raise WorkbenchError(f"queries have images of shape {qshape[1:]} but reference images are {rshape[1:]}")
    if rshape[0] == 0 or qshape[0] == 0:
        raise WorkbenchError("empty queries or reference: nothing to search")
    if not 1 <= k <= rshape[0]:
        raise WorkbenchError(f"k={k} must be between 1 and the reference size {rshape[0]}")
    chans = channel_index(reference, channels, rshape[1])
    select = Selector(rshape[1:], chans, mask)
    dev = resolve_device(device)
    dtype = pick_precision(precision, dev)
    block_size = block_size or max(1, BLOCK_BYTES // (4 * select.dim))

    q64, const_q = prepare_queries(queries, select)

    return screen_and_rescore(q64, const_q, streamed_blocks(reference, select, block_size, dtype, dev), reference,
                              select, k=k, n_reference=rshape[0], dtype=dtype, dev=dev, progress=progress,
                              ref_lift=NORMALISE_F32, stacklevel=stacklevel, by_label=by_label)


def streamed_blocks(reference, select, block_size: int, dtype, dev):
    """The screen's blocks of a reference normalised in float32 on the fly (``screen_and_rescore``
    with ``ref_lift=NORMALISE_F32``); shared with an index that keeps no copy of its vectors."""
    for start, block in iter_blocks(reference, block_size):
        r32, c = normalise(select(block), torch.float32, device=dev)
        r_lo = r32.to(dtype)
        rn = None
        if dtype == torch.bfloat16:
            rn = split_norms(r32, r_lo)
            r_lo = pad_slices(r_lo)
        yield np.arange(start, start + len(block)), r_lo, c, None, rn
