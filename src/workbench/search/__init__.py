"""Correlation search: for each query image, the reference images with the highest Pearson r.

Compute layer: imports only ``workbench.data``.
"""
from .brute import SearchResult, float32_error_bound, screen_error_bound, topk_correlation
from .distributed import topk_correlation_dask
from .index import CorrelationIndex

__all__ = ["CorrelationIndex", "SearchResult", "float32_error_bound", "screen_error_bound", "topk_correlation", "topk_correlation_dask"]
