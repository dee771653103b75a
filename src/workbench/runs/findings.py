"""The findings of a sweep (``findings:`` in its spec), each tested and given a verdict.

>>> results = evaluate_findings("runs/findings")                     # doctest: +SKIP
>>> findings_table(results)                                           # doctest: +SKIP

See :mod:`workbench.memorization.compare` for the test (a two-level bootstrap over seeds and
images) and the verdicts ("reproduced", "not reproduced", "inconclusive").
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import WorkbenchError
from ..memorization.compare import evaluate_finding, explain, select
from .collect import read_per_image, read_results
from .run import open_run
from .sweep_folder import read_sweep, run_folder


def evaluate_findings(sweep, *, n: int = 2000, seed: int = 0) -> list[dict]:
    """Every finding of the sweep's spec, compared and judged (a list of dicts, in the spec's order).

    A finding whose runs are missing (a failed or unfinished run) comes back with ``verdict``
    "not run" and the reason, rather than stopping the others."""
    doc = read_sweep(sweep)
    if not doc.get("findings"):
        raise WorkbenchError(f"{sweep}: its spec lists no findings (a `findings:` list of comparisons)")
    per_image = read_per_image(sweep)
    out = []
    for finding in doc["findings"]:
        try:
            result = evaluate_finding(per_image, finding, n=n, seed=seed)
            result["explanation"] = explain(result)
        except WorkbenchError as err:
            result = {**finding, "verdict": "not run", "explanation": str(err)}
        result["why"] = finding.get("why", "")
        out.append(result)
    return out


def findings_table(results: list[dict]) -> pd.DataFrame:
    """One row per finding: what was compared, the means, the difference with its interval, the verdict."""
    rows = []
    for r in results:
        rows.append({"finding": r.get("title"), "value": r.get("value"),
                     "A": f"{r.get('parameter')}={r.get('a')}", "B": f"{r.get('parameter')}={r.get('b')}",
                     "mean A": r.get("a_mean"), "mean B": r.get("b_mean"), "A − B": r.get("difference"),
                     "95% low": r.get("low"), "95% high": r.get("high"), "runs A": r.get("a_runs"),
                     "runs B": r.get("b_runs"), "expected": r.get("expect"), "verdict": r.get("verdict")})
    return pd.DataFrame(rows)


def example_run(sweep, where: dict, *, final: bool = True):
    """The first complete run of the sweep with the parameters ``where`` (for teaching figures)."""
    table = read_results(sweep)
    rows = select(table[table["status"] == "complete"], where)
    if final and "final" in rows:
        rows = rows[rows["final"].astype(bool)]
    if not len(rows):
        raise WorkbenchError(f"{sweep}: no complete run with {where}")
    return open_run(run_folder(Path(sweep), rows.iloc[0]["run"]))
