"""The run as one object: :func:`open_run` gives a :class:`Run` with everything one experiment holds.

A run folder (file names in :mod:`workbench.data.layout`) is described by ``run.json``: which
stages ran, with which parameters, when and for how long, and where each stage's output lives
(the store, the model, the synthetic images, the analysis).  ``workbench run`` and
:func:`workbench.analyze` write it; the demo's run folder has one.  A folder made before
``run.json`` existed, with the conventional ``store/``, ``model/`` and ``synthetic/`` folders,
opens as well.

>>> run = open_run("runs/demo")                       # doctest: +SKIP
>>> run.train                # exactly the images the model saw          # doctest: +SKIP
>>> run.synthetic, run.test, run.checkpoint, run.parameters["02_train"]  # doctest: +SKIP
>>> MatchBrowser(run)        # widgets take a run (or its path)          # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import time
from functools import cached_property
from pathlib import Path

from filelock import FileLock

from ..data import layout
from ..data.atomic import atomic_file
from ..data.store import SliceStore
from ..errors import WorkbenchError


class RunError(WorkbenchError):
    """A folder is not a run, or a run lacks what was asked of it."""


def _read_record(path: Path) -> dict | None:
    file = path / layout.RUN_JSON
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{file}: unreadable ({err}); move it aside and rerun the stages with `workbench run`") from None
    if not isinstance(record, dict):
        raise RunError(f"{file}: not a run description (a JSON object was expected, found {type(record).__name__})")
    version = record.get("version")
    if version != layout.RUN_VERSION:
        newer = isinstance(version, int) and version > layout.RUN_VERSION
        raise RunError(f"{file}: run.json version {version!r} "
                       + ("was written by a newer workbench; upgrade it to open this run" if newer else
                          f"is not the version this workbench reads ({layout.RUN_VERSION}); rerun the stages with "
                          f"`workbench run` (or `make demo` for the demo) to write a current one"))
    for key in ("stages", "outputs"):
        if not isinstance(record.get(key, {}), dict):
            raise RunError(f"{file}: {key!r} must be a JSON object")
    return record


def _resolve(run: Path, value) -> Path:
    p = Path(value)
    return p if p.is_absolute() else run / p


class Run(os.PathLike):
    """One experiment's folder: its store, training images, model, synthetic images, analysis, marks.

    Attributes are read when first asked for, and each one that the run lacks raises an error that
    says which notebook or command makes it.  A Run is also a path (``os.fspath(run)``), so
    everything that takes a run folder takes a Run.
    """

    def __init__(self, path, record: dict | None):
        self.path = Path(path)
        #: the content of run.json ({} for a folder made before run.json existed)
        self.record = record or {}

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        have = [name for name in ("store", "model", "synthetic", "analysis") if self.has(name)]
        return f"Run({str(self.path)!r}: {', '.join(have) or 'empty'})"

    # -- where things are ------------------------------------------------------------------------
    def output_path(self, name: str) -> Path | None:
        """Where the run's ``name`` ("store", "model", "synthetic", "analysis") is, or None if it has none."""
        recorded = self.record.get("outputs", {}).get(name)
        if recorded:
            return _resolve(self.path, recorded)
        if name == "analysis":
            return self.path if (self.path / layout.MEMORIZATION).is_file() else None
        conventional = self.path / {"store": layout.STORE, "model": layout.MODEL, "synthetic": layout.SYNTHETIC}[name]
        if conventional.is_dir():
            return conventional
        if name == "store":  # the model knows which store it was trained on
            model = self.output_path("model")
            if model is not None:
                from ..models.checkpoint import read_training_info

                try:
                    store = read_training_info(model).get("store")
                except WorkbenchError:
                    store = None
                if store:
                    return Path(store)
        return None

    def has(self, name: str) -> bool:
        path = self.output_path(name)
        if path is None:
            return False
        return (path / layout.MEMORIZATION).is_file() if name == "analysis" else path.exists()

    def _need(self, name: str) -> Path:
        path = self.output_path(name)
        if path is None or not self.has(name):
            where = f" ({path} does not exist)" if path is not None else ""
            raise RunError(f"{self.path}: this run has no {name}{where}; make it with {layout.HOW_TO_MAKE[name]}")
        return path

    # -- what it holds ---------------------------------------------------------------------------
    @cached_property
    def store(self) -> SliceStore:
        """The whole prepared store (every split)."""
        return SliceStore.open(self._need("store"))

    @cached_property
    def checkpoint(self) -> Path:
        """The model's checkpoint folder."""
        return self._need("model")

    @cached_property
    def train(self) -> SliceStore:
        """Exactly the images the model saw (its ``train_rows`` in its store)."""
        from ..train import training_view

        return training_view(self.checkpoint)

    @cached_property
    def test(self) -> SliceStore:
        """The held-out images of the model's store (patients the model never saw)."""
        store = SliceStore.open(self.train.path) if self.has("model") else self.store
        return store.where(split="test")

    @cached_property
    def synthetic(self) -> SliceStore:
        """The synthetic images the model sampled."""
        return SliceStore.open(self._need("synthetic"))

    @property
    def analysis(self):
        """The analysis saved in the run (:func:`workbench.analyze` makes it)."""
        from ..widgets.report import AnalysisReport
        from ..memorization.analysis import load_analysis

        return AnalysisReport(load_analysis(self._need("analysis")), run=self)

    @property
    def marks(self):
        """The reviewers' marks of matches (``marks.csv``)."""
        from ..evaluate.marks import MarkLog

        return MarkLog(self.path)

    @property
    def parameters(self) -> dict:
        """The parameters each stage ran with: {stage: {name: value}}."""
        return {stage: dict(info.get("parameters", {})) for stage, info in self.record.get("stages", {}).items()}

    @property
    def training(self) -> dict:
        """What training recorded (steps, seed, precision chosen, the rows it trained on, ...)."""
        from ..models.checkpoint import read_training_info

        return read_training_info(self.checkpoint)


