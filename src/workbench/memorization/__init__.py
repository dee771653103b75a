"""Memorization analysis: nearest training images of synthetic images, calibrated copy thresholds,
copy rates, the learned copy detector, patient-level findings, the data-copying test and the
release checks.

Analysis layer: imports ``workbench.data`` and the compute layer.  For a run, the one entry
point is :func:`workbench.analyze`, which calls :func:`run_analysis`.
"""
from .analysis import Analysis, load_analysis, run_analysis
from .calibration import baseline_threshold, copy_rates, dar_threshold
from .nearest import match_table, summarize

__all__ = ["Analysis", "baseline_threshold", "copy_rates", "dar_threshold", "load_analysis", "match_table",
           "run_analysis", "summarize"]
