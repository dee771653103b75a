"""Privacy against utility for people (view layer): the figures of one run's report and its HTML page.

:func:`overview_figure` puts the four questions side by side — is the synthetic data worth
something (utility), does it look like the real data (fidelity beside the real-vs-real baseline),
does it lie closer to the training patients than new patients do (DCR), and can the model tell
its training patients from new ones (membership inference) — and :func:`write_report_html`
writes ``report.html`` with every figure and table, self-contained (plotly.js embedded, nothing
fetched), so it opens on a hospital machine without internet.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import layout
from ..data.atomic import atomic_file

COLORS = {"synthetic": "#d62728", "held-out": "#1f77b4", "real": "#1f77b4", "real+synthetic": "#9467bd"}
#: fidelity figures on a 0..1 scale, drawn as bars beside their baseline
UNIT_METRICS = ("precision", "recall", "density", "coverage", "alpha_precision", "beta_recall", "authenticity")


def utility_trace(fig, report: dict, row=None, col=None):
    arms = report.get("parts", {}).get("utility", {}).get("arms", {})
    names = list(arms)
    values = [arms[a]["auroc"]["value"] for a in names]
    low = [arms[a]["auroc"]["value"] - arms[a]["auroc"]["low"] for a in names]
    high = [arms[a]["auroc"]["high"] - arms[a]["auroc"]["value"] for a in names]
    trace = go.Bar(x=names, y=values, error_y=dict(type="data", array=high, arrayminus=low),
                   marker_color=[COLORS.get(a.split("+")[0] if a != "real+synthetic" else a, "#888") for a in names],
                   name="utility AUROC", showlegend=False,
                   hovertemplate="trained on %{x}<br>AUROC %{y:.3f}<extra></extra>")
    fig.add_trace(trace, row=row, col=col)
    return fig


def fidelity_traces(fig, report: dict, row=None, col=None, legend: bool = True):
    f = report.get("parts", {}).get("fidelity", {})
    names = [m for m in UNIT_METRICS if m in f.get("synthetic", {})]
    for which, label in (("synthetic", "synthetic"), ("baseline", "held-out")):
        fig.add_trace(go.Bar(x=names, y=[f[which][m] for m in names], name=f"{label} vs training",
                             marker_color=COLORS[label], legendgroup=label, showlegend=legend),
                      row=row, col=col)
    return fig


def dcr_traces(fig, distances: pd.DataFrame | None, row=None, col=None, legend: bool = True):
    if distances is None or distances.empty:
        return fig
    pixel = distances[distances["similarity"] == distances["similarity"].iloc[0]]
    for which in ("synthetic", "held-out"):
        d = pixel[pixel["set"] == which]["dcr"]
        fig.add_trace(go.Histogram(x=d, name=f"{which} → training", marker_color=COLORS[which], opacity=0.6,
                                   histnorm="probability", nbinsx=40, legendgroup=which, showlegend=legend),
                      row=row, col=col)
    return fig


def membership_traces(fig, scores: pd.DataFrame | None, row=None, col=None):
    from sklearn.metrics import roc_curve

    if scores is None or scores.empty:
        return fig
    member = _member_mask(scores)
    meta = {"set", "subject", "z", "label", "row", "seen", "member", "is_member", "position", "source"}
    for i, column in enumerate(c for c in scores.columns if c not in meta and pd.api.types.is_numeric_dtype(scores[c])):
        s = scores[column].to_numpy(dtype=float)
        ok = np.isfinite(s)
        if member[ok].all() or not member[ok].any():
            continue
        fpr, tpr, _ = roc_curve(member[ok], s[ok])
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"membership: {column}",
                                 line=dict(color=["#2ca02c", "#ff7f0e", "#8c564b"][i % 3])), row=row, col=col)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#aaa", dash="dot"),
                             showlegend=False, hoverinfo="skip"), row=row, col=col)
    return fig


def _member_mask(scores: pd.DataFrame) -> np.ndarray:
    for column in ("member", "is_member"):
        if column in scores.columns:
            return scores[column].to_numpy().astype(bool)
    return (scores["set"].astype(str) == "member").to_numpy()


def overview_figure(report: dict, *, distances: pd.DataFrame | None = None,
                    membership_scores: pd.DataFrame | None = None) -> go.Figure:
    """The four questions of the report in one figure (2 × 2 panels)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "Utility: classifier AUROC on real held-out images",
        "Fidelity and diversity (0..1) beside the held-out baseline",
        "Distance to the closest training image (1 − r)",
        "Membership inference: ROC, training vs held-out"))
    utility_trace(fig, report, 1, 1)
    fidelity_traces(fig, report, 1, 2)
    dcr_traces(fig, distances, 2, 1, legend=False)
    membership_traces(fig, membership_scores, 2, 2)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="AUROC")
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_xaxes(title_text="DCR", row=2, col=1)
    fig.update_xaxes(title_text="false-positive rate", range=[0, 1], row=2, col=2)
    fig.update_yaxes(title_text="true-positive rate", range=[0, 1.02], row=2, col=2)
    fig.update_layout(height=720, width=1100, barmode="group", title=f"Privacy against utility: run {Path(str(report.get('run', ''))).name}",
                      legend=dict(orientation="h", y=-0.08))
    if "utility" in report.get("missing", {}):
        fig.add_annotation(text="no utility: see the report", xref="x domain", yref="y domain", x=0.5, y=0.5,
                           showarrow=False, row=1, col=1)
    return fig


