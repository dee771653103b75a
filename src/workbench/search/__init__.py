"""Correlation search: for each query image, the reference images with the highest Pearson r.

Compute layer: imports only ``workbench.data``.  One idea per module:

- ``dispatch``: :func:`topk_correlation`, the one entry point, which picks the method below, and
  :class:`ReferenceSearch`, several searches of one reference sharing an index where it pays
- ``result``: :class:`SearchResult`, what every search returns
- ``sources``: numpy arrays, torch tensors and SliceStores as one source of image rows
- ``normalise``: image rows to z-normalised unit vectors (Pearson r is their dot product)
- ``layout``: the screen's slices and the bf16 padded layout with its offset columns
- ``bounds``: the screen's error bounds (:func:`screen_error_bound`, the per-pair bf16 bound)
- ``precision``: bf16 or float32 for the screen, as measured on the machine at hand
- ``kernel``: the low-precision screen and the exact float64 rescore
- ``streaming``: brute force over a reference streamed block by block
- ``projection``: proven upper bounds on r from a basis fitted to the reference (or block means)
- ``tiles``: the pruned search: bounds, exact seeds, surviving tiles in float32, exact rescore
- ``index``: :class:`CorrelationIndex`, a reference prepared once for many searches
- ``subjects``: the best match from each of the k best different subjects
- ``distributed``: :func:`topk_correlation_dask`, the reference sharded over a Dask cluster
"""
from .bounds import float32_error_bound, screen_error_bound
from .dispatch import ReferenceSearch, topk_correlation
from .distributed import topk_correlation_dask
from .index import CorrelationIndex
from .result import SearchResult

__all__ = ["CorrelationIndex", "ReferenceSearch", "SearchResult", "float32_error_bound", "screen_error_bound", "topk_correlation", "topk_correlation_dask"]
