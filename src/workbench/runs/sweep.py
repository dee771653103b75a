"""Sweeps: many runs from one spec, in parallel, resumable, collected into one table.

>>> report = workbench.runs.sweep("sweeps/findings.yaml", "runs/findings", workers=2)   # doctest: +SKIP
>>> report.table                     # one row per run (and per analysed checkpoint)    # doctest: +SKIP

On the command line: ``workbench sweep SPEC.yaml --out DIR [--workers N | --scheduler ADDRESS]``.

A sweep folder::

    DIR/
      sweep.yaml  sweep.json        the spec as written, and every planned run with its id
      data/<prepare id>/            01_prepare_data's store (and phantom), shared by the runs that use it
      runs/<run id>/                one run folder per combination: 02_train, 03_sample, 04_memorization
      results.parquet  results.csv  the collected table (``workbench collect DIR``)
      per_image.parquet             every synthetic image's highest r and copy flag (for the tests)

Each run is one task: its notebooks run through papermill into its folder, in order, and each
stage that already finished with the same parameters is skipped, so a rerun of the same command
skips complete runs and continues incomplete ones (training resumes from its last checkpoint).
A run that fails keeps its executed notebook (``<stage>.FAILED.ipynb``) and its error in its
``run.json``, and the others go on.  Only one sweep writes into a folder at a time (a lock).

Parallel: ``workers`` local processes (a Dask ``LocalCluster``, one thread each; each run's
kernels get ``threads`` = cores / workers), or ``scheduler`` the address of a running Dask
scheduler, whose workers read and write the same folder (a shared file system).
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import layout
from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from .spec import EVALUATE, STAGES, RunPlan, SweepSpec, load_spec, parameters_digest, stage_parameters
from .run import read_record, update_record
from .sweep_folder import SWEEP_KEY, data_folder, read_sweep, run_folder, run_status

__all__ = ["SweepLocked", "SweepReport", "execute_run", "plan_hash", "prepare_data", "read_sweep", "run_folder",
           "run_status", "sweep"]

#: the stages each run executes, in order (prepare runs once per distinct setting, before them)
RUN_STAGES = ("train", "sample", "analyze")


class SweepLocked(WorkbenchError):
    """Another sweep is writing into the folder."""


@dataclass
class SweepReport:
    """What a sweep did: each run's status, and the collected table."""

    folder: Path
    runs: pd.DataFrame   # id, status (complete, failed, skipped), seconds, error, folder
    table: pd.DataFrame  # the collected results (workbench.runs.collect)

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"]

    def __repr__(self) -> str:
        counts = self.runs["status"].value_counts().to_dict()
        return f"SweepReport({str(self.folder)!r}: {counts}, table of {len(self.table)} rows)"


# -- the tasks' descriptions ------------------------------------------------------------------------
def _prepare_task(spec: SweepSpec, plan: RunPlan, sweep: Path) -> dict:
    folder = data_folder(sweep, plan.prepare_id).resolve()
    params = dict(plan.stages["prepare"])
    params.setdefault("source", str(folder / layout.PHANTOM))
    params.update(store=str(folder / layout.STORE), overwrite=True)
    return {"id": plan.prepare_id, "folder": str(folder), "notebook": STAGES["prepare"], "parameters": params}


def _run_task(spec: SweepSpec, plan: RunPlan, sweep: Path, threads: int | None) -> dict:
    folder = run_folder(sweep, plan.id).resolve()
    store = data_folder(sweep, plan.prepare_id).resolve() / layout.STORE
    paths = {
        "train": dict(store=str(store), out=str(folder / layout.MODEL), resume=True, overwrite=False,
                      run_name=plan.id),
        "sample": dict(checkpoint=str(folder / layout.MODEL), out=str(folder / layout.SYNTHETIC), overwrite=True),
        "analyze": dict(run=str(folder)),
    }
    stages = [(STAGES[stage], {**plan.stages[stage], **paths[stage]}) for stage in RUN_STAGES]
    if spec.evaluate is not None:
        stages.append((EVALUATE, evaluate_parameters(spec, plan, folder)))
    return {"id": plan.id, "folder": str(folder), "stages": stages, "varied": plan.varied,
            "hash": plan_hash(plan, spec.evaluate),
            "sweep": spec.name, "threads": threads}


