"""Workbench: train generative models on medical images and find synthetic images that copy
training patients (pixel-correlation search after Akbar, Wang & Eklund 2023; calibrated copy
rates after Dar et al. 2024).

The friendly top level, for notebooks::

    import workbench
    run = workbench.open_run("runs/demo")          # one experiment: store, model, samples, analysis
    analysis = workbench.analyze(run)              # every search once; saved into the run
    analysis.report()
    store = workbench.open_store("runs/demo/store")

Layers (see DESIGN.md): ``workbench.data`` -> ``workbench.search`` / ``models`` / ``train`` /
``sample`` -> ``workbench.memorization`` / ``evaluate`` -> ``workbench.widgets`` ->
``workbench.runs`` / ``cli``.  The names below are imported when first used, so ``import
workbench`` (and ``workbench --version``) stays quick.
"""
__version__ = "0.1.0"

_LAZY = {
    "open_run": ("workbench.runs.run", "open_run"),
    "Run": ("workbench.runs.run", "Run"),
    "analyze": ("workbench.runs.analyze", "analyze"),
    "open_store": ("workbench.data.store", "open_store"),
    "SliceStore": ("workbench.data.store", "SliceStore"),
    "WorkbenchError": ("workbench.errors", "WorkbenchError"),
    # the stages, for the notebooks and for scripts
    "ensure_phantom": ("workbench.data.phantoms", "ensure_phantom"),
    "write_brain_phantom": ("workbench.data.phantom", "write_brain_phantom"),
    "write_xray_phantom": ("workbench.data.xray_phantom", "write_xray_phantom"),
    "prepare_brats_store": ("workbench.data.prepare", "prepare_brats_store"),
    "prepare_xray_store": ("workbench.data.xray", "prepare_xray_store"),
    "prepare_volume_store": ("workbench.data.volumes", "prepare_volume_store"),
    "prepare_volume_slices": ("workbench.data.volumes", "prepare_volume_slices"),
    "prepare_brain": ("workbench.data.volumes", "prepare_brain"),
    "axial_slice_store": ("workbench.data.volumes", "axial_slice_store"),
    "slice_view": ("workbench.runs.slice_view", "slice_view"),
    "load_slice_view": ("workbench.memorization.analysis", "load_slice_view"),
    "train_model": ("workbench.train", "train_model"),
    "training_view": ("workbench.train", "training_view"),
    "read_training_info": ("workbench.models.checkpoint", "read_training_info"),
    "reconstruction_report": ("workbench.train.reconstruction", "reconstruction_report"),
    "sample_model": ("workbench.sample", "sample_model"),
    "release_gate": ("workbench.runs.release", "release_gate"),
    "topk_correlation": ("workbench.search", "topk_correlation"),
    # sweeps: many runs, one table, the studies' comparisons
    "sweep": ("workbench.runs.sweep", "sweep"),
    "read_sweep": ("workbench.runs.sweep_folder", "read_sweep"),
    "collect": ("workbench.runs.collect", "collect"),
    "read_results": ("workbench.runs.collect", "read_results"),
    "read_per_image": ("workbench.runs.collect", "read_per_image"),
    "analyze_checkpoints": ("workbench.runs.checkpoints", "analyze_checkpoints"),
    "compare_settings": ("workbench.memorization.compare", "compare_settings"),
    "evaluate_findings": ("workbench.runs.findings", "evaluate_findings"),
    "findings_table": ("workbench.runs.findings", "findings_table"),
    "example_run": ("workbench.runs.findings", "example_run"),
    # privacy against utility: one report per run
    "privacy_report": ("workbench.runs.evaluate", "privacy_report"),
    "read_report": ("workbench.runs.evaluate", "read_report"),
    "utility": ("workbench.runs.evaluate", "utility"),
    "fidelity": ("workbench.runs.evaluate", "fidelity"),
    "membership": ("workbench.runs.evaluate", "membership"),
    "distances": ("workbench.runs.evaluate", "distances"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
