"""A first match browser: a slider over synthetic images ordered by their max r.

Each position shows synthetic | best training slice | pixel scatter with r | that training
slice's z-1 | z+1, for a chosen channel.  Panels are PNG images (``widgets.render``), so moving
the slider only swaps bytes.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..data.store import SliceStore
from .plots import match_figure
from .render import density_png, to_png


def _best_rows(matches: pd.DataFrame) -> pd.DataFrame:
    best = matches[matches["rank"] == 1] if "rank" in matches.columns else matches
    return best.sort_values("r", ascending=False).reset_index(drop=True)


def match_images(matches: pd.DataFrame, position: int, synthetic: SliceStore, train: SliceStore) -> dict:
    """Images and labels of the ``position``-th strongest match (0 = highest r)."""
    row = _best_rows(matches).iloc[int(position)]
    z = row["match_z"]
    prev = None if pd.isna(row["match_prev"]) else train.read_rows([int(row["match_prev"])])[0]
    nxt = None if pd.isna(row["match_next"]) else train.read_rows([int(row["match_next"])])[0]
    return {
        "row": row,
        "synthetic": synthetic[int(row["query"])],
        "match": train.read_rows([int(row["match_row"])])[0],
        "prev": prev,
        "next": nxt,
        "titles": {
            "synthetic": f"synthetic #{int(row['query'])}",
            "match": f"{row['match_subject']} z={z}",
            "prev": f"z={int(z) - 1}" if prev is not None else "z−1 (not in store)",
            "next": f"z={int(z) + 1}" if nxt is not None else "z+1 (not in store)",
        },
    }


def figure_for(matches: pd.DataFrame, position: int, synthetic: SliceStore, train: SliceStore, *, channel: int = 0):
    """The study's five-panel plotly figure for the ``position``-th strongest match."""
    m = match_images(matches, position, synthetic, train)
    n = len(_best_rows(matches))
    return match_figure(m["synthetic"], m["match"], m["prev"], m["next"], r=float(m["row"]["r"]), channel=channel,
                        channel_name=f"channel: {synthetic.channels[channel]} · rank {position + 1} of {n} by r",
                        titles=m["titles"])


def match_browser(matches: pd.DataFrame, synthetic: SliceStore, train: SliceStore, *, channel: str | int = 0,
                  panel_size: int = 192) -> widgets.VBox:
    """Slider over synthetic images (strongest match first) with a channel selector.

    ``matches`` is :func:`workbench.memorization.match_table` output for ``synthetic`` against
    ``train``.
    """
    best = _best_rows(matches)
    chan = synthetic.channels.index(channel) if isinstance(channel, str) else int(channel)
    slider = widgets.IntSlider(value=0, min=0, max=len(best) - 1, description="match", continuous_update=False,
                               layout=widgets.Layout(width="600px"))
    chooser = widgets.Dropdown(options=[(c, i) for i, c in enumerate(synthetic.channels)], value=chan, description="channel")
    info = widgets.HTML()
    names = ("synthetic", "match", "scatter", "prev", "next")
    images = {n: widgets.Image(format="png", width=panel_size, height=panel_size) for n in names}
    labels = {n: widgets.HTML() for n in names}

    def show(*_):
        m = match_images(best, slider.value, synthetic, train)
        row, c = m["row"], chooser.value
        info.value = (f"<b>synthetic #{int(row['query'])}</b> · best match <b>{row['match_subject']}</b> "
                      f"slice z={row['match_z']} · r = <b>{row['r']:.4f}</b> · rank {slider.value + 1} of {len(best)}")
        for n in ("synthetic", "match", "prev", "next"):
            img = m[n]
            images[n].value = to_png(np.zeros(m["synthetic"].shape[1:]) if img is None else img[c], size=panel_size)
            labels[n].value = m["titles"][n]
        images["scatter"].value = density_png(m["match"], m["synthetic"], size=panel_size)
        labels["scatter"].value = f"pixels, all channels (r = {row['r']:.4f}): training → , synthetic ↑"

    slider.observe(show, names="value")
    chooser.observe(show, names="value")
    show()
    panels = widgets.HBox([widgets.VBox([labels[n], images[n]], layout=widgets.Layout(width=f"{panel_size + 12}px"))
                           for n in names])
    return widgets.VBox([widgets.HBox([slider, chooser]), info, panels])
