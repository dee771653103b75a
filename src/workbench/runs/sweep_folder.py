"""A sweep folder: where its runs and data live, its ``sweep.json``, and each run's status.

Read by the sweep that writes the folder (:mod:`workbench.runs.sweep`) and by what reads it
afterwards (:mod:`workbench.runs.collect`, :mod:`workbench.runs.findings`); the file names are
:mod:`workbench.data.layout`'s.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data import layout
from ..errors import WorkbenchError
from .run import read_record

#: what a run of a sweep writes into its run.json under this key (status, id, hash, error, ...)
SWEEP_KEY = "sweep"


def run_folder(sweep, run_id: str) -> Path:
    """The folder of the run ``run_id`` in the sweep folder ``sweep``."""
    return Path(sweep) / layout.SWEEP_RUNS / run_id


def data_folder(sweep, prepare_id: str) -> Path:
    """The folder of one prepared store (and phantom) that the sweep's runs share."""
    return Path(sweep) / layout.SWEEP_DATA / prepare_id


def read_sweep(folder) -> dict:
    """The content of a sweep folder's ``sweep.json``: the spec and every planned run."""
    folder = Path(folder)
    file = folder / layout.SWEEP_JSON
    if not file.is_file():
        raise WorkbenchError(f"{folder}: not a sweep folder (it has no {layout.SWEEP_JSON}); "
                             f"make one with `workbench sweep SPEC.yaml --out {folder}`")
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise WorkbenchError(f"{file}: unreadable ({err})") from None


def run_status(folder, expected_hash: str | None = None) -> str:
    """``complete``, ``failed``, ``running`` (or killed while running), ``changed`` or ``new``."""
    folder = Path(folder)
    try:
        info = read_record(folder).get(SWEEP_KEY) or {}
    except WorkbenchError:
        return "new"
    if not info:
        return "new"
    if expected_hash is not None and info.get("hash") != expected_hash:
        return "changed"
    if info.get("status") == "complete" and (folder / layout.MEMORIZATION).is_file():
        return "complete"
    return info.get("status", "new")
