"""Is a difference between two settings real or noise?  A bootstrap over seeds and images.

The studies' findings are comparisons: the share of synthetic images that are copies for a
diffusion model against a GAN, for a small against a large training set, with against without
augmentation, late against early in training.  Each setting was run with one or more seeds, and
each run made many synthetic images.  Images of one run are not independent draws of the
setting (they share one trained model), so resampling images alone would understate the noise.

:func:`compare_settings` therefore uses a **two-level (hierarchical) bootstrap**: resample the
runs (seeds) of each setting with replacement, then the images within each drawn run; the
statistic is the mean over runs of each run's mean (each seed weighs the same).  The interval is
the bootstrap's percentile interval of the difference A − B; a difference is called real when
that interval excludes zero.  With a single seed per setting it reduces to the image bootstrap
and says so (``n_runs``), since then nothing measures the seed-to-seed spread.

A finding (``findings:`` in a sweep spec) names what it compares and what the study found::

    - title: Diffusion memorizes more than the GAN on a small training set
      value: copy              # per synthetic image: copy (flagged 0/1) or max_r (highest pixel r)
      parameter: model
      a: ddpm
      b: gan
      expect: greater          # the study found a > b ("greater") or a < b ("less")
      where: {max_images: 8}   # the other parameters held fixed
      margin: 0.05             # differences within ±margin count as no effect

:func:`verdict` turns the comparison into "reproduced" (the interval excludes zero in the
expected direction), "not reproduced" (it excludes zero the other way, or lies wholly within
±margin: no effect at this budget) or "inconclusive" (neither).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import WorkbenchError

#: what a finding may compare: the per-image column of the collected table, and its meaning
VALUES = {
    "copy": "share of synthetic images flagged as copies (the analysis' calibrated threshold)",
    "pixel_copy": "share of synthetic images above the pixel-r threshold",
    "embedding_copy": "share of synthetic images above the copy detector's threshold",
    "max_r": "highest pixel Pearson r of a synthetic image with any training image",
    "slice_copy": "share of synthetic 2D slices flagged as copies (a 2D run's own images; a 3D run's axial "
                  "slices against the training slices, by its slice view)",
    "slice_max_r": "highest pixel r of a synthetic 2D slice with any training slice (a 3D run: its slice view)",
}
EXPECT = ("greater", "less")
FINDING_KEYS = ("title", "value", "parameter", "a", "b", "expect", "where", "margin", "why")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def check_finding(finding, *, parameters) -> dict:
    """Check one finding of a sweep spec against the sweep's varied ``parameters``."""
    if not isinstance(finding, dict):
        raise WorkbenchError(f"a finding is a mapping with {', '.join(FINDING_KEYS)}, found {finding!r}")
    unknown = [k for k in finding if k not in FINDING_KEYS]
    if unknown:
        raise WorkbenchError(f"unknown key(s) {unknown} in a finding; its keys are {', '.join(FINDING_KEYS)}")
    for key in ("title", "value", "parameter", "a", "b", "expect"):
        if key not in finding:
            raise WorkbenchError(f"finding {finding.get('title', '')!r} lacks {key!r}")
    if finding["value"] not in VALUES:
        raise WorkbenchError(f"finding {finding['title']!r}: value {finding['value']!r} is not one of {list(VALUES)}")
    if finding["expect"] not in EXPECT:
        raise WorkbenchError(f"finding {finding['title']!r}: expect must be 'greater' or 'less', "
                             f"not {finding['expect']!r}")
    for key in [finding["parameter"], *(finding.get("where") or {})]:
        if key not in parameters:
            raise WorkbenchError(f"finding {finding['title']!r}: {key!r} is not a parameter the sweep varies "
                                 f"({', '.join(parameters)})")
    if not isinstance(finding.get("where") or {}, dict):
        raise WorkbenchError(f"finding {finding['title']!r}: where is a mapping of parameter: value")
    return finding


#: the parameter that compares checkpoints of one training (every other comparison uses final models)
STEP = "checkpoint_step"


def select(per_image: pd.DataFrame, where: dict, *, parameter: str | None = None) -> pd.DataFrame:
    """The rows with each ``where`` parameter at its value; only the finished models' rows unless
    ``parameter`` is the training step (checkpoints of one training)."""
    rows = per_image
    if parameter != STEP and "final" in rows:
        rows = rows[rows["final"].astype(bool)]
    for name, wanted in where.items():
        if name not in rows:
            raise WorkbenchError(f"the table has no column {name!r} (it has {', '.join(rows.columns)})")
        column = rows[name]
        rows = rows[column.isna()] if wanted is None else rows[column.astype(object) == wanted]
    return rows


def _groups(rows: pd.DataFrame, value: str, parameter: str, setting) -> list[np.ndarray]:
    rows = select(rows, {parameter: setting}, parameter=parameter)
    # a value some rows lack (a 3D run's volumes have no slice value, its slices no volume value) is left out
    groups = [g[value].to_numpy(dtype=np.float64) for _, g in rows.groupby("run", sort=True)]
    return [v[~np.isnan(v)] for v in groups if np.count_nonzero(~np.isnan(v))]


def resolve_setting(rows: pd.DataFrame, parameter: str, setting):
    """``first`` / ``last`` stand for the smallest / largest value of a numeric parameter (steps)
    among ``rows``; for the training step, the first / last checkpoint every run has."""
    if setting in ("first", "last"):
        if parameter == STEP and "run" in rows:
            per_run = [set(g[STEP].dropna()) for _, g in rows.groupby("run")]
            values = sorted(set.intersection(*per_run)) if per_run else []
        else:
            values = sorted(v for v in rows[parameter].dropna().unique())
        if not values:
            raise WorkbenchError(f"no values of {parameter!r} in the collected table")
        return values[0] if setting == "first" else values[-1]
    return setting