def open_run(path) -> Run:
    """Open a run folder (one experiment).  A :class:`Run` passes through unchanged.

    A folder with neither ``run.json`` nor any of ``store/``, ``model/``, ``synthetic/`` is not a
    run: the error says what it lacks and how to make one.
    """
    if isinstance(path, Run):
        return path
    if isinstance(path, SliceStore):
        raise RunError(f"{path.path}: this is a SliceStore, not a run folder; give the run folder "
                       f"(the one `workbench run` or `make demo` wrote), or use workbench.open_store")
    if not isinstance(path, (str, os.PathLike)):
        raise RunError(f"open_run: expected a run folder (a path), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run folder; make one with `workbench run 01_prepare_data {path}` "
                       f"(and the stages after it) or `make demo`")
    if not path.is_dir():
        raise RunError(f"{path}: a file, not a run folder")
    if (path / "store.json").is_file():
        raise RunError(f"{path}: this is a SliceStore, not a run folder; open it with workbench.open_store, "
                       f"or give the run folder that holds it")
    record = _read_record(path)
    run = Run(path, record)
    if record is None and not any(run.has(name) for name in ("store", "model", "synthetic", "analysis")):
        raise RunError(f"{path}: not a run folder: it has no {layout.RUN_JSON} and none of {layout.STORE}/, "
                       f"{layout.MODEL}/, {layout.SYNTHETIC}/. Make one with `workbench run 01_prepare_data {path}` "
                       f"(then 02_train, 03_sample, `workbench analyze`) or `make demo`")
    return run


def record_stage(run, stage: str, parameters: dict, *, seconds: float | None = None, outputs: dict | None = None) -> Path:
    """Add a finished stage to ``run/run.json``: its parameters, when, how long, and where its output is.

    ``outputs`` ({name: path}) defaults to what the stage's notebook writes (see
    :data:`workbench.data.layout.STAGE_OUTPUTS`).  Paths inside the run are kept relative, so
    the folder can be moved.  Concurrent stages (a sweep) update it under a lock.
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    if outputs is None:
        outputs = {}
        if stage in layout.STAGE_OUTPUTS:
            name, param = layout.STAGE_OUTPUTS[stage]
            if parameters.get(param):
                outputs[name] = parameters[param]
    file = run / layout.RUN_JSON
    with FileLock(str(run / f".{layout.RUN_JSON}.lock")):
        record = _read_record(run) if file.exists() else None
        record = record or {"version": layout.RUN_VERSION, "stages": {}, "outputs": {}}
        record["stages"][stage] = {"parameters": _jsonable(parameters),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   **({"seconds": round(float(seconds), 1)} if seconds is not None else {})}
        for name, where in outputs.items():
            where = Path(where).absolute()
            try:
                where = where.relative_to(run.absolute())
            except ValueError:
                pass
            record["outputs"][name] = str(where)
        with atomic_file(file) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return file


def update_record(run, **fields) -> dict:
    """Set top-level fields of ``run/run.json`` (under its lock), e.g. a sweep's status of the run.

    Creates run.json when the folder has none yet; returns the record as written."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    file = run / layout.RUN_JSON
    with FileLock(str(run / f".{layout.RUN_JSON}.lock")):
        record = _read_record(run) if file.exists() else None
        record = record or {"version": layout.RUN_VERSION, "stages": {}, "outputs": {}}
        record.update(_jsonable(fields))
        with atomic_file(file) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return record


def read_record(run) -> dict:
    """The content of ``run/run.json`` ({} when the folder has none)."""
    return _read_record(Path(run)) or {}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
