"""A first match browser: a slider over synthetic images ordered by their max r.

Each position shows synthetic | best training slice | pixel scatter with r | that training
slice's z-1 | z+1, for a chosen channel.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pandas as pd
from IPython.display import display

from ..data.store import SliceStore
from .plots import match_figure


def _best_rows(matches: pd.DataFrame) -> pd.DataFrame:
    best = matches[matches["rank"] == 1] if "rank" in matches.columns else matches
    return best.sort_values("r", ascending=False).reset_index(drop=True)


def figure_for(matches: pd.DataFrame, position: int, synthetic: SliceStore, train: SliceStore, *, channel: int = 0):
    """The five-panel figure for the ``position``-th strongest match (0 = highest r)."""
    best = _best_rows(matches)
    row = best.iloc[int(position)]
    syn = synthetic[int(row["query"])]
    match = train.read_rows([int(row["match_row"])])[0]
    prev = None if pd.isna(row["match_prev"]) else train.read_rows([int(row["match_prev"])])[0]
    nxt = None if pd.isna(row["match_next"]) else train.read_rows([int(row["match_next"])])[0]
    z = row["match_z"]
    titles = {
        "synthetic": f"synthetic #{int(row['query'])}",
        "match": f"{row['match_subject']} z={z}",
        "prev": f"z={int(z) - 1}" if prev is not None else "z−1 (not in store)",
        "next": f"z={int(z) + 1}" if nxt is not None else "z+1 (not in store)",
    }
    return match_figure(syn, match, prev, nxt, r=float(row["r"]), channel=channel,
                        channel_name=f"channel: {synthetic.channels[channel]} · rank {position + 1} of {len(best)} by r",
                        titles=titles)


def match_browser(matches: pd.DataFrame, synthetic: SliceStore, train: SliceStore, *, channel: str | int = 0) -> widgets.VBox:
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
    out = widgets.Output()

    def show(*_):
        row = best.iloc[slider.value]
        info.value = (f"<b>synthetic #{int(row['query'])}</b> · best match <b>{row['match_subject']}</b> "
                      f"slice z={row['match_z']} · r = <b>{row['r']:.4f}</b>")
        with out:
            out.clear_output(wait=True)
            display(figure_for(best, slider.value, synthetic, train, channel=chooser.value))

    slider.observe(show, names="value")
    chooser.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([slider, chooser]), info, out])
