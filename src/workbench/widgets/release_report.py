"""The release gate's report for people (view layer): an HTML page of what was kept, removed and checked."""
from __future__ import annotations

import base64
import html

import pandas as pd


def table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.4f}", escape=True)


def release_html(report: dict, analysis, training_panels: list[tuple[int, bytes, bytes]]) -> str:
    """The page: counts, what was checked, thresholds and copy rates (``analysis.rates_table()``), C_T,
    and the matched training slices of removed images only when ``training_panels`` are given."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Release gate report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 8px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}.big{font-size:1.4em}</style></head><body>",
        "<h1>Release gate report</h1>",
        f"<p class='big'><b>{report['kept']}</b> synthetic images kept, <b>{report['removed']}</b> removed as copies "
        f"(of {report['n_synthetic']}).</p>",
        f"<p>Model: {html.escape(str(report['model']))} · run: {html.escape(str(report['run']))} · "
        f"synthetic store: {html.escape(report['synthetic_store'])} · date: {report['date']}</p>",
        f"<p>An image is kept when its similarity to every training image is at or below the flagging threshold "
        f"(rule {html.escape(', '.join(f'{n}: {r}' for n, r in analysis.flag_rules.items()))}) for every similarity "
        f"measured. "
        f"Thresholds are calibrated on {report['n_train']} training and {report['n_test']} held-out images of "
        f"{html.escape(report['reference_store'])}.</p>",
        "<h2>What was checked before release</h2>",
        table_html(pd.DataFrame(report["checks"])),
        "<h2>Thresholds and copy rates (95 % bootstrap intervals)</h2>",
        table_html(analysis.rates_table()),
    ]
    dc = report.get("data_copying")
    if dc:
        parts.append("<h2>Data-copying test (Meehan et al. 2020)</h2><p>" + html.escape(
            str(dc.get("interpretation", dc.get("skipped", "")))) + "</p>")
    if training_panels:
        parts.append("<h2>Removed images beside their matched training slices (shown on request)</h2>")
        for pos, syn, trn in training_panels:
            parts.append(f"<div>synthetic #{pos}: <img src='data:image/png;base64,{base64.b64encode(syn).decode()}' "
                         f"width=128> training match: <img src='data:image/png;base64,{base64.b64encode(trn).decode()}' "
                         "width=128></div>")
    else:
        parts.append("<p>No training image is shown in this report (pass <code>show_training=True</code> / "
                     "<code>--show-training</code> to include the matched training slices of removed images).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
