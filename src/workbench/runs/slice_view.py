"""The slice view of a 3D run: every axial slice of every synthetic volume against training slices.

Akbar et al. found that 2D models trained on slices cut from 3D volumes memorize more, because
neighbouring slices of one patient are near-duplicates.  To put a 3D model beside a 2D model
trained on the same subjects, the 3D run is also analysed slice by slice, exactly as a 2D run is:

1. the synthetic volumes are cut into their axial slices (``slices/synthetic``, each slice knowing
   its volume and z);
2. the run's store of volumes is cut into slices once (``slices/store``): the training reference
   is the slices of the volumes the model saw, the held-out baseline the slices of the test
   volumes;
3. :func:`~workbench.memorization.analysis.run_analysis` (pixel r, the same calibrated rules)
   runs on them and saves itself into ``slice_view/`` like a 2D run's analysis.

A 2D model trained on ``01_prepare_data``'s ``layout="volume_slices"`` store sees the same
voxels (the axial slices of the same cropped, resampled volumes), so its analysis and this one
compare like with like.  The sweep's table carries both (``slice_*`` columns for a 3D run).

>>> view = slice_view("runs/vol3d")              # doctest: +SKIP
>>> view.summary()["memorization"]               # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import layout
from ..data.store import SliceStore
from ..data.volumes import axial_slice_store
from ..errors import WorkbenchError
from ..memorization.analysis import load_slice_view, run_analysis  # noqa: F401 (load_slice_view: re-exported)
from .run import open_run


def _slices_of(volumes: SliceStore, out: Path, *, overwrite: bool, progress: bool) -> SliceStore:
    """The axial slices of a volume store, cut once and reused while the volumes are the same store."""
    if out.exists() and not overwrite:
        try:
            slices = SliceStore.open(out)
            if slices.meta.get("volume_store_id") == volumes.meta.get("id"):
                return slices
        except WorkbenchError:
            pass  # damaged or another store's: cut again
    return axial_slice_store(volumes.all_rows(), out, overwrite=True, progress=progress)


def slice_view(run, *, k: int = 5, rule: str = "dar95", quantile: float = 0.95, bootstrap: int = 1000,
               seed: int = 0, device: str = "auto", save: bool = True, progress: bool = True):
    """Analyse a 3D run's synthetic volumes slice by slice against the training slices (see the
    module docstring); returns the :class:`~workbench.memorization.analysis.Analysis`, saved into
    ``<run>/slice_view/`` (with ``save``).  A 2D run is refused: its analysis already is one."""
    run = open_run(run)
    synthetic, train = run.synthetic, run.train
    if not synthetic.is_volume:
        raise WorkbenchError(f"{run.path}: the slice view is for runs of 3D volumes; this run's synthetic images "
                             f"{synthetic.path} are 2D slices {synthetic.image_shape}, which its analysis already "
                             f"compares slice by slice")
    root = run.path / layout.SLICES
    root.mkdir(exist_ok=True)
    store_slices = _slices_of(SliceStore.open(train.path), root / layout.SLICES_STORE, overwrite=False,
                              progress=progress)
    synthetic_slices = _slices_of(synthetic, root / layout.SLICES_SYNTHETIC, overwrite=False, progress=progress)
    volume = store_slices.manifest["volume"].to_numpy()
    seen = np.isin(volume, train.rows)
    train_slices = store_slices.take(np.flatnonzero(seen))
    test_slices = store_slices.where(split="test")
    if progress:
        print(f"slice view: {len(synthetic_slices)} synthetic slices of {len(synthetic)} volumes against "
              f"{len(train_slices)} training slices ({len(train)} volumes); baseline {len(test_slices)} held-out slices")
    analysis = run_analysis(synthetic_slices, train_slices, test_slices, detector=None, k=k, rule=rule,
                            quantile=quantile, bootstrap=bootstrap, seed=seed, per_channel=False,
                            data_copying_cells=None, device=device, progress=progress)
    analysis.settings["run"] = str(run.path)
    analysis.settings["view"] = "axial slices of 3D volumes"
    if save:
        analysis.save(run.path / layout.SLICE_VIEW)
    return analysis
