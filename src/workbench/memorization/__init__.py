"""Memorization analysis: nearest training images of synthetic images, calibrated copy thresholds,
copy rates, the learned copy detector, patient-level findings, the data-copying test and the
release gate.

Analysis layer: imports ``workbench.data`` and the compute layer.
"""
from .analysis import CopyAnalysis, copy_analysis
from .calibration import baseline_threshold, copy_rates, dar_threshold
from .nearest import MemorizationResult, match_table, memorization_analysis, summarize
from .release import release_gate

__all__ = ["CopyAnalysis", "MemorizationResult", "baseline_threshold", "copy_analysis", "copy_rates", "dar_threshold",
           "match_table", "memorization_analysis", "release_gate", "summarize"]
