"""Plotly figures for the memorization analysis (view layer: display windowing happens here)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots


def setup_notebook() -> None:
    """Embed plotly.js in notebook outputs so exported HTML works offline (hospital networks)."""
    pio.renderers.default = "plotly_mimetype+notebook"


def max_r_histogram(synthetic_r, test_r=None, *, bins: int = 50, title: str | None = None) -> go.Figure:
    """Histogram of each synthetic image's max r with the training set, over the test baseline.

    The dashed line marks the highest r any held-out test image reaches: synthetic images to its
    right match a training slice more closely than any unseen patient's slice does.
    """
    fig = go.Figure()
    lo = float(np.min(np.concatenate([np.asarray(synthetic_r), np.asarray(test_r if test_r is not None else [])])))
    xbins = dict(start=min(lo, 0.99) - 1e-9, end=1.0 + 1e-9, size=(1.0 - min(lo, 0.99)) / bins)
    if test_r is not None and len(test_r):
        fig.add_trace(go.Histogram(x=test_r, name=f"test → train (baseline, n={len(test_r)})", xbins=xbins,
                                   histnorm="percent", marker_color="#7f7f7f", opacity=0.6))
        fig.add_vline(x=float(np.max(test_r)), line_dash="dash", line_color="#444",
                      annotation_text=f"max test r = {np.max(test_r):.3f}", annotation_position="top left")
    fig.add_trace(go.Histogram(x=synthetic_r, name=f"synthetic → train (n={len(synthetic_r)})", xbins=xbins,
                               histnorm="percent", marker_color="#d62728", opacity=0.6))
    fig.update_layout(barmode="overlay", title=title or "Highest Pearson r with any training slice",
                      xaxis_title="max Pearson r with the training set", yaxis_title="% of images",
                      legend=dict(orientation="h", y=-0.25), height=420, margin=dict(t=60, b=90))
    return fig


def _gray(img: np.ndarray, name: str, vmin: float, vmax: float) -> go.Heatmap:
    return go.Heatmap(z=img, colorscale="gray", zmin=vmin, zmax=vmax, showscale=False,
                      name=name, hovertemplate="x=%{x} y=%{y} value=%{z:.3f}<extra>" + name + "</extra>")


def match_figure(synthetic: np.ndarray, match: np.ndarray, prev: np.ndarray | None, nxt: np.ndarray | None, *,
                 r: float, channel: int = 0, channel_name: str = "", titles: dict | None = None,
                 vmin: float = 0.0, vmax: float = 1.0, max_scatter_points: int = 4000) -> go.Figure:
    """The study's figure: synthetic | best training slice | pixel scatter with r | training z-1 | z+1.

    ``synthetic``, ``match``, ``prev``, ``nxt`` are (C, H, W) images in [0, 1]; ``channel`` picks
    the channel shown.  The scatter plot shows all channels' pixels (r is over all of them).
    """
    titles = titles or {}
    names = [titles.get("synthetic", "synthetic"), titles.get("match", "best training slice"),
             f"pixels (r = {r:.4f})", titles.get("prev", "training z−1"), titles.get("next", "training z+1")]
    fig = make_subplots(rows=1, cols=5, subplot_titles=names, horizontal_spacing=0.03)
    blank = np.zeros(synthetic.shape[1:])  # not NaN: NaN breaks widget messages (nbclient hangs)
    for col, img in ((1, synthetic), (2, match), (4, prev), (5, nxt)):
        plane = blank if img is None else img[channel]
        fig.add_trace(_gray(plane, names[col - 1], vmin, vmax), row=1, col=col)
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    a, b = synthetic.reshape(-1), match.reshape(-1)
    if a.size > max_scatter_points:  # a fixed subsample keeps the figure light; r uses all pixels
        pick = np.random.default_rng(0).choice(a.size, max_scatter_points, replace=False)
        a, b = a[pick], b[pick]
    fig.add_trace(go.Scattergl(x=b, y=a, mode="markers", marker=dict(size=2, color="#1f77b4", opacity=0.4),
                               name="pixels", hovertemplate="train %{x:.3f}<br>synthetic %{y:.3f}<extra></extra>"), row=1, col=3)
    fig.update_xaxes(title_text="training", range=[0, 1], row=1, col=3)
    fig.update_yaxes(title_text="synthetic", range=[0, 1], row=1, col=3)
    fig.update_layout(height=280, autosize=True, showlegend=False, margin=dict(l=10, r=10, t=40, b=40),
                      title=dict(text=channel_name, x=0.0, y=0.99, font=dict(size=12)))
    return fig


def montage(images: np.ndarray, *, channel: int = 0, titles=None, cols: int = 8, vmin: float = 0.0,
            vmax: float = 1.0, size: int = 150) -> go.Figure:
    """A grid of images ``(n, C, H, W)`` showing one channel, with optional titles."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig = make_subplots(rows=rows, cols=min(cols, n), subplot_titles=list(titles) if titles is not None else None,
                        horizontal_spacing=0.01, vertical_spacing=0.06 if titles is not None else 0.01)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        fig.add_trace(_gray(img[channel], f"{i}", vmin, vmax), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_annotations(font_size=10)
    fig.update_layout(height=rows * size + 40, width=min(cols, n) * size + 20, margin=dict(l=5, r=5, t=30, b=5))
    return fig


def loss_curve(history, *, title: str = "training loss") -> go.Figure:
    """Training loss with a moving average; ``history`` is losses or ``[step, loss]`` pairs."""
    history = np.asarray(history, dtype=float)
    if history.ndim == 2:
        steps, losses = history[:, 0], history[:, 1]
    else:
        losses, steps = history, np.arange(1, len(history) + 1)
    w = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
    fig = go.Figure([go.Scatter(x=steps, y=losses, mode="lines", name="loss", line=dict(color="#c7c7c7")),
                     go.Scatter(x=steps[w - 1:], y=smooth, mode="lines", name=f"mean of {w}", line=dict(color="#1f77b4"))])
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="MSE (noise prediction)", yaxis_type="log",
                      height=350, margin=dict(t=50, b=40))
    return fig