def load_figure_data(run) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The per-image DCR (recomputed from the saved similarities) and membership scores of a run."""
    path = Path(run.path)
    scores = pd.read_parquet(path / layout.MEMBERSHIP_SCORES) if (path / layout.MEMBERSHIP_SCORES).is_file() else None
    distances = None
    sims = path / layout.SIMILARITIES
    if sims.is_file():
        from ..evaluate.distances import dcr_nndr

        with np.load(sims, allow_pickle=False) as arrays:
            if "pixel__synthetic_values" in arrays.files:
                dcr, nndr = dcr_nndr(arrays["pixel__synthetic_values"])
                held = 1.0 - np.clip(arrays["pixel__test_to_train"], None, 1.0)
                distances = pd.concat([
                    pd.DataFrame({"similarity": "pixel r", "set": "synthetic", "dcr": dcr}),
                    pd.DataFrame({"similarity": "pixel r", "set": "held-out", "dcr": held})], ignore_index=True)
    return distances, scores


def _table(rows) -> str:
    df = pd.DataFrame(rows)
    return df.to_html(index=False, border=0, escape=True,
                      float_format=lambda v: f"{v:.4f}") if not df.empty else "<p>(none)</p>"


def report_html(report: dict, figure: go.Figure) -> str:
    """The page: a summary table of the recorded values, the overview figure, each part's tables."""
    parts = report.get("parts", {})
    body = ["<!doctype html><html><head><meta charset='utf-8'><title>Privacy against utility</title>",
            "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto}td,th{padding:4px 8px;text-align:left}"
            "table{border-collapse:collapse;margin-bottom:1em}tr:nth-child(even){background:#f4f4f4}"
            ".note{color:#555}</style></head><body>",
            f"<h1>Privacy against utility</h1><p>Run: {html.escape(report.get('run', ''))} · made "
            f"{html.escape(report.get('created', ''))}</p>"]
    for part, reason in report.get("missing", {}).items():
        body.append(f"<p class='note'><b>No {html.escape(part)}:</b> {html.escape(reason)}</p>")
    body.append(figure.to_html(full_html=False, include_plotlyjs=True, div_id="overview"))
    body.append("<h2>Every recorded value</h2>")
    body.append(_table([{"value": k, "": v} for k, v in sorted(report.get("values", {}).items())]))
    if "copies" in parts:
        body.append("<h2>Copies: thresholds and rates (95 % bootstrap intervals)</h2>")
        body.append(_table(parts["copies"].get("rates", [])))
        dc = parts["copies"].get("data_copying")
        if dc:
            body.append(f"<p>Data-copying test C_T (Meehan et al. 2020): {html.escape(str(dc.get('c_t')))} — "
                        f"{html.escape(str(dc.get('interpretation', dc.get('skipped', ''))))}</p>")
    if "distances" in parts:
        body.append("<h2>Distance to the closest record (DCR) and NNDR</h2><p class='note'>DCR = 1 − the highest "
                    "similarity to any training image; NNDR = the ratio of the distances to the nearest and "
                    "second-nearest training image. Held-out images are the baseline: a synthetic set as new as "
                    "new patients has about 5 % of its images closer than the held-out 5th percentile.</p>")
        body.append(_table(parts["distances"].get("table", [])))
    if "membership" in parts:
        m = parts["membership"]
        body.append("<h2>Membership inference against the model</h2>")
        methods = m.get("methods") or {}
        body.append(_table([{"method": name, "compares": info.get("compares", ""),
                             "AUROC": info["auroc"]["value"],
                             "95% interval": f"[{info['auroc']['low']:.3f}, {info['auroc']['high']:.3f}]",
                             "TPR at 1% FPR": info["tpr_at_1pct_fpr"]["value"]} for name, info in methods.items()]))
        for name, info in methods.items():
            for key in ("direction_note", "tpr_note"):
                if info.get(key):
                    body.append(f"<p class='note'><b>{html.escape(name)}:</b> {html.escape(str(info[key]))}</p>")
        if m.get("comparable"):
            body.append(f"<p class='note'>{html.escape(str(m['comparable']))}</p>")
        for method, rows in (m.get("subjects_at_risk") or {}).items():
            body.append(f"<h3>Training patients most at risk ({html.escape(method)})</h3>")
            body.append(_table(rows[:10]))
    if "utility" in parts:
        u = parts["utility"]
        body.append("<h2>Utility (DuMont Schütte et al. 2021)</h2><p class='note'>The same classifier trained from "
                    "scratch on each set, tested on the real held-out split; label channels are not given to it.</p>")
        body.append(_table([{"trained on": arm, "images": info["n_train"], "AUROC": info["auroc"]["value"],
                             "95% interval": f"[{info['auroc']['low']:.3f}, {info['auroc']['high']:.3f}]",
                             "gap to real": u.get("gaps", {}).get(arm, {}).get("value")}
                            for arm, info in u.get("arms", {}).items()]))
    if "fidelity" in parts:
        f = parts["fidelity"]
        ex = f.get("extractor", {})
        body.append(f"<h2>Fidelity and diversity</h2><p class='note'>Features: {html.escape(str(ex.get('name')))} "
                    f"({html.escape(str(ex.get('kind')))}, {ex.get('dim')} numbers). Compare each figure with its "
                    f"held-out baseline, not with published FIDs.</p>")
        body.append(_table([{"metric": k, "synthetic vs training": v, "held-out vs training": f["baseline"].get(k)}
                            for k, v in f.get("synthetic", {}).items() if isinstance(v, (int, float))]))
    body.append(f"<h2>Time</h2>{_table([{'part': k, 'seconds': v} for k, v in report.get('seconds', {}).items()])}")
    body.append("<details><summary>report.json</summary><pre>" +
                html.escape(json.dumps(report, indent=1, default=str)[:200000]) + "</pre></details></body></html>")
    return "\n".join(body)