def bootstrap_difference(a: list[np.ndarray], b: list[np.ndarray], *, n: int = 2000, seed: int = 0,
                         level: float = 0.95) -> dict:
    """Mean of A − mean of B, with a two-level (runs, then images) bootstrap percentile interval.

    ``a`` and ``b`` are lists of per-image values, one array per run.  Each setting's mean is the
    mean of its runs' means.

    >>> rng = np.random.default_rng(0)
    >>> out = bootstrap_difference([rng.random(50) + 1 for _ in range(3)], [rng.random(50) for _ in range(3)])
    >>> round(out["difference"], 1), out["low"] > 0
    (1.0, True)
    """
    if not a or not b:
        raise WorkbenchError("a comparison needs at least one run with images on each side")
    rng = np.random.default_rng(seed)

    def setting_mean(groups, draw: bool) -> float:
        if not draw:
            return float(np.mean([g.mean() for g in groups]))
        chosen = rng.integers(0, len(groups), len(groups))
        return float(np.mean([groups[i][rng.integers(0, len(groups[i]), len(groups[i]))].mean() for i in chosen]))

    diff = setting_mean(a, False) - setting_mean(b, False)
    draws = np.array([setting_mean(a, True) - setting_mean(b, True) for _ in range(int(n))])
    alpha = (1 - level) / 2
    low, high = (float(q) for q in np.quantile(draws, [alpha, 1 - alpha])) if len(draws) else (np.nan, np.nan)
    # two-sided bootstrap p: how often the resampled difference falls on the other side of zero
    p = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean()))) if len(draws) else np.nan
    return {"a_mean": setting_mean(a, False), "b_mean": setting_mean(b, False), "difference": diff,
            "low": low, "high": high, "level": level, "p": p, "n_boot": int(n),
            "a_runs": len(a), "b_runs": len(b), "a_images": int(sum(len(g) for g in a)),
            "b_images": int(sum(len(g) for g in b)),
            "test": "two-level bootstrap (runs, then images) percentile interval of the difference"}


def compare_settings(per_image: pd.DataFrame, *, value: str, parameter: str, a, b, where: dict | None = None,
                     n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Compare ``value`` between ``parameter == a`` and ``parameter == b`` (other parameters as ``where``).

    ``per_image`` is the sweep's per-image table (:func:`workbench.runs.collect.per_image_table`):
    one row per synthetic image of each run (and checkpoint), with a ``run`` column, the varied
    parameters and the per-image values of :data:`VALUES`.
    """
    if value not in per_image:
        raise WorkbenchError(f"the table has no per-image {value!r} (it has {', '.join(per_image.columns)})")
    where = dict(where or {})
    rows = select(per_image, where, parameter=parameter)
    a, b = resolve_setting(rows, parameter, a), resolve_setting(rows, parameter, b)
    ga, gb = (_groups(rows, value, parameter, s) for s in (a, b))
    for setting, groups in ((a, ga), (b, gb)):
        if not groups:
            raise WorkbenchError(f"no complete run has {parameter} = {setting!r}"
                                 + (f" with {where}" if where else "") + "; is the sweep complete?")
    out = bootstrap_difference(ga, gb, n=n, seed=seed, level=level)
    return {"value": value, "parameter": parameter, "a": a, "b": b, "where": where, **out}


def verdict(result: dict, *, expect: str, margin: float = 0.0) -> str:
    """"reproduced", "not reproduced" or "inconclusive" (see the module's text)."""
    low, high = result["low"], result["high"]
    if expect == "less":
        low, high = -high, -low
    if low > 0:
        return "reproduced"
    if high < 0 or (margin > 0 and -margin <= low and high <= margin):
        return "not reproduced"
    return "inconclusive"


def evaluate_finding(per_image: pd.DataFrame, finding: dict, *, n: int = 2000, seed: int = 0) -> dict:
    """One finding of a sweep spec: its comparison and verdict."""
    result = compare_settings(per_image, value=finding["value"], parameter=finding["parameter"], a=finding["a"],
                              b=finding["b"], where=finding.get("where"), n=n, seed=seed)
    result["expect"] = finding["expect"]
    result["margin"] = float(finding.get("margin", 0.0))
    result["verdict"] = verdict(result, expect=finding["expect"], margin=result["margin"])
    result["title"] = finding["title"]
    return result


def explain(result: dict) -> str:
    """The comparison in one or two plain sentences, with what limits it (a ceiling, a floor, few
    seeds) where the numbers show it."""
    a, b, what = result["a_mean"], result["b_mean"], VALUES.get(result["value"], result["value"])
    pct = not result["value"].endswith("max_r")
    fmt = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:.3f}")
    text = (f"{what}: {fmt(a)} with {result['parameter']} = {result['a']} against {fmt(b)} with "
            f"{result['parameter']} = {result['b']} (mean of {result['a_runs']} and {result['b_runs']} runs); "
            f"difference {result['difference']:+.3f}, 95% interval [{result['low']:+.3f}, {result['high']:+.3f}] "
            f"({result['test']}).")
    notes = []
    if pct and min(a, b) >= 0.9:
        notes.append("both settings copy nearly every image: a ceiling, where no difference can show")
    elif pct and max(a, b) <= 0.1:
        notes.append("both settings copy almost nothing: a floor, where no difference can show")
    if min(result["a_runs"], result["b_runs"]) < 2:
        notes.append("one run on a side: the interval does not include the spread between seeds")
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return text
