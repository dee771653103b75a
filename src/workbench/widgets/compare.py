"""Figures of a sweep: recorded values against the varied parameters, findings, training steps.

>>> from workbench.runs.collect import read_results, read_per_image          # doctest: +SKIP
>>> value_figure(read_results("runs/findings"), "pixel_synthetic_copy_fraction", "max_images").show()  # doctest: +SKIP
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: recorded values worth plotting first, with their axis titles
VALUE_TITLES = {
    "pixel_synthetic_copy_fraction": "synthetic images that are copies (pixel r > τ)",
    "pixel_train_memorized_fraction": "training images memorized (pixel r)",
    "embedding_synthetic_copy_fraction": "synthetic images that are copies (detector)",
    "synthetic_max_r_median": "median highest r, synthetic",
    "test_max_r_median": "median highest r, held-out",
    "pixel_threshold": "τ (pixel r, calibrated)",
    "c_t": "C_T (Meehan et al.)",
    "train_seconds": "training time (s)",
}
#: short axis titles of the per-image values of :data:`workbench.memorization.compare.VALUES`
SHORT = {"copy": "share of images that are copies", "pixel_copy": "share of copies (pixel r)",
         "embedding_copy": "share of copies (detector)", "max_r": "highest pixel r"}
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t-interval over seeds (the values themselves when there is one)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def _order(values) -> list:
    present = list(dict.fromkeys(values))
    try:
        return sorted(present, key=lambda v: (v is None or (isinstance(v, float) and np.isnan(v)), v))
    except TypeError:
        return sorted(present, key=str)


def value_figure(table: pd.DataFrame, value: str, parameter: str, *, by: str = "model", final: bool = True,
                 title: str | None = None) -> go.Figure:
    """``value`` against ``parameter``: each run as a dot, the mean over seeds with a 95 % t-interval,
    one line per ``by`` (model family)."""
    rows = table[table["status"] == "complete"] if "status" in table else table
    if final and "final" in rows:
        rows = rows[rows["final"].astype(bool)]
    fig = go.Figure()
    groups = rows.groupby(by, dropna=False, sort=True) if by in rows and by != parameter else [(None, rows)]
    for i, (name, group) in enumerate(groups):
        color = _COLORS[i % len(_COLORS)]
        xs = _order(group[parameter].tolist())
        label = str(name) if name is not None else value
        fig.add_trace(go.Scatter(x=[str(v) for v in group[parameter]], y=group[value], mode="markers",
                                 marker=dict(color=color, size=7, opacity=0.45), name=f"{label} (each run)",
                                 hovertext=group.get("run"), showlegend=True))
        stats = [_interval(group[group[parameter].astype(object) == x][value].to_numpy(dtype=float)) for x in xs]
        fig.add_trace(go.Scatter(
            x=[str(x) for x in xs], y=[s[0] for s in stats], mode="lines+markers", name=f"{label} (mean, 95% CI)",
            line=dict(color=color), marker=dict(size=10, symbol="diamond"),
            error_y=dict(type="data", symmetric=False, array=[s[2] - s[0] for s in stats],
                         arrayminus=[s[0] - s[1] for s in stats])))
    fig.update_layout(title=title or f"{VALUE_TITLES.get(value, value)} against {parameter}",
                      xaxis_title=parameter, yaxis_title=VALUE_TITLES.get(value, value), height=380,
                      xaxis_type="category", margin=dict(l=60, r=20, t=50, b=50))
    return fig


def values_grid(table: pd.DataFrame, parameters, values=None, *, by: str = "model") -> list[go.Figure]:
    """One :func:`value_figure` per (recorded value, varied parameter)."""
    values = [v for v in (values or VALUE_TITLES) if v in table]
    table = table.copy()
    for parameter in parameters:  # a varied mapping or list (e.g. a network's options) plots by its text
        if parameter in table and table[parameter].map(lambda v: isinstance(v, (dict, list))).any():
            table[parameter] = table[parameter].map(lambda v: json.dumps(v, sort_keys=True, default=str)
                                                    if isinstance(v, (dict, list)) else v)
    return [value_figure(table, value, parameter, by=by) for value in values for parameter in parameters
            if parameter in table and table[parameter].nunique(dropna=False) > 1]


def steps_figure(by_step: pd.DataFrame, *, where: dict | None = None,
                 title: str = "Memorization against training steps") -> go.Figure:
    """Copy fraction (with its interval) and median highest r against the training step of each checkpoint.

    ``by_step``: :func:`workbench.runs.checkpoints.analyze_checkpoints`'s table, or a sweep's
    collected table (one line per run), of which ``where`` selects the complete runs with those
    parameters."""
    if where is not None or "status" in by_step:
        from ..memorization.compare import STEP, select

        rows = by_step[by_step["status"] == "complete"] if "status" in by_step else by_step
        by_step = select(rows, where or {}, parameter=STEP)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of copies (pixel r > τ)",
                                                        "median highest r (dotted: held-out)"))
    runs = by_step.groupby("run", sort=True) if "run" in by_step else [(None, by_step)]
    for i, (name, g) in enumerate(runs):
        g = g.sort_values("checkpoint_step")
        if name is not None and "seed" in g and g["seed"].nunique() == 1:
            name = f"seed {g['seed'].iloc[0]}"  # the runs of one setting differ by their seed
        color = _COLORS[i % len(_COLORS)]
        y = g["pixel_synthetic_copy_fraction"]
        err = {}
        if "pixel_synthetic_copy_fraction_low" in g:
            err = dict(error_y=dict(type="data", symmetric=False, array=g["pixel_synthetic_copy_fraction_high"] - y,
                                    arrayminus=y - g["pixel_synthetic_copy_fraction_low"]))
        fig.add_trace(go.Scatter(x=g["checkpoint_step"], y=y, mode="lines+markers", line=dict(color=color),
                                 name=str(name) if name is not None else "copies", **err), row=1, col=1)
        fig.add_trace(go.Scatter(x=g["checkpoint_step"], y=g["synthetic_max_r_median"], mode="lines+markers",
                                 line=dict(color=color), name="synthetic", showlegend=False), row=1, col=2)
        fig.add_trace(go.Scatter(x=g["checkpoint_step"], y=g["test_max_r_median"], mode="lines",
                                 line=dict(color=color, dash="dot"), name="held-out baseline",
                                 showlegend=i == 0), row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_layout(title=title, height=400, margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))
    return fig


def finding_figure(per_image: pd.DataFrame, result: dict) -> go.Figure:
    """One finding: each run's mean (dots) and each setting's mean with its bootstrap interval, and
    the difference A − B with its interval beside zero."""
    from ..memorization.compare import select

    value, parameter = result["value"], result["parameter"]
    rows = select(per_image, result.get("where") or {}, parameter=parameter)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38],
                        subplot_titles=(f"{value} by {parameter}", "difference A − B (95% CI)"))
    for i, setting in enumerate((result["a"], result["b"])):
        sub = select(rows, {parameter: setting}, parameter=parameter)
        per_run = sub.groupby("run")[value].mean()
        label = f"{'AB'[i]}: {parameter}={setting}"
        fig.add_trace(go.Scatter(x=[label] * len(per_run), y=per_run.to_numpy(), mode="markers",
                                 marker=dict(color=_COLORS[i], size=9, opacity=0.5), name=f"{label}, each run",
                                 hovertext=list(per_run.index)), row=1, col=1)
        mean = result["a_mean"] if i == 0 else result["b_mean"]
        fig.add_trace(go.Scatter(x=[label], y=[mean], mode="markers", marker=dict(color=_COLORS[i], size=16,
                                                                                    symbol="diamond"),
                                 name=f"{label}, mean of runs"), row=1, col=1)
    fig.add_trace(go.Scatter(x=["A − B"], y=[result["difference"]], mode="markers",
                             marker=dict(color="black", size=14, symbol="diamond"),
                             error_y=dict(type="data", symmetric=False, array=[result["high"] - result["difference"]],
                                          arrayminus=[result["difference"] - result["low"]]),
                             name="difference (bootstrap 95% CI)"), row=1, col=2)
    fig.add_hline(y=0, line=dict(color="gray", dash="dash"), row=1, col=2)
    fraction = value != "max_r"
    fig.update_yaxes(title_text=SHORT.get(value, value), row=1, col=1,
                     **({"range": [-0.05, 1.05]} if fraction else {}))
    fig.update_layout(title=f"{result.get('title', '')} — {result.get('verdict', '')}", height=380,
                      margin=dict(l=60, r=20, t=70, b=50), showlegend=False)
    return fig


def show_finding(per_image: pd.DataFrame, result: dict | None) -> None:
    """Display one finding in a notebook: its figure, verdict and the comparison in words."""
    from IPython.display import Markdown, display

    if result is None:
        display(Markdown("*This sweep's spec has no such finding.*"))
        return
    if result.get("verdict") == "not run":
        display(Markdown(f"**not run**: {result.get('explanation')}"))
        return
    from ..memorization.compare import explain

    result = dict(result)
    if "verdict" not in result:  # a comparison without an expected direction
        result["verdict"] = ("the 95% interval excludes zero" if result["low"] > 0 or result["high"] < 0
                             else "the 95% interval includes zero")
    result.setdefault("title", f"{result['value']}: {result['parameter']} = {result['a']} against {result['b']}")
    finding_figure(per_image, result).show()
    display(Markdown(f"**{result['verdict']}**. {result.get('explanation') or explain(result)}"))


#: the axes of the privacy-against-utility frontier: recorded value -> title (utility first)
FRONTIER_UTILITY = {"utility_auroc_synthetic": "utility: AUROC of a classifier trained on synthetic images",
                    "utility_gap_synthetic": "utility: AUROC gap, synthetic − real",
                    "fidelity_precision": "fidelity: precision (Naeem et al.)"}
FRONTIER_PRIVACY = {"pixel_synthetic_copy_fraction": "privacy risk: synthetic images that are copies (pixel r > τ)",
                    "membership_auroc_loss": "privacy risk: membership-inference AUROC (denoising loss)",
                    "pixel_dcr_below_heldout_p5": "privacy risk: synthetic closer than held-out p5 (DCR)",
                    "fidelity_authenticity": "authenticity (Alaa et al.; higher: more new)"}


def frontier_figure(table: pd.DataFrame, *, utility: str | None = None, privacy: str | None = None,
                    by: str = "model", label: str | None = None) -> go.Figure:
    """Privacy against utility across the runs of a sweep: the frontier a user chooses on.

    One dot per run (x: utility, y: privacy risk), coloured by ``by``; the runs on the frontier (no
    other run has both more utility and less risk) are joined by a line.  The values come from each
    run's report (``report.json``, 09_privacy_utility / ``workbench report``), collected by
    ``workbench collect``; by default the first utility and privacy value the table has.
    """
    rows = table[table["status"] == "complete"] if "status" in table else table
    if "final" in rows:
        rows = rows[rows["final"].astype(bool)]
    utility = utility or next((v for v in FRONTIER_UTILITY if v in rows and rows[v].notna().any()), None)
    privacy = privacy or next((v for v in FRONTIER_PRIVACY if v in rows and rows[v].notna().any()), None)
    fig = go.Figure()
    if utility is None or privacy is None:
        fig.update_layout(title="No privacy-against-utility values yet: run 09_privacy_utility (workbench report RUN) "
                                "on the sweep's runs, then collect", height=200)
        return fig
    rows = rows[rows[utility].notna() & rows[privacy].notna()]
    groups = rows.groupby(by, dropna=False, sort=True) if by in rows else [(None, rows)]
    for i, (name, group) in enumerate(groups):
        text = group[label].astype(str) if label and label in group else group.get("run")
        fig.add_trace(go.Scatter(x=group[utility], y=group[privacy], mode="markers", name=str(name),
                                 marker=dict(size=10, color=_COLORS[i % len(_COLORS)]), text=text,
                                 hovertemplate="%{text}<br>utility %{x:.3f}<br>risk %{y:.3f}<extra></extra>"))
    lower_is_better = privacy != "fidelity_authenticity"
    points = sorted(zip(rows[utility], rows[privacy]), key=lambda p: -p[0])
    frontier, best = [], np.inf if lower_is_better else -np.inf
    for x, y in points:  # from the most useful down: keep a run when it is safer than every more useful one
        if (y < best) if lower_is_better else (y > best):
            frontier.append((x, y))
            best = y
    if len(frontier) > 1:
        fig.add_trace(go.Scatter(x=[p[0] for p in frontier], y=[p[1] for p in frontier], mode="lines",
                                 line=dict(color="#555", dash="dash"), name="frontier"))
    fig.update_layout(title="Privacy against utility: one dot per run", height=460,
                      xaxis_title=FRONTIER_UTILITY.get(utility, utility), yaxis_title=FRONTIER_PRIVACY.get(privacy, privacy))
    return fig