def write_report_html(run, report: dict) -> Path:
    """Write ``RUN/report.html`` (atomically) and return its path."""
    distances, scores = load_figure_data(run)
    figure = overview_figure(report, distances=distances, membership_scores=scores)
    path = Path(run.path) / layout.REPORT_HTML
    with atomic_file(path) as tmp:
        tmp.write_text(report_html(report, figure))
    return path


class PrivacyReport:
    """A run's privacy-against-utility report in a notebook: the overview figure, every table, the
    recorded values.  ``report`` is the content of ``report.json`` (``workbench.privacy_report``)."""

    def __init__(self, run, report: dict):
        self.run = run
        self.report = report

    def figure(self) -> go.Figure:
        distances, scores = load_figure_data(self.run)
        return overview_figure(self.report, distances=distances, membership_scores=scores)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Each part's table, by part name."""
        parts, out = self.report.get("parts", {}), {}
        if "copies" in parts:
            out["copies"] = pd.DataFrame(parts["copies"].get("rates", []))
        if "distances" in parts:
            out["distances"] = pd.DataFrame(parts["distances"].get("table", []))
        if "membership" in parts:
            methods = parts["membership"].get("methods") or {}
            out["membership"] = pd.DataFrame([{"method": m, "AUROC": i["auroc"]["value"], "low": i["auroc"]["low"],
                                               "high": i["auroc"]["high"],
                                               "TPR at 1% FPR": i["tpr_at_1pct_fpr"]["value"]}
                                              for m, i in methods.items()])
            for method, rows in (parts["membership"].get("subjects_at_risk") or {}).items():
                out[f"patients at risk ({method})"] = pd.DataFrame(rows).head(10)
        if "utility" in parts:
            u = parts["utility"]
            out["utility"] = pd.DataFrame([{"trained on": a, "images": i["n_train"], "AUROC": i["auroc"]["value"],
                                            "low": i["auroc"]["low"], "high": i["auroc"]["high"],
                                            "gap to real": u.get("gaps", {}).get(a, {}).get("value")}
                                           for a, i in u.get("arms", {}).items()])
        if "fidelity" in parts:
            f = parts["fidelity"]
            out["fidelity"] = pd.DataFrame([{"metric": k, "synthetic vs training": v,
                                             "held-out vs training": f["baseline"].get(k)}
                                            for k, v in f.get("synthetic", {}).items() if isinstance(v, (int, float))])
        return out

    def show(self) -> None:
        """Display the figure, then each table under a heading (in a notebook)."""
        from IPython.display import Markdown, display

        for part, reason in self.report.get("missing", {}).items():
            display(Markdown(f"**No {part}:** {reason}"))
        self.figure().show()
        for name, table in self.tables().items():
            display(Markdown(f"### {name}"))
            display(table)

    def glue(self) -> dict:
        """Record the report's values in the executed notebook (scrapbook), and return them."""
        import scrapbook as sb

        values = dict(self.report.get("values", {}))
        for key, value in values.items():
            sb.glue(key, value)
        return values
