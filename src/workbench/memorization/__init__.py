"""Memorization analysis: nearest training slices of synthetic images and the held-out baseline.

Analysis layer: imports ``workbench.data`` and the compute layer.
"""
from .nearest import MemorizationResult, match_table, memorization_analysis, summarize

__all__ = ["MemorizationResult", "match_table", "memorization_analysis", "summarize"]
