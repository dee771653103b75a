"""Collect a sweep into one tidy table: one row per run (and per analysed checkpoint).

>>> table = collect("runs/findings")          # writes results.parquet and results.csv   # doctest: +SKIP

Columns: ``run``, ``status``, the varied parameters (named as in the spec), ``model``,
``checkpoint_step`` (the training step of the model analysed: the final one, or each checkpoint
of :func:`workbench.runs.checkpoints.analyze_checkpoints`), ``final`` (the row of the finished
model), the recorded values of the analysis (:func:`~workbench.runs.checkpoints.flat_values`:
thresholds, copy rates with their intervals, C_T, median highest r of synthetic and held-out
images) and training's (``train_seconds``, ``steps_done``, ``n_train``, ``final_loss``), the
values of the run's privacy-against-utility report where it has one (``report.json``:
``utility_auroc_*``, ``fidelity_*``, ``*_dcr_*``, ``membership_auroc_*``; on the final row), and
each stage's seconds.  ``images`` says whether a run compared 2D slices or 3D volumes; a 3D run
adds its slice view's values as ``slice_*`` columns (every axial slice of its volumes against
the training slices), to set beside a 2D run's on the same subjects.

:func:`per_image_table` is the companion table the comparisons need: one row per synthetic image
of every run and checkpoint (highest pixel r, copy flags), saved as ``per_image.parquet``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..data import layout
from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from .checkpoints import flat_values
from .run import read_record
from .sweep_folder import SWEEP_KEY, read_sweep

#: per-image columns of copy_flags.parquet kept by per_image_table, under the names compare uses
PER_IMAGE = {"copy": "copy", "pixel_copy": "pixel_copy", "embedding_copy": "embedding_copy", "pixel_max": "max_r"}


def _analyses(folder: Path) -> list[tuple[int | None, Path, bool]]:
    """(training step, analysis folder, final?) of a run: its own analysis and each checkpoint's."""
    from ..models.checkpoint import read_training_info

    out = []
    final_step = None
    try:
        final_step = int(read_training_info(folder / layout.MODEL)["steps_done"])
    except (WorkbenchError, KeyError, OSError, TypeError, ValueError):
        pass
    if (folder / layout.MEMORIZATION).is_file():
        out.append((final_step, folder, True))
    for step_dir in sorted((folder / layout.STEPS).glob("step-*")):
        if (step_dir / layout.MEMORIZATION).is_file():
            step = int(step_dir.name.split("-")[1])
            if step != final_step:
                out.append((step, step_dir, False))
    return sorted(out, key=lambda item: (item[0] is None, item[0] or 0))


