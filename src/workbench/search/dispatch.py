"""The one entry point, :func:`topk_correlation`: it sends a search to the method that runs it.

``distinct=`` → :mod:`~workbench.search.subjects` (which searches through this function again),
``client=`` → :mod:`~workbench.search.distributed` (Dask), ``method="pruned"`` →
:mod:`~workbench.search.index` (a pruned search of a fresh index), otherwise
:mod:`~workbench.search.streaming` (brute force over the streamed reference).
:class:`ReferenceSearch`: several searches of one reference (an analysis's) sharing one index
where one of them would build it.  No module of the search imports this one.
"""
from __future__ import annotations

from ..data.store import align_channels
from ..errors import WorkbenchError
from .distributed import topk_correlation_dask
from .index import METHODS, CorrelationIndex, index_pays, topk_pruned
from .result import SearchResult
from .sources import as_source
from .streaming import topk_streaming
from .subjects import topk_distinct, topk_with_distinct


def topk_correlation(queries, reference, k: int = 1, *, device: str = "auto", method: str = "auto", channels=None,
                     mask=None, distinct=None, precision: str = "auto", block_size: int | None = None,
                     progress: bool = False, client=None, by_label=None, **dask_options) -> SearchResult:
    """For each query image, the ``k`` reference images with the highest Pearson r (exact).

    Parameters
    ----------
    queries, reference : numpy arrays or torch tensors ``(N, C, H, W)`` / ``(N, H, W)``, or
        SliceStores (views too).  r is computed over all selected pixels of all selected channels.
    k : matches per query.
    device : ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    method : ``"brute"`` (stream the reference, screen every pair), ``"pruned"`` (prepare a
        :class:`~workbench.search.CorrelationIndex` and prune with its projection bounds; for
        repeated searches build the index once yourself) or ``"auto"``: an index where the
        queries are many enough to pay for building it (:func:`~workbench.search.index.index_pays`,
        measured in BENCHMARKS.md), and then pruned or brute as the index's bounds say; else
        streamed brute force.
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
    by_label : used by the distinct search (:mod:`workbench.search.subjects`): ``(codes, k_labels,
        k_plain)``; every method then rescores only what the top ``k_plain`` and each of the ``k_labels``
        best labels' best match need, and returns both.

    Returns
    -------
    SearchResult with ``values`` (Q, k) descending and ``indices`` (Q, k) into ``reference``.

    >>> values, indices = topk_correlation(synthetic, store.where(split="train"), k=5)   # doctest: +SKIP
    """
    # stores are paired by channel name: queries are read in the reference's channel order
    queries = align_channels(queries, reference, what="queries")
    if distinct is not None:
        return topk_distinct(topk_correlation, queries, reference, k, distinct, labelled=True, device=device,
                             method=method, channels=channels, mask=mask, precision=precision,
                             block_size=block_size, progress=progress, client=client, **dask_options)
    if method not in METHODS:
        raise WorkbenchError(f"method must be 'auto', 'brute' or 'pruned', got {method!r}")
    if client is not None:
        unknown = sorted(set(dask_options) - {"shards", "worker_path", "torch_threads"})
        if unknown:
            raise TypeError(f"unexpected options {unknown} (with client=: shards, worker_path, torch_threads)")

        return topk_correlation_dask(queries, reference, k, client=client, device=device, method=method, channels=channels,
                                     mask=mask, precision=precision, block_size=block_size, progress=progress,
                                     by_label=by_label, **dask_options)
    if dask_options:
        raise TypeError(f"unexpected options {sorted(dask_options)}")
    if method == "auto":  # an index pays for itself only with many queries (index.AUTO_MIN_QUERIES)
        # counted on the opened sources: either may be a store's folder or a torch tensor
        queries, reference = as_source(queries, "queries"), as_source(reference, "reference")
        if index_pays(len(queries), len(reference)):
            return topk_pruned(queries, reference, k, device=device, channels=channels, mask=mask,
                               precision=precision, block_size=block_size, progress=progress, method="auto",
                               by_label=by_label)
    if method == "pruned":
        return topk_pruned(queries, reference, k, device=device, channels=channels, mask=mask, precision=precision,
                           block_size=block_size, progress=progress, by_label=by_label)
    return topk_streaming(queries, reference, k, device=device, channels=channels, mask=mask, precision=precision,
                          block_size=block_size, progress=progress, by_label=by_label)


class ReferenceSearch:
    """Several exact searches of one reference, as an analysis runs them: synthetic images and
    held-out images against the training images, say.

    ``sizes``: the number of queries of each search it will run.  Where one of them alone would
    build an index (:func:`~workbench.search.index.index_pays`, as :func:`topk_correlation` decides
    for a one-off search), one :class:`CorrelationIndex` is built and serves every search
    (``method="auto"`` of its ``topk``: pruned or brute force, as it measures); else each search
    runs as :func:`topk_correlation` runs it.  One-off searches each built their own index of the
    same reference, and the others went brute even where that index was at hand.  Not the sum of
    the sizes: at 6,216 x 4x64x64 training images an analysis's 8,459 queries (k = 1 and the
    subjects' widened k' = 21-336) took 61.5 s with a shared index and 57.3 s without
    (BENCHMARKS.md, issue 16 item 23).  ``channels``: searches of these channels only (the
    per-channel figures: an index per selection).
    """

    def __init__(self, reference, sizes, *, channels=None, device: str = "auto", progress: bool = False):
        self.reference = as_source(reference, "reference")
        self.channels, self.device, self.progress = channels, device, progress
        self.index = None
        if index_pays(max(int(n) for n in sizes), len(self.reference)):
            self.index = CorrelationIndex(self.reference, channels=channels, device=device, progress=progress)

    def topk(self, queries, k: int, *, distinct=None, k_distinct: int | None = None):
        """The exact top-``k`` of each query; with ``distinct`` (a manifest column or labels, as
        :func:`topk_correlation` takes it) also the best match of each of the ``k_distinct`` best
        labels, from the same search: ``(plain, by_label)``."""
        if distinct is None:
            return self._search(queries, self.reference, k)
        return topk_with_distinct(self._search, queries, self.reference, k, k_distinct or k, distinct, labelled=True)

    def _search(self, queries, reference, k: int, by_label=None) -> SearchResult:
        if self.index is not None:
            return self.index.topk(queries, k, progress=self.progress, by_label=by_label)
        return topk_correlation(queries, reference, k=k, channels=self.channels, device=self.device,
                                progress=self.progress, by_label=by_label)
