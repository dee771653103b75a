"""The built-in phantoms as a data source: write one where the data folder is missing.

The prepare notebook (and the demo) point ``source`` at a folder; when it does not exist yet, or
a new phantom is asked for, the generated phantom is written there first (brain MRI in the BraTS
layout, or chest X-rays in the Kermany layout).  Real data folders are never touched.

>>> ensure_phantom("brain", "runs/demo/phantom", subjects=10, seed=0)    # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError

DATASETS = ("brain", "xray")


def ensure_phantom(dataset: str, source, *, subjects: int = 10, images: int = 200, seed: int = 0,
                   overwrite: bool = False) -> Path | None:
    """Write the ``dataset`` phantom into ``source`` when it is missing (or ``overwrite``); return
    the folder written, or None when nothing was (the folder exists, or ``subjects`` / ``images`` is 0)."""
    if dataset not in DATASETS:
        raise DataError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    source = Path(source)
    if source.exists() and not overwrite:
        return None
    if dataset == "brain" and subjects > 0:
        from .phantom import write_brain_phantom

        write_brain_phantom(source, subjects=subjects, seed=seed, overwrite=overwrite)
        return source
    if dataset == "xray" and images > 0:
        from .xray_phantom import write_xray_phantom

        write_xray_phantom(source, images=images, seed=seed, overwrite=overwrite)
        return source
    return None