def _training(folder: Path) -> dict:
    try:
        info = json.loads((folder / layout.MODEL / "training.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"model": info.get("model"), "train_seconds": info.get("train_seconds"),
            "steps_done": info.get("steps_done"), "n_train": info.get("n_train"),
            "final_loss": info.get("final_loss"), "augment": info.get("augment"), "train_seed": info.get("seed")}


def _report_values(folder: Path) -> dict:
    """The privacy-against-utility report's values of a run (``report.json``; 09_privacy_utility)."""
    try:
        report = json.loads((folder / layout.REPORT_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in (report.get("values") or {}).items() if isinstance(v, (int, float))}


def _rows(sweep: Path, doc: dict):
    varied = doc.get("varied", [])
    for planned in doc.get("planned", []):
        folder = sweep / planned["folder"]
        try:
            record = read_record(folder)
        except WorkbenchError:
            record = {}
        status = (record.get(SWEEP_KEY) or {}).get("status", "not run")
        if (record.get(SWEEP_KEY) or {}).get("hash") not in (None, planned.get("hash")):
            status = "changed"
        base = {"run": planned["id"], "status": status,
                **{name: planned["varied"].get(name) for name in varied}}
        stage_seconds = {f"{stage}_seconds": info.get("seconds")
                         for stage, info in record.get("stages", {}).items()}
        training = _training(folder)
        analyses = _analyses(folder) if status == "complete" else []
        if not analyses:
            yield {**base, **training, **stage_seconds, "checkpoint_step": training.get("steps_done"),
                   "final": True, "error": (record.get(SWEEP_KEY) or {}).get("error")}
            continue
        for step, where, final in analyses:
            summary = json.loads((where / layout.COPY_ANALYSIS).read_text())
            values = flat_values(summary)
            values["images"] = (summary.get("settings") or {}).get("images", "slices")
            sliced = where / layout.SLICE_VIEW / layout.COPY_ANALYSIS  # a 3D run's slice view
            if sliced.is_file():
                values.update({f"slice_{k}": v for k, v in flat_values(json.loads(sliced.read_text())).items()})
            report = {k: v for k, v in _report_values(folder).items() if k not in values} if final else {}
            yield {**base, **training, **({"model": training.get("model")} if training else {}),
                   "checkpoint_step": step, "final": final, **values, **report, **stage_seconds,
                   "analysis": str(where.relative_to(sweep))}


def collect(sweep, *, write: bool = True, progress: bool = True) -> pd.DataFrame:
    """Read every planned run of the sweep folder into one table; write it as Parquet and CSV.

    Runs that are not complete appear with their status (and error) and no values, so a table of
    a sweep in progress says what is missing.
    """
    sweep = Path(sweep)
    doc = read_sweep(sweep)
    varied = doc.get("varied", [])
    table = pd.DataFrame(list(_rows(sweep, doc)))
    # the varied parameters' columns keep their names; "model" may be varied and recorded both
    table = table.loc[:, ~table.columns.duplicated()]
    if write:
        for suffix, writer in ((".parquet", lambda t, p: t.to_parquet(p, index=False)),
                               (".csv", lambda t, p: t.to_csv(p, index=False))):
            with atomic_file(sweep / (layout.RESULTS + suffix)) as tmp:
                writer(_parquet_safe(table), tmp)
        per_image = per_image_table(sweep, doc=doc)
        with atomic_file(sweep / layout.PER_IMAGE) as tmp:
            _parquet_safe(per_image).to_parquet(tmp, index=False)
        if progress:
            complete = table.loc[table["status"] == "complete", "run"].nunique() if len(table) else 0
            print(f"collected {len(doc.get('planned', []))} runs ({complete} complete; {len(table)} rows with the "
                  f"analysed checkpoints; varied: {', '.join(varied) or 'nothing'}) -> "
                  f"{sweep / (layout.RESULTS + '.parquet')} and .csv")
    return table


def per_image_table(sweep, *, doc: dict | None = None) -> pd.DataFrame:
    """One row per synthetic image of every complete run and analysed checkpoint of the sweep."""
    sweep = Path(sweep)
    doc = doc or read_sweep(sweep)
    varied = doc.get("varied", [])
    frames = []
    for planned in doc.get("planned", []):
        folder = sweep / planned["folder"]
        try:
            info = read_record(folder).get(SWEEP_KEY) or {}
        except WorkbenchError:
            continue
        if info.get("status") != "complete" or info.get("hash") != planned.get("hash"):
            continue
        model = _training(folder).get("model")
        for step, where, final in _analyses(folder):
            flags = pd.read_parquet(where / layout.COPY_FLAGS)
            frame = pd.DataFrame({new: flags[old].astype(float) for old, new in PER_IMAGE.items() if old in flags})
            frame.insert(0, "image", flags["synthetic"].to_numpy())
            sliced = where / layout.SLICE_VIEW / layout.COPY_FLAGS
            if sliced.is_file():  # a 3D run: one row per volume, then one per axial slice (its slice view)
                frame.insert(1, "view", "volumes")
                slices = pd.read_parquet(sliced)
                frame = pd.concat([frame, pd.DataFrame({
                    "image": slices["synthetic"].to_numpy(), "view": "slices",
                    "slice_copy": slices["copy"].astype(float), "slice_max_r": slices["pixel_max"].astype(float)})],
                    ignore_index=True)
            else:  # a 2D run's images are slices
                frame.insert(1, "view", "slices")
                frame["slice_copy"], frame["slice_max_r"] = frame.get("copy"), frame.get("max_r")
            frame.insert(0, "final", final)
            frame.insert(0, "checkpoint_step", step)
            for name in reversed(varied):
                frame.insert(0, name, [planned["varied"].get(name)] * len(frame))
            if "model" not in varied:
                frame.insert(0, "model", model)
            frame.insert(0, "run", planned["id"])
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *varied, "checkpoint_step", "final", "image", "view", *PER_IMAGE.values(),
                                     "slice_copy", "slice_max_r"])
    return pd.concat(frames, ignore_index=True)


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Columns of mixed kinds (a varied value that is None in one run and a string in another,
    or a list) are written as text so that Parquet takes them."""
    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                out[col] = [None if v is None else json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
                            for v in out[col]]
    return out


def read_results(sweep) -> pd.DataFrame:
    """The collected table of a sweep folder (collects it first if it has none)."""
    path = Path(sweep) / (layout.RESULTS + ".parquet")
    return pd.read_parquet(path) if path.is_file() else collect(sweep, progress=False)


def read_per_image(sweep) -> pd.DataFrame:
    """The per-image table of a sweep folder (collects it first if it has none)."""
    path = Path(sweep) / layout.PER_IMAGE
    if not path.is_file():
        collect(sweep, progress=False)
    return pd.read_parquet(path)
