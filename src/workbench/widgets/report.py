"""An analysis shown: its figures, its tables and a one-call report for a notebook (view layer).

:func:`workbench.analyze` returns an :class:`AnalysisReport`: the analysis itself (every
attribute of :class:`workbench.memorization.analysis.Analysis` reads through) plus

* :meth:`AnalysisReport.figures`: the histograms and ECDFs of the highest similarities
  (synthetic → train, test → train, synthetic → test) with the calibrated thresholds, the patient
  figure (which training slices were copied), and the strongest match beside its training slice;
* :meth:`AnalysisReport.report`: everything, displayed in order, with the rates and patient tables;
* :meth:`AnalysisReport.glue`: the key figures recorded for papermill / scrapbook.

>>> analysis = workbench.analyze(run)          # doctest: +SKIP
>>> analysis.report()                          # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .match_browser import figure_for
from .plots import ecdf_figure, overlaid_histograms

PIXEL = "pixel r"


def patient_figure(copies: pd.DataFrame, tau: float) -> go.Figure:
    """Copied training slices, subject against slice z, marker size = number of copies.

    ``copies``: one row per synthetic copy with its best match's ``match_subject``, ``match_z``
    and similarity ``r`` (the rank-1 rows of the analysis' matches that are flagged).
    """
    fig = go.Figure()
    if len(copies):
        counts = (copies.groupby(["match_subject", "match_z"], dropna=False)
                  .agg(copies=("r", "size"), best=("r", "max")).reset_index())
        fig.add_trace(go.Scatter(
            x=counts["match_z"], y=counts["match_subject"].astype(str), mode="markers",
            marker=dict(size=8 + 6 * np.sqrt(counts["copies"]), color=counts["best"], colorscale="Reds",
                        showscale=True, colorbar=dict(title="best r")),
            text=[f"{s} z={z}: {c} copies, best {b:.3f}" for s, z, c, b in
                  zip(counts["match_subject"], counts["match_z"], counts["copies"], counts["best"])],
            hoverinfo="text"))
    n_subjects = copies["match_subject"].nunique() if len(copies) else 1
    fig.update_layout(title=f"Copied training slices (similarity > {tau:.3f}): subject × slice z",
                      xaxis_title="slice z", yaxis_title="training subject", height=max(300, 40 + 22 * n_subjects),
                      margin=dict(t=50, b=40))
    return fig


class AnalysisReport:
    """An :class:`~workbench.memorization.analysis.Analysis` with its figures and report.

    Every attribute of the analysis reads through (``report.summary()``, ``report.rates_table()``,
    ``report.flags``, ...).  ``run``: the run it belongs to (for the image figures).
    """

    def __init__(self, analysis, run=None):
        self.analysis = analysis
        self.run = run

    def __getattr__(self, name):
        if name in ("analysis", "run"):
            raise AttributeError(name)
        return getattr(self.analysis, name)

    def __repr__(self) -> str:
        return f"AnalysisReport({self.analysis!r})"

    # -- figures ---------------------------------------------------------------------------------
    def distribution_figures(self) -> dict[str, go.Figure]:
        """Histogram and ECDF of the highest similarity per similarity, with both rules' thresholds."""
        out = {}
        for name in self.analysis.similarities:
            lines = {f"τ {rule}": self.analysis.threshold(name, rule).value for rule in self.analysis.rules(name)}
            series = self.analysis.series(name)
            out[f"{name}: histogram"] = overlaid_histograms(series, title=f"Highest {name}", xaxis=name,
                                                            thresholds=lines)
            out[f"{name}: ECDF"] = ecdf_figure(series, title=f"ECDF of the highest {name}", xaxis=name,
                                               thresholds=lines)
        return out

    def copies(self) -> pd.DataFrame:
        """The flagged synthetic images' best pixel matches (rank 1), strongest first."""
        best = self.analysis.best()
        flagged = set(self.analysis.flags.loc[self.analysis.flags["copy"], "synthetic"].tolist())
        return best[best["query"].isin(flagged)]

    def patient_figure(self) -> go.Figure:
        return patient_figure(self.copies(), self.analysis.threshold(PIXEL).value)

    def match_figure(self, position: int = 0, *, channel=None) -> go.Figure | None:
        """The ``position``-th strongest match beside its training slice and that slice's z±1
        neighbours, as in Akbar et al.'s figure (needs the run's stores)."""
        if self.run is None:
            return None
        synthetic, train = self.run.synthetic, self.run.train
        if synthetic.is_volume:  # volumes: VolumeViewer shows them in three planes
            return None
        best = self.analysis.best()
        if not len(best):
            return None
        if channel is None or channel not in synthetic.channels:
            channel = synthetic.channels[0]
        return figure_for(best, position, synthetic, train, channel=synthetic.channels.index(channel))

    def figures(self, *, channel=None) -> dict[str, go.Figure]:
        """Every figure of the analysis, by title (show one with ``.show()``)."""
        out = self.distribution_figures()
        out["patients"] = self.patient_figure()
        match = self.match_figure(0, channel=channel)
        if match is not None:
            out["strongest match"] = match
        return out

    # -- the report ------------------------------------------------------------------------------
    def text(self) -> list[str]:
        """The findings in sentences."""
        s = self.analysis.summary()
        lines = []
        akbar = s.get("memorization", {})
        if akbar:
            what = "volume" if self.analysis.settings.get("images") == "volumes" else "slice"
            lines.append(f"median highest pixel r: synthetic {akbar['synthetic_max_r_median']:.3f} vs held-out test "
                         f"{akbar['test_max_r_median']:.3f}; {akbar['synthetic_above_test_max']:.0%} of synthetic images "
                         f"match a training {what} more closely than any held-out {what} does "
                         f"(max test r = {akbar['test_max_r_max']:.3f})")
        lines += [rates.summary() for (name, rule), rates in self.analysis.rates.items()
                  if rule == self.analysis.flag_rules.get(name, self.analysis.rule)]
        dc = s.get("data_copying") or {}
        if dc:
            lines.append("data-copying test (Meehan et al. 2020): " + str(dc.get("interpretation", dc.get("skipped"))))
        return lines

    def report(self, *, top: int = 20, channel=None, compare_with=()) -> None:
        """Display the whole analysis in a notebook: findings, figures, tables, the strongest matches."""
        from IPython.display import Markdown, display

        for line in self.text():
            print(line)
        figures = self.figures(channel=channel)
        for title, fig in figures.items():
            if title in ("patients", "strongest match"):
                continue
            fig.show()
        display(Markdown("### Calibrated thresholds and copy rates (95 % bootstrap intervals)"))
        display(self.analysis.rates_table())
        if len(self.analysis.per_channel):
            display(Markdown("### Per channel (pixel r of one contrast at a time)"))
            display(self.analysis.per_channel.drop(columns="values", errors="ignore"))
        display(Markdown("### Patients: who was copied, at which slices, along adjacent slices?"))
        display(self.analysis.patients.head(top))
        figures["patients"].show()
        if compare_with:
            self.compare(compare_with).show()
        display(Markdown(f"### The {top} strongest matches (`match_row`: the training slice's store row; "
                         "`match_prev` / `match_next`: its z−1 / z+1)"))
        display(self.analysis.best().head(top)[["query", "r", "match_subject", "match_z", "match_row",
                                                 "match_prev", "match_next"]])
        if "strongest match" in figures:
            display(Markdown("The strongest match, as in the study's figure:"))
            figures["strongest match"].show()
        view = self.slice_view()
        if view is not None:
            display(Markdown("### Slice view: every axial slice of the synthetic volumes against the training "
                             "slices (compare with a 2D model on the same subjects)"))
            for line in AnalysisReport(view).text():
                print(line)
            display(view.rates_table())

    def slice_view(self):
        """A 3D run's slice view (every axial slice of its synthetic volumes against the training
        slices; :func:`workbench.runs.slice_view.slice_view`), or None."""
        from ..memorization.analysis import load_slice_view

        return None if self.run is None else load_slice_view(self.run.path)

    def compare(self, runs) -> go.Figure:
        """ECDF of the highest pixel r of this run beside other runs' saved analyses."""
        from ..memorization.analysis import load_analysis

        name = self.run.path.name if self.run is not None else "this run"
        series = {name: self.analysis.similarities[PIXEL].synthetic_max}
        for other in runs:
            series[str(other)] = load_analysis(other).similarities[PIXEL].synthetic_max
        return ecdf_figure(series, title="Highest pixel r with the training set, by run", xaxis=PIXEL)

    def glue(self) -> dict:
        """Record the key figures in the executed notebook (scrapbook), and return them."""
        import scrapbook as sb

        record = self.analysis.record()
        if self.run is not None:  # a 3D run: its slice view's figures beside the volumes'
            view = self.slice_view()
            if view is not None:
                record.update({f"slice_{key}": value for key, value in view.record().items()})
        for key, value in record.items():
            sb.glue(key, value)
        return record


def record(**values) -> dict:
    """Record named values in the executed notebook (scrapbook), for ``workbench collect`` and tests.

    >>> record(n_train=120, final_loss=0.031)       # doctest: +SKIP
    """
    import scrapbook as sb

    for key, value in values.items():
        sb.glue(key, value)
    return values
