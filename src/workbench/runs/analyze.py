"""The one analysis of a run: :func:`analyze` searches once, calibrates, saves itself into the run.

>>> run = workbench.open_run("runs/demo")                  # doctest: +SKIP
>>> analysis = workbench.analyze(run, detector="train")     # doctest: +SKIP
>>> analysis.report()                                       # doctest: +SKIP

On the command line: ``workbench analyze RUN``.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data import layout
from ..data.store import SliceStore
from ..errors import WorkbenchError
from ..memorization.analysis import RULES, run_analysis
from ..widgets.report import AnalysisReport
from .run import open_run, record_stage


def _detector(run, detector, *, steps: int, seed: int, device, progress: bool):
    """The copy detector's encoder: trained into the run ("train"), read from a folder, or None."""
    from ..memorization.detector import load_detector, train_detector

    if detector is None or detector is False or detector == "none":
        return None, None
    if run.synthetic.is_volume:
        # the copy detector is a 2D encoder of slices: a volume run is compared by pixel r of
        # whole volumes, and slice by slice in its slice view
        if detector == "train":
            if progress:
                print("copy detector: skipped for a run of 3D volumes (the detector embeds 2D slices); "
                      "volumes are compared by pixel r, and slice by slice in the slice view")
            return None, None
        raise WorkbenchError(f"detector: {detector} embeds 2D slices, but {run.path} is a run of 3D volumes; "
                             f"pass detector=None (volumes are compared by pixel r)")
    if detector == "train":
        folder = run.path / layout.DETECTOR
        # trained on the whole training split of the store (the domain), not only the images the model saw
        domain = SliceStore.open(run.train.path).where(split="train")
        train_detector(domain, folder, steps=steps, seed=seed, overwrite=True, device=device, progress=progress)
        return load_detector(folder)[0], folder
    folder = Path(detector)
    if not folder.exists():
        raise WorkbenchError(f"detector: {folder} does not exist; give a folder written by `workbench detector`, "
                             f"'train' to train one into the run, or None for pixel r only")
    return load_detector(folder)[0], folder


def analyze(run, *, detector="train", detector_steps: int = 300, rule: str = "dar95", quantile: float = 0.95,
            k: int = 5, bootstrap: int = 1000, seed: int = 0, per_channel: bool = True,
            data_copying_cells: int | None = 10, pixel_threshold: float | None = None,
            embedding_threshold: float | None = None, embedding_metric: str = "cosine", device: str = "auto",
            save: bool = True, slices: bool = True,
            progress: bool = True) -> AnalysisReport:
    """Analyse a run's synthetic images for copies of its training images, and save it into the run.

    Every search runs once: synthetic → train (top ``k``, and the best match from each of the
    ``k`` most similar subjects), test → train (the baseline), train → test (Dar et al.'s
    threshold), synthetic → test, train → synthetic (Dar et al.'s "training images memorized"),
    per channel where the images have several, in pixel Pearson r and, with a detector, in the
    detector's embedding similarity.  See :func:`workbench.memorization.analysis.run_analysis`.

    Parameters
    ----------
    run : a run folder or :class:`~workbench.runs.run.Run` (:func:`workbench.open_run`).
    detector : ``"train"`` (train a copy detector into ``run/detector`` on the store's training
        split, ``detector_steps`` steps), a folder written by ``workbench detector``, or None.
    rule : which calibrated threshold flags copies: ``"dar95"`` or ``"test_quantile"``.
    quantile : the test-quantile rule's quantile.  k : matches kept per synthetic image.
    bootstrap, seed : the copy rates' bootstrap intervals (and the detector's training seed).
    pixel_threshold, embedding_threshold : fixed thresholds that flag copies instead of the rule.
    embedding_metric : ``"cosine"`` (default) or ``"correlation"`` of the detector's embeddings
        (Dar et al.'s code compares embeddings by correlation).
    save : write the analysis into the run folder (and its parameters into run.json).
    slices : for a run of 3D volumes, also its slice view (:func:`workbench.runs.slice_view.slice_view`:
        every axial slice of every synthetic volume against the training slices, saved into
        ``<run>/slice_view/``).  A volume run's analysis compares whole volumes (one long vector
        each); the copy detector, a 2D encoder, is skipped for it.

    Returns an :class:`~workbench.widgets.report.AnalysisReport`: the analysis with
    ``.figures()``, ``.report()``, ``.record()`` and ``.summary()``.
    """
    run = open_run(run)
    if rule not in RULES:
        raise WorkbenchError(f"rule must be one of {RULES}, got {rule!r}")
    started = time.time()
    synthetic, train, test = run.synthetic, run.train, run.test
    encoder, detector_folder = _detector(run, detector, steps=detector_steps, seed=seed, device=device,
                                         progress=progress)
    analysis = run_analysis(synthetic, train, test, detector=encoder, k=k, rule=rule, quantile=quantile,
                            pixel_threshold=pixel_threshold, embedding_threshold=embedding_threshold,
                            bootstrap=bootstrap, seed=seed, per_channel=per_channel,
                            data_copying_cells=data_copying_cells, embedding_metric=embedding_metric, device=device,
                            progress=progress)
    analysis.settings["detector"] = None if detector_folder is None else str(detector_folder)
    analysis.settings["run"] = str(run.path)
    analysis.settings["images"] = "volumes" if synthetic.is_volume else "slices"
    if synthetic.is_volume and slices:
        from .slice_view import slice_view

        slice_view(run, k=k, rule=rule, quantile=quantile, bootstrap=bootstrap, seed=seed, device=device, save=save,
                   progress=progress)
    if save:
        written = analysis.save(run.path)
        if progress:
            print(f"wrote {len(written)} files of the analysis into {run.path} "
                  f"({', '.join(p.name for p in written)})")
        record_stage(run.path, "analyze", dict(detector=None if detector is None else str(detector),
                                               detector_steps=detector_steps, rule=rule, quantile=quantile, k=k,
                                               bootstrap=bootstrap, seed=seed, per_channel=per_channel,
                                               data_copying_cells=data_copying_cells,
                                               pixel_threshold=pixel_threshold,
                                               embedding_threshold=embedding_threshold,
                                               embedding_metric=embedding_metric, device=str(device),
                                               slices=bool(slices)),
                     seconds=time.time() - started, outputs={"analysis": run.path})
        run.record = open_run(run.path).record
    return AnalysisReport(analysis, run=run)
