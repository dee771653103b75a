"""Privacy against utility for one run: every evaluation, saved into the run, and one report.

The evaluations themselves live in :mod:`workbench.evaluate` (analysis layer) and take an open
run; these functions take a run folder as well, save each result into the run (file names in
:mod:`workbench.data.layout`) and make the report::

    import workbench
    report = workbench.privacy_report("runs/demo")   # utility, fidelity, DCR/NNDR, membership, copies
    # -> runs/demo/report.json (what `workbench collect` reads) and runs/demo/report.html

On the command line: ``workbench utility RUN`` and ``workbench report RUN``.

Each part of the report is reused from the run when it was computed from the same model,
samples and analysis with the same settings (``inputs`` in its JSON), so a second report after
one more evaluation costs only that evaluation.  A part that cannot be computed for this run (an
unconditional model has no labels for utility) is reported with the reason and how to get it,
unless it was asked for explicitly (``utility=True``), which makes it an error.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..data import layout
from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from .run import open_run

#: the parts of a report, in the order the page shows them
PARTS = ("copies", "distances", "membership", "utility", "fidelity")


def _file_digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_inputs(run) -> str:
    """A fingerprint of what every evaluation reads: the model, the samples and the analysis."""
    paths = []
    if run.has("model"):
        paths.append(run.checkpoint / "training.json")
    if run.has("synthetic"):
        paths.append(Path(run.output_path("synthetic")) / "store.json")
    paths.append(run.path / layout.MEMORIZATION)
    return _file_digest(*paths)


def _reuse(run, name: str, settings: dict):
    path = run.path / name
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("inputs") == run_inputs(run) and saved.get("request") == json.loads(json.dumps(settings, default=str)):
        return saved
    return None


def _save(run, name: str, content: dict, settings: dict) -> dict:
    content = {**content, "inputs": run_inputs(run), "request": json.loads(json.dumps(settings, default=str))}
    with atomic_file(run.path / name) as tmp:
        tmp.write_text(json.dumps(content, indent=1, default=str))
    return content


# -- the evaluations, one by one --------------------------------------------------------------------
def utility(run, *, progress: bool = True, **options):
    """:func:`workbench.evaluate.utility.utility` of a run folder; saved as ``RUN/utility.json``."""
    from ..evaluate.utility import utility as compute

    run = open_run(run)
    result = compute(run, progress=progress, **options)
    _save(run, layout.UTILITY, result.as_dict(), options)
    return result


def fidelity(run, *, extractor="detector", progress: bool = True, **options):
    """:func:`workbench.evaluate.fidelity.fidelity` of a run folder; saved as ``RUN/fidelity.json``.

    ``extractor="classifier"``: the real arm's utility classifier (trained by :func:`utility`);
    ``"detector"``: the run's copy detector (``RUN/detector``, or the one its analysis used).
    """
    from ..evaluate.fidelity import fidelity as compute
    from ..evaluate.utility import ClassifierFeatures

    run = open_run(run)
    request = {"extractor": str(extractor), **options}
    if extractor == "classifier":
        folder = run.path / layout.UTILITY_DIR / "real"
        if not (folder / "classifier.json").is_file():
            raise WorkbenchError(f"{folder}: no utility classifier in this run; run `workbench utility {run.path}` "
                                 f"first, or use extractor='detector'")
        extractor = ClassifierFeatures(folder)
    elif extractor == "detector" and not (run.path / layout.DETECTOR).is_dir() and run.has("analysis"):
        used = _analysis(run).settings.get("detector")  # the analysis used a detector kept elsewhere
        if used and Path(used).is_dir():
            extractor = used
    result = compute(run, extractor=extractor, progress=progress, **options)
    _save(run, layout.FIDELITY, result.as_dict(), request)
    return result


def membership(run, *, progress: bool = True, **options):
    """:func:`workbench.evaluate.membership.membership` of a run folder; saved as ``RUN/membership.json``
    and the per-image scores as ``RUN/membership_scores.parquet``."""
    from ..evaluate.membership import membership as compute

    run = open_run(run)
    result = compute(run, progress=progress, **options)
    with atomic_file(run.path / layout.MEMBERSHIP_SCORES) as tmp:
        result.scores.to_parquet(tmp, index=False)
    summary = result.summary()
    subjects = {method: result.subjects(method=method).reset_index().head(20).to_dict(orient="records")
                for method in summary}
    comparable = next((info.get("comparable") for info in summary.values()), None)
    _save(run, layout.MEMBERSHIP, {"methods": summary, "subjects_at_risk": subjects, "comparable": comparable,
                                   "family": result.family}, options)
    return result


def distances(run, *, device="auto", progress: bool = True):
    """DCR / NNDR of a run's synthetic and held-out images (:mod:`workbench.evaluate.distances`);
    saved as ``RUN/privacy.json``."""
    from ..evaluate.distances import distances as compute

    run = open_run(run)
    analysis = _analysis(run)
    result = compute(analysis, run.train, run.test, device=device, progress=progress)
    _save(run, layout.PRIVACY, result.as_dict(), {})
    return result


def _analysis(run):
    """The run's saved analysis, or an error that says how to make it."""
    from ..memorization.analysis import load_analysis

    if not run.has("analysis"):
        raise WorkbenchError(f"{run.path}: this run has no analysis yet; make it with {layout.HOW_TO_MAKE['analysis']}")
    return load_analysis(run.output_path("analysis"))


