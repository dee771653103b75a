"""Correlation search: for each query image, the reference images with the highest Pearson r.

Compute layer: imports only ``workbench.data``.
"""
from .brute import SearchResult, float32_error_bound, topk_correlation

__all__ = ["SearchResult", "float32_error_bound", "topk_correlation"]