def plan_hash(plan: RunPlan, evaluate: dict | None = None) -> str:
    """Every parameter of the run, with the notebooks' defaults: what makes a finished run reusable.

    ``evaluate``: the spec's report stage (None when the spec has none, so turning it on makes
    every run incomplete and turning it off does not)."""
    stages = {stage: stage_parameters(plan, stage) for stage in STAGES}
    if evaluate is not None:
        stages["evaluate"] = evaluate
    return parameters_digest(stages)


def evaluate_parameters(spec: SweepSpec, plan: RunPlan, folder: Path) -> dict:
    """The report stage's parameters: the spec's, the run's seed, and the run folder."""
    seed = plan.stages.get("analyze", {}).get("seed")
    return {**({"seed": seed} if seed is not None else {}), **(spec.evaluate or {}), "run": str(folder)}


# -- the tasks (run in a worker process, or here) ----------------------------------------------------
def _stage_done(folder: Path, notebook: str, params: dict) -> bool:
    """The stage finished before with the same parameters, and its output is there."""
    from .notebook import find_notebook, notebook_defaults

    recorded = read_record(folder).get("stages", {}).get(notebook)
    if not recorded:
        return False
    wanted = json.loads(json.dumps({**notebook_defaults(find_notebook(notebook)), **params}, default=str))
    if recorded.get("parameters") != wanted:
        return False
    output = layout.STAGE_OUTPUTS.get(notebook)
    if output is None:
        return True
    path = Path(wanted[output[1]])
    return {"store": (path / "store.json").is_file(), "model": (path / "training.json").is_file(),
            "synthetic": (path / "store.json").is_file(),
            "analysis": (path / layout.MEMORIZATION).is_file()}[output[0]]