def _copies(run) -> dict:
    analysis = _analysis(run)
    summary = analysis.summary()
    out = {"record": analysis.record(), "rates": analysis.rates_table().to_dict(orient="records"),
           "memorization": summary["memorization"]}
    if summary.get("data_copying"):
        out["data_copying"] = summary["data_copying"]
    return out


#: each part of the report that is computed by an evaluation above
EVALUATIONS = {"utility": utility, "fidelity": fidelity, "membership": membership, "distances": distances}


# -- the report ----------------------------------------------------------------------------------
def _flat(part: str, content: dict) -> dict:
    """The recorded values of one part: flat name -> number (the columns `collect` adds)."""
    out = {}
    if part == "copies":
        out.update(content.get("record", {}))
    elif part == "utility":
        for arm, info in content.get("arms", {}).items():
            key = arm.replace("+", "_")
            out[f"utility_auroc_{key}"] = info["auroc"]["value"]
        for arm, gap in content.get("gaps", {}).items():
            out[f"utility_gap_{arm.replace('+', '_')}"] = gap["value"]
    elif part == "fidelity":
        for name, value in content.get("synthetic", {}).items():
            if isinstance(value, (int, float)) and not name.startswith("n_"):
                out[f"fidelity_{name}"] = value
        for name in ("fd", "kid_mean", "authenticity", "precision", "recall"):
            if name in content.get("baseline", {}):
                out[f"fidelity_{name}_baseline"] = content["baseline"][name]
    elif part == "distances":
        for row in content.get("table", []):
            key = "pixel" if row["similarity"].startswith("pixel") else "embedding"
            out[f"{key}_dcr_median"] = row["synthetic DCR median"]
            out[f"{key}_dcr_heldout_median"] = row["held-out DCR median"]
            out[f"{key}_dcr_below_heldout_p5"] = row["synthetic closer than held-out p5"]
            out[f"{key}_nndr_median"] = row["synthetic NNDR median"]
    elif part == "membership":
        for method, info in (content.get("methods") or {}).items():
            out[f"membership_auroc_{method}"] = info["auroc"]["value"]
            out[f"membership_tpr_1pct_{method}"] = info["tpr_at_1pct_fpr"]["value"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and v is not None}


def privacy_report(run, *, utility=None, fidelity=None, membership=None, distances=None, extractor="detector",
                   utility_options: dict | None = None, fidelity_options: dict | None = None,
                   membership_options: dict | None = None, recompute: bool = False, html: bool = True,
                   progress: bool = True) -> dict:
    """Every privacy, utility and fidelity figure of a run side by side: ``report.json`` and ``report.html``.

    Parameters
    ----------
    run : a run folder (or Run) with a model, samples and an analysis (``workbench analyze``).
    utility, fidelity, membership, distances : None (the default): computed where the run allows,
        else reported with the reason; True: required (an error if impossible); False: left out.
    extractor : the fidelity features: ``"detector"`` (the run's copy detector), ``"classifier"``
        (the utility classifier), a TorchScript file (e.g. Inception) or a callable.
    *_options : passed to the evaluation (e.g. ``utility_options={"steps": 500}``).
    recompute : compute every part again even where the run holds one from the same inputs.
    html : also write ``report.html`` (figures and tables for people).

    Returns the report (the content of ``report.json``); its ``values`` are the flat figures
    ``workbench collect`` adds to a sweep's table.
    """
    run = open_run(run)
    _analysis(run)
    wanted = {"copies": True, "distances": distances, "membership": membership, "utility": utility,
              "fidelity": fidelity}
    options = {"utility": dict(utility_options or {}), "fidelity": {"extractor": str(extractor), **(fidelity_options or {})},
               "membership": dict(membership_options or {}), "distances": {}}
    files = {"utility": layout.UTILITY, "fidelity": layout.FIDELITY, "membership": layout.MEMBERSHIP,
             "distances": layout.PRIVACY}
    kwargs = {"utility": options["utility"], "fidelity": {"extractor": extractor, **(fidelity_options or {})},
              "membership": options["membership"], "distances": {}}
    report = {"run": str(run.path), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "inputs": run_inputs(run),
              "parts": {}, "missing": {}, "seconds": {}, "values": {}}
    for part in PARTS:
        if wanted[part] is False:
            continue
        t0 = time.time()
        if part == "copies":
            content = _copies(run)
        else:
            saved = None if recompute else _reuse(run, files[part], options[part])
            if saved is not None:
                content = saved
                if progress:
                    print(f"report: {part} reused from {run.path / files[part]} (same model, samples and settings)")
            else:
                try:
                    EVALUATIONS[part](run, progress=progress, **kwargs[part])
                    content = json.loads((run.path / files[part]).read_text())
                except WorkbenchError as err:
                    if wanted[part] is True:
                        raise
                    report["missing"][part] = str(err)
                    if progress:
                        print(f"report: no {part}: {err}")
                    continue
        report["parts"][part] = content
        report["seconds"][part] = round(time.time() - t0, 2)
        report["values"].update(_flat(part, content))
    with atomic_file(run.path / layout.REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str))
    if html:
        from ..widgets.privacy_report import write_report_html

        write_report_html(run, report)
    if progress:
        print(f"report: wrote {run.path / layout.REPORT_JSON}" + (f" and {run.path / layout.REPORT_HTML}" if html else ""))
    return report


def read_report(run) -> dict | None:
    """The report a run holds (``report.json``), or None."""
    path = Path(open_run(run).path) / layout.REPORT_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