def loss_curves(losses: dict, *, title: str = "training losses") -> go.Figure:
    """Every logged loss of a run (``training.json``'s ``losses``: name -> ``[[step, value], ...]``).

    GAN runs log the generator and discriminator losses (and R1), latent diffusion the
    autoencoder's parts then the UNet's loss; each gets its own line.  The y axis is logarithmic
    when every value is positive.
    """
    fig = go.Figure()
    positive = True
    for name, pairs in losses.items():
        arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
        if not len(arr):
            continue
        positive &= bool((arr[:, 1] > 0).all())
        fig.add_trace(go.Scatter(x=arr[:, 0], y=arr[:, 1], mode="lines", name=name))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", yaxis_type="log" if positive else "linear",
                      height=350, margin=dict(t=50, b=40))
    return fig


def ecdf_figure(series: dict, *, title: str = "ECDF of the highest similarity", xaxis: str = "similarity",
                thresholds: dict | None = None) -> go.Figure:
    """Empirical CDFs of several similarity distributions on one plot (e.g. synthetic → train,
    test → train, synthetic → test; or the same comparison for several runs), with optional
    vertical threshold lines ``{label: value}``."""
    fig = go.Figure()
    for name, values in series.items():
        v = np.sort(np.asarray(values, dtype=float)[np.isfinite(np.asarray(values, dtype=float))])
        if not v.size:
            continue
        fig.add_trace(go.Scatter(x=v, y=np.arange(1, v.size + 1) / v.size, mode="lines", name=f"{name} (n={v.size})",
                                 line_shape="hv"))
    for label, value in (thresholds or {}).items():
        fig.add_vline(x=value, line_dash="dash", annotation_text=label, annotation_position="top left")
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title="fraction of images ≤ x", height=380,
                      margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def overlaid_histograms(series: dict, *, bins: int = 50, title: str = "Highest similarity", xaxis: str = "similarity",
                        thresholds: dict | None = None) -> go.Figure:
    """Overlaid, normalised histograms of several similarity distributions (runs or comparisons)."""
    fig = go.Figure()
    for name, values in series.items():
        v = np.asarray(values, dtype=float)
        fig.add_trace(go.Histogram(x=v[np.isfinite(v)], name=name, opacity=0.55, nbinsx=bins, histnorm="probability"))
    for label, value in (thresholds or {}).items():
        fig.add_vline(x=value, line_dash="dash", annotation_text=label, annotation_position="top left")
    fig.update_layout(barmode="overlay", title=title, xaxis_title=xaxis, yaxis_title="fraction of images", height=380,
                      margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def channel_grid(images: np.ndarray, channel_names, *, titles=None, size: int = 130) -> go.Figure:
    """Rows = channels, columns = images ``(n, C, H, W)``: every contrast of a few slices at once.
    Volumes ``(n, C, D, H, W)`` show their middle axial plane (browse them in three planes with
    :class:`~workbench.widgets.volume_viewer.VolumeViewer`)."""
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    n, c = images.shape[:2]
    sub = [f"{channel_names[j]}" + (f" · {titles[i]}" if titles is not None else "") for j in range(c) for i in range(n)]
    fig = make_subplots(rows=c, cols=n, subplot_titles=sub, horizontal_spacing=0.01, vertical_spacing=0.03)
    for j in range(c):
        for i in range(n):
            fig.add_trace(_gray(images[i, j], sub[j * n + i], 0.0, 1.0), row=j + 1, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_annotations(font_size=9)
    fig.update_layout(height=c * size + 40, width=n * size + 20, margin=dict(l=5, r=5, t=30, b=5))
    return fig


def store_overview(store, *, subjects: int = 4, size: int = 130) -> go.Figure:
    """The middle kept slice of the first few subjects of a store, every channel."""
    m = store.manifest.reset_index(drop=True)
    pos = [int(g.index[len(g) // 2]) for _, g in list(m.groupby("subject", sort=True))[:subjects]]
    def title(p):
        z, label = m.loc[p, "z"], m.loc[p, "label"]
        return f"{m.loc[p, 'subject']} " + (f"z={z}" if not pd.isna(z) else f"label={label}")

    titles = [title(p) for p in pos]
    return channel_grid(store.read(pos), store.channels, titles=titles, size=size)