def _threads_env(threads: int | None) -> dict:
    if not threads:
        return {}
    return {name: str(int(threads)) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def prepare_data(task: dict) -> dict:
    """Run 01_prepare_data into the shared data folder unless it already ran with the same parameters."""
    from .notebook import kernel_environment, run_notebook

    folder = Path(task["folder"])
    started = time.time()
    try:
        if not _stage_done(folder, task["notebook"], task["parameters"]):
            with kernel_environment(_threads_env(task.get("threads"))):
                run_notebook(task["notebook"], folder, task["parameters"], progress=False)
        return {"id": task["id"], "status": "complete", "seconds": round(time.time() - started, 1)}
    except Exception as err:  # reported to every run that needs this data; the sweep goes on
        return {"id": task["id"], "status": "failed", "error": _message(err), "seconds": round(time.time() - started, 1)}


def execute_run(task: dict, prepared: dict | None = None) -> dict:
    """Run one run's stages into its folder; never raises (a failure is recorded and returned)."""
    from .notebook import kernel_environment, run_notebook

    folder = Path(task["folder"])
    started = time.time()
    base = {"sweep": task["sweep"], "id": task["id"], "hash": task["hash"], "varied": task["varied"],
            "host": os.uname().nodename, "pid": os.getpid()}
    update_record(folder, **{SWEEP_KEY: {**base, "status": "running",
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})
    stage = None
    try:
        if prepared is not None and prepared.get("status") != "complete":
            raise WorkbenchError(f"data preparation {prepared.get('id')} failed: {prepared.get('error')}")
        with kernel_environment(_threads_env(task.get("threads"))):
            ran = False  # once a stage runs again, every stage after it does too (its input changed)
            for stage, params in task["stages"]:
                if not ran and _stage_done(folder, stage, params):
                    continue
                run_notebook(stage, folder, params, progress=False)
                ran = True
        stage = None
        record = _recorded_values(folder)
        status = {"status": "complete", "seconds": round(time.time() - started, 1), "record": record}
    except Exception as err:
        failed = folder / f"{stage}.FAILED.ipynb" if stage else None
        status = {"status": "failed", "seconds": round(time.time() - started, 1), "stage": stage,
                  "error": _message(err), "notebook": str(failed) if failed and failed.exists() else None}
    update_record(folder, **{SWEEP_KEY: {**base, **status, "started": read_record(folder)[SWEEP_KEY].get("started"),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})
    return {"id": task["id"], "folder": str(folder), **status}


def _message(err: BaseException) -> str:
    if isinstance(err, (WorkbenchError, OSError, ValueError)):
        return str(err)
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _recorded_values(folder: Path) -> dict:
    try:
        return json.loads((folder / layout.MEMORIZATION).read_text())
    except (OSError, ValueError):
        return {}


# -- the sweep --------------------------------------------------------------------------------------
def sweep(spec, out, *, workers: int = 1, scheduler: str | None = None, threads: int | None = None,
          progress: bool = True, report: bool = True) -> SweepReport:
    """Run every run of ``spec`` (a YAML path, YAML text or dict) into the sweep folder ``out``.

    Complete runs (same parameters, analysis saved) are skipped; failed and incomplete runs run
    again, continuing from the stages they finished.  ``workers`` > 1 runs them in as many local
    processes (a Dask LocalCluster); ``scheduler`` sends them to a running Dask cluster instead.
    ``threads`` sets each run's CPU threads (default: the cores divided among the local workers).
    At the end the results are collected (``results.parquet``/``.csv``) and, with ``report``, the
    spec's ``report`` notebooks run on the sweep folder.
    """
    from filelock import FileLock, Timeout

    spec = load_spec(spec)
    if workers < 1:
        raise WorkbenchError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / layout.SWEEP_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepLocked(f"{out / layout.SWEEP_LOCK}: another sweep is writing into {out} (it holds this lock); "
                          f"wait for it to finish, or give another --out") from None
    try:
        return _sweep(spec, out, workers=workers, scheduler=scheduler, threads=threads, progress=progress,
                      report=report)
    finally:
        lock.release()


def _write_plan(spec: SweepSpec, out: Path, plans: list[RunPlan]) -> None:
    doc = {"name": spec.name, "description": spec.description, "varied": spec.varied_names,
           "spec": spec.text or None, "base": spec.base, "vary": spec.vary, "runs": spec.runs,
           "report": spec.report, "findings": spec.findings,
           "planned": [{**plan.as_dict(), "hash": plan_hash(plan, spec.evaluate),
                        "folder": str(run_folder(".", plan.id))} for plan in plans],
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_file(out / layout.SWEEP_JSON) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str))
    if spec.text:
        with atomic_file(out / layout.SWEEP_SPEC) as tmp:
            tmp.write_text(spec.text)


def _sweep(spec, out, *, workers, scheduler, threads, progress, report) -> SweepReport:
    from ..progress import tqdm
    from .collect import collect

    plans = spec.plans()
    _write_plan(spec, out, plans)
    stale = sorted(p.name for p in (out / layout.SWEEP_RUNS).glob("*") if p.is_dir()
                   and p.name not in {plan.id for plan in plans}) if (out / layout.SWEEP_RUNS).is_dir() else []
    if stale and progress:
        print(f"{len(stale)} run folder(s) in {out / layout.SWEEP_RUNS} are not in this spec and are left as they "
              f"are (collect ignores them): {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}")
    if threads is None and scheduler is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    results = {}
    todo = []
    for plan in plans:
        state = run_status(run_folder(out, plan.id), plan_hash(plan, spec.evaluate))
        if state == "complete":
            results[plan.id] = {"id": plan.id, "status": "skipped", "seconds": 0.0}
        else:
            todo.append(plan)
    preparations = {}
    for plan in todo:
        preparations.setdefault(plan.prepare_id, {**_prepare_task(spec, plan, out), "threads": threads})
    tasks = [_run_task(spec, plan, out, threads) for plan in todo]
    if progress:
        print(f"sweep {spec.name}: {len(plans)} runs, {len(plans) - len(todo)} already complete, {len(todo)} to run "
              + (f"on the Dask scheduler {scheduler}" if scheduler else
                 f"in {workers} local worker process(es)" if workers > 1 else "here, one after another")
              + f" -> {out}", flush=True)
    bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc=f"sweep {spec.name}", unit="run",
               disable=not progress or not todo, smoothing=0)
    counts = {"done": len(plans) - len(todo), "failed": 0}

    def finished(result: dict, running: int) -> None:
        results[result["id"]] = result
        counts["failed" if result["status"] == "failed" else "done"] += 1
        if progress:
            minutes = result.get("seconds", 0) / 60
            if result["status"] == "failed":
                bar.write(f"FAILED {result['id']} ({minutes:.1f} min): {result['error'].splitlines()[0]}"
                          + (f"\n       the executed notebook: {result['notebook']}" if result.get("notebook") else ""))
            else:
                rec = result.get("record") or {}
                bar.write(f"done   {result['id']} ({minutes:.1f} min): median max r synthetic "
                          f"{rec.get('synthetic_max_r_median', float('nan')):.3f} vs held-out "
                          f"{rec.get('test_max_r_median', float('nan')):.3f}")
        bar.set_postfix_str(f"done {counts['done']} · running {running} · failed {counts['failed']}")
        bar.update(1)

    try:
        if not todo:
            pass
        elif scheduler is None and workers == 1:
            _run_here(preparations, tasks, finished, bar, counts)
        else:
            _run_on_dask(preparations, tasks, finished, bar, counts, workers=workers, scheduler=scheduler)
    finally:
        bar.close()
    runs = pd.DataFrame([{"id": plan.id, "status": results.get(plan.id, {}).get("status", "not run"),
                          "seconds": results.get(plan.id, {}).get("seconds"),
                          "error": results.get(plan.id, {}).get("error"),
                          "folder": str(run_folder(out, plan.id))} for plan in plans])
    table = collect(out, progress=progress)
    if progress:
        c = runs["status"].value_counts().to_dict()
        print(f"sweep {spec.name}: {c.get('complete', 0)} run(s) done, {c.get('skipped', 0)} already complete, "
              f"{c.get('failed', 0)} failed; results in {out / (layout.RESULTS + '.csv')}")
    if report and spec.report and table is not None and len(table):
        from .notebook import run_notebook

        for notebook in spec.report:
            run_notebook(notebook, out, {"sweep": str(out.resolve())}, progress=progress)
    return SweepReport(out, runs, table)


def _run_here(preparations, tasks, finished, bar, counts) -> None:
    prepared = {}
    for key, task in preparations.items():
        bar.set_postfix_str(f"preparing data {key}")
        prepared[key] = prepare_data(task)
    for task in tasks:
        bar.set_postfix_str(f"done {counts['done']} · running 1 · failed {counts['failed']} · now {task['id']}")
        prepared_for = prepared[_prepare_of(task, preparations)]
        finished(execute_run(task, prepared_for), running=0)


def _prepare_of(task: dict, preparations: dict) -> str:
    store = Path(task["stages"][0][1]["store"]).parent
    return next(key for key, p in preparations.items() if Path(p["folder"]) == store)


def _run_on_dask(preparations, tasks, finished, bar, counts, *, workers: int, scheduler: str | None) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        # one thread per worker process: each run's kernels use `threads` cores; the scheduler and
        # its dashboard listen on this machine only
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        prep = {key: client.submit(prepare_data, task, key=f"prepare-{key}-{time.time_ns()}", pure=False)
                for key, task in preparations.items()}
        futures = [client.submit(execute_run, task, prep[_prepare_of(task, preparations)],
                                 key=f"run-{task['id']}-{time.time_ns()}", pure=False) for task in tasks]
        pending = len(futures)
        bar.set_postfix_str(f"done {counts['done']} · running {min(n_workers, pending)} · failed 0")
        for future in as_completed(futures):
            pending -= 1
            try:
                result = future.result()
            except Exception as err:  # the worker died (memory, a kill): record it, go on
                result = {"id": _future_id(future, tasks), "status": "failed", "error": f"the worker failed: {err}"}
                folder = run_folder_of(result["id"], tasks)
                if folder is not None:
                    update_record(folder, **{SWEEP_KEY: {**read_record(folder).get(SWEEP_KEY, {}), "status": "failed",
                                                         "error": result["error"]}})
            finished(result, running=min(n_workers, pending))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _future_id(future, tasks) -> str:
    key = str(future.key)
    return next((t["id"] for t in tasks if key.startswith(f"run-{t['id']}-")), key)


def run_folder_of(run_id: str, tasks) -> Path | None:
    return next((Path(t["folder"]) for t in tasks if t["id"] == run_id), None)
