"""The match browser: page through synthetic images beside their nearest training slices.

Each synthetic image is shown as in Akbar et al.'s figure: synthetic | best training slice |
pixel scatter with r | that training slice's z-1 | z+1, with subject, slice, r and (where a copy
detector ran) embedding similarity.  Around it:

- order by pixel r or embedding similarity (highest first) or by id; filter to flagged copies,
  to one subject, to a range of r, or to one bar of the histogram (click the bar); jump to an id;
- a channel selector, the segmentation as a red overlay on any contrast, and one window shared
  by the image panels;
- the runner-up matches (best match from each of the k best *different* subjects), one click away;
- next / previous with buttons or the keyboard (arrow keys while the pointer is over the images);
- "copy" / "not a copy" / "unsure" marks with a comment, saved to ``<run>/marks.csv`` at once
  (:class:`workbench.evaluate.marks.MarkLog`) and shown again on return.

Panels are PNG bytes (:mod:`workbench.widgets.render`), so a step only sends a few small images.
Anything missing (no search results, unreadable stores or marks) is shown as a message in the
widget that says how to produce it, never as a traceback in the kernel log.

>>> MatchBrowser("runs/demo", reviewer="dr-a")            # doctest: +SKIP
"""
from __future__ import annotations

import html
import math

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..evaluate.marks import VERDICTS, MarkLog, mark_html
from ..memorization.analysis import EMBEDDING, PIXEL
from ..memorization.run_results import RunMatches, load_run_matches, run_matches
from .plots import match_figure
from .render import density_png, overlay_png, to_png

PANELS = ("synthetic", "match", "scatter", "prev", "next")
NEXT_KEYS = ("ArrowRight", "ArrowDown", "PageDown")
PREVIOUS_KEYS = ("ArrowLeft", "ArrowUp", "PageUp")
SHOW = {"all": "all images", "flagged": "flagged copies", "not flagged": "not flagged", "unmarked": "not yet marked",
        "copy": "marked copy", "not a copy": "marked not a copy", "unsure": "marked unsure"}


def _message(text: str, *, kind: str = "error") -> str:
    colour = {"error": "#9b1c1c", "warning": "#8a5a00", "note": "#333"}[kind]
    return f'<div class="workbench-{kind}" style="color:{colour};white-space:normal">{text}</div>'


def _slice(z) -> str:
    """The text ' z=N' for a slice of a volume; nothing for a 2D image (a radiograph has no slice index)."""
    return "" if pd.isna(z) else f" z={int(z)}"


def message_widget(title: str, err: Exception | str) -> widgets.HTML:
    """What a widget shows instead of itself when its input is missing or broken."""
    return widgets.HTML(_message(f"<b>{html.escape(title)}</b><br>{html.escape(str(err))}"),
                        layout=widgets.Layout(max_width="900px"))


class MatchBrowser:
    """Browse every synthetic image of a run beside its nearest training slices, and mark copies.

    Parameters
    ----------
    run : a run folder written by ``04_memorization`` (search results, copy flags; marks go here).
    matches, synthetic, train : instead of a run folder, search results
        (:func:`workbench.memorization.match_table` of ``synthetic`` against ``train``) and the
        stores; ``flags`` (a copy analysis's ``flags``) and ``subjects`` (the same search with
        ``distinct="subject"``) are optional.  Marks need ``run`` as well.
    reviewer : name written beside each mark.
    channel : channel shown first (name or index; default the first contrast).
    panel_size : displayed size of each panel, pixels.
    bins : bars of the histogram.
    """

    def __init__(self, run=None, *, matches: pd.DataFrame | None = None, synthetic: SliceStore | None = None,
                 train: SliceStore | None = None, flags: pd.DataFrame | None = None,
                 subjects: pd.DataFrame | None = None, reviewer: str = "reviewer", channel: str | int | None = None,
                 panel_size: int = 256, bins: int = 24):
        self.panel_size, self.n_bins = int(panel_size), int(bins)
        try:
            if matches is not None:
                if synthetic is None or train is None:
                    raise WorkbenchError("search results need the synthetic and training stores: "
                                         "MatchBrowser(matches=..., synthetic=..., train=...)")
                self.data = run_matches(matches, synthetic, train, flags=flags, subjects=subjects, run=run)
            elif run is not None:
                self.data = load_run_matches(run)
            else:
                raise WorkbenchError("give a run folder (MatchBrowser('runs/demo')) or search results and stores")
            self._build(reviewer, channel)
        except WorkbenchError as err:
            self.data = None
            self.widget = message_widget("The match browser cannot open these results", err)

    # -- building --------------------------------------------------------------------------------
    def _build(self, reviewer: str, channel) -> None:
        d: RunMatches = self.data
        self.best = d.best.set_index("synthetic", drop=False).rename_axis(None)
        self.ids = self.best["synthetic"].to_numpy()
        channels = d.synthetic.channels
        labels = d.synthetic.label_channels  # recorded in the store (store.json's label_channels)
        self.seg = d.synthetic.channel_index(labels[0]) if labels else None
        contrasts = [i for i in range(len(channels)) if i != self.seg] or [0]
        if channel is None:
            chan = contrasts[0]
        elif isinstance(channel, str):
            if channel not in channels:
                raise WorkbenchError(f"channel {channel!r} not in {channels}")
            chan = channels.index(channel)
        else:
            chan = int(channel)
        lay = widgets.Layout
        order_options = [("pixel r, highest first", "pixel")]
        if d.has_embedding:
            order_options.append(("embedding similarity, highest first", "embedding"))
        order_options.append(("synthetic id", "id"))
        self.order = widgets.Dropdown(options=order_options, value="pixel", description="order",
                                      layout=lay(width="300px"))
        show_options = [(SHOW["all"], "all")]
        if d.has_flags:
            show_options += [(SHOW["flagged"], "flagged"), (SHOW["not flagged"], "not flagged")]
        show_options += [(SHOW[v], v) for v in ("unmarked", "copy", "not a copy", "unsure")]
        self.show = widgets.Dropdown(options=show_options, value="all", description="show", layout=lay(width="240px"))
        subjects = sorted(self.best["match_subject"].dropna().astype(str).unique())
        self.subject = widgets.Dropdown(options=[("any subject", "")] + [(s, s) for s in subjects], value="",
                                        description="subject", layout=lay(width="260px"))
        rmin = math.floor(float(self.best["r"].min()) * 100) / 100
        self.r_range = widgets.FloatRangeSlider(value=(rmin, 1.0), min=rmin, max=1.0, step=0.001, description="r range",
                                                readout_format=".3f", continuous_update=False, layout=lay(width="420px"))
        self.jump_id = widgets.BoundedIntText(value=int(self.ids.min()), min=int(self.ids.min()),
                                              max=int(self.ids.max()), description="synthetic #",
                                              layout=lay(width="180px"))
        self.jump = widgets.Button(description="go", tooltip="show this synthetic image", layout=lay(width="50px"))
        self.channel = widgets.Dropdown(options=[(c, i) for i, c in enumerate(channels)], value=chan,
                                        description="channel", layout=lay(width="200px"))
        self.overlay = widgets.Checkbox(value=False, description=f"{channels[self.seg]} overlay" if self.seg is not None
                                        else "no segmentation channel", disabled=self.seg is None, indent=False,
                                        layout=lay(width="170px"))
        self.window = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01, description="window",
                                               readout_format=".2f", continuous_update=False, layout=lay(width="360px"))
        self.auto_window = widgets.Button(description="auto window", tooltip="1st to 99th percentile of the synthetic image",
                                          layout=lay(width="110px"))
        self.prev_button = widgets.Button(description="◀ previous", tooltip="previous image (← with the pointer over the images)")
        self.next_button = widgets.Button(description="next ▶", tooltip="next image (→ with the pointer over the images)")
        self.position = widgets.HTML()
        self.info = widgets.HTML(layout=lay(min_height="44px"))
        self.choice = widgets.ToggleButtons(options=[], description="match", style={"button_width": "auto"})
        self.images = {n: widgets.Image(format="png", width=self.panel_size, height=self.panel_size) for n in PANELS}
        self.titles = {n: widgets.HTML() for n in PANELS}
        panels = widgets.HBox([widgets.VBox([self.titles[n], self.images[n]], layout=lay(width=f"{self.panel_size + 8}px"))
                               for n in PANELS])
        self.panels = panels
        from ipyevents import Event  # keys while the pointer is over the images (see the module docstring)

        self._keys = Event(source=panels, watched_events=["keydown"], prevent_default_action=True)
        self._keys.on_dom_event(self._key)
        self.bars_box = widgets.HBox(layout=lay(align_items="flex-end", height="90px"))
        self.bars: list[widgets.Button] = []
        self.bin_label = widgets.HTML()
        self.clear_bin = widgets.Button(description="all bins", tooltip="stop filtering to one histogram bar",
                                        layout=lay(width="80px"))
        self.axis = widgets.HTML()
        # marks
        self.comment = widgets.Text(placeholder="comment (optional), then click a verdict", description="comment",
                                    layout=lay(width="460px"))
        self.verdicts = {v: widgets.Button(description=v, tooltip=f"mark this match: {v}",
                                           button_style={"copy": "danger", "not a copy": "success", "unsure": "warning"}[v])
                         for v in VERDICTS}
        self.mark_state = widgets.HTML()
        self.log = None
        self.marks_problem = ""
        if d.run is None:
            self.marks_problem = "Marks are saved in a run folder: open the browser with MatchBrowser(run=...) to mark."
        else:
            try:
                self.log = MarkLog(d.run, reviewer=reviewer)
            except WorkbenchError as err:
                self.marks_problem = f"Marks are off: {err}"
        for b in self.verdicts.values():
            b.disabled = self.log is None
            b.on_click(self._verdict_clicked)
        help_line = widgets.HTML(_message("Keys with the pointer over the images: ← / → previous / next, "
                                          "1–9 the match from that subject. Click a histogram bar to show its images.",
                                          kind="note"))
        self.widget = widgets.VBox([
            widgets.HBox([self.order, self.show, self.subject]),
            widgets.HBox([self.r_range, self.jump_id, self.jump]),
            widgets.HBox([self.channel, self.overlay, self.window, self.auto_window]),
            widgets.HBox([self.prev_button, self.next_button, self.position]),
            self.info, self.choice, panels, help_line,
            widgets.HBox([widgets.VBox([self.bars_box, self.axis]), widgets.VBox([self.bin_label, self.clear_bin])]),
            widgets.HBox([self.comment, *self.verdicts.values()]), self.mark_state,
        ])
        self.widget.add_class("workbench-match-browser")
        self.bin: int | None = None
        self.pos = 0
        self.shown = self.ids
        self._building = True
        self._build_histogram()
        for w in (self.order, self.show, self.subject, self.r_range):
            w.observe(self._filters_changed, names="value")
        for w in (self.channel, self.overlay, self.window):
            w.observe(lambda _: self._render(), names="value")
        self.choice.observe(lambda _: self._render() if not self._building else None, names="value")
        self.prev_button.on_click(lambda _: self.previous())
        self.next_button.on_click(lambda _: self.next())
        self.jump.on_click(lambda _: self.go_to(self.jump_id.value))
        self.auto_window.on_click(lambda _: self._auto_window())
        self.clear_bin.on_click(lambda _: self.select_bin(None))
        self._building = False
        self._update(keep=None)
        if self.marks_problem:
            self.mark_state.value = _message(html.escape(self.marks_problem), kind="warning")

    # -- what is shown --------------------------------------------------------------------------
    @property
    def value_column(self) -> str:
        """The similarity that orders the images and fills the histogram."""
        return "embedding" if self.order.value == "embedding" else "r"

    @property
    def current(self) -> int | None:
        """Id (position in the synthetic store) of the image shown, or None when none is."""
        return int(self.shown[self.pos]) if len(self.shown) else None

    def _marks(self) -> pd.DataFrame:
        return self.log.current() if self.log is not None else pd.DataFrame(columns=["verdict", "comment"])

    def filtered(self) -> np.ndarray:
        """Ids passing the filters, in the chosen order (ties by id)."""
        b = self.best
        keep = np.ones(len(b), dtype=bool)
        show = self.show.value
        if show in ("flagged", "not flagged"):
            keep &= b["copy"].fillna(False).to_numpy(bool) == (show == "flagged")
        elif show in ("unmarked", *VERDICTS):
            verdict = self._marks()["verdict"].astype(object).reindex(b["synthetic"])
            keep &= verdict.isna().to_numpy() if show == "unmarked" else verdict.eq(show).fillna(False).to_numpy(bool)
        if self.subject.value:
            keep &= (b["match_subject"].astype(str) == self.subject.value).to_numpy()
        lo, hi = self.r_range.value
        if (lo, hi) != (self.r_range.min, self.r_range.max):
            keep &= ((b["r"] >= lo) & (b["r"] <= hi)).to_numpy()
        if self.bin is not None:
            v = b[self.value_column].to_numpy(float)
            left, right = self.edges[self.bin], self.edges[self.bin + 1]
            last = self.bin == len(self.edges) - 2
            keep &= (v >= left) & ((v <= right) if last else (v < right))
        rows = b[keep]
        if self.order.value == "id":
            return rows["synthetic"].to_numpy()
        rows = rows.assign(_v=rows[self.value_column].fillna(-np.inf)).sort_values(["_v", "synthetic"],
                                                                                     ascending=[False, True])
        return rows["synthetic"].to_numpy()

    def _filters_changed(self, change) -> None:
        if self._building:
            return
        if change["owner"] is self.order:
            self.bin = None
            self._build_histogram()
        self._update(keep=self.current)

    def _update(self, *, keep: int | None) -> None:
        """Recompute the shown list, stay on image ``keep`` if it is still shown, and redraw."""
        self.shown = self.filtered()
        if keep is not None and keep in set(self.shown.tolist()):
            self.pos = int(np.flatnonzero(self.shown == keep)[0])
        else:
            self.pos = 0
        self._candidates_changed()
        self._render()
        self._paint_bars()

    def _candidates_changed(self) -> None:
        self._building = True
        try:
            if self.current is None:
                self.choice.options = []
                return
            c = self.data.candidates_of(self.current)
            label = "subject" if self.data.distinct_subjects else "match"
            self.choice.options = [(f"{int(r['rank'])} · {r['match_subject']}{_slice(r['match_z'])} · r {r['r']:.3f}",
                                    int(r["rank"])) for _, r in c.iterrows()]
            self.choice.tooltips = [f"best match from {label} #{int(r['rank'])}" for _, r in c.iterrows()]
            self.choice.value = int(c["rank"].iloc[0]) if len(c) else None
        finally:
            self._building = False

    # -- navigation -------------------------------------------------------------------------------
    def next(self) -> None:
        if len(self.shown) and self.pos < len(self.shown) - 1:
            self.pos += 1
            self._candidates_changed()
            self._render()

    def previous(self) -> None:
        if len(self.shown) and self.pos > 0:
            self.pos -= 1
            self._candidates_changed()
            self._render()

    def go_to(self, synthetic: int) -> None:
        """Show synthetic image ``synthetic``; filters that hide it are cleared."""
        synthetic = int(synthetic)
        if synthetic not in self.best.index:
            self.info.value = _message(f"There is no synthetic image #{synthetic} in these results "
                                       f"(ids {int(self.ids.min())}–{int(self.ids.max())}).")
            return
        if synthetic not in set(self.shown.tolist()):
            self._building = True
            self.show.value, self.subject.value = "all", ""
            self.r_range.value = (self.r_range.min, self.r_range.max)
            self.bin = None
            self._building = False
        self._update(keep=synthetic)

    def select_bin(self, index: int | None) -> None:
        """Show only the images in histogram bar ``index`` (None: all bars)."""
        self.bin = index
        self._update(keep=self.current)

    def _key(self, event: dict) -> None:
        key = event.get("key", "")
        if key in NEXT_KEYS:
            self.next()
        elif key in PREVIOUS_KEYS:
            self.previous()
        elif key == "Home" and len(self.shown):
            self.pos = 0
            self._candidates_changed()
            self._render()
        elif key == "End" and len(self.shown):
            self.pos = len(self.shown) - 1
            self._candidates_changed()
            self._render()
        elif key.isdigit() and int(key) in [v for _, v in self.choice.options]:
            self.choice.value = int(key)

    # -- drawing ----------------------------------------------------------------------------------
    def _match_row(self) -> pd.Series | None:
        if self.current is None:
            return None
        c = self.data.candidates_of(self.current)
        chosen = c[c["rank"] == self.choice.value] if self.choice.value is not None else c.iloc[:0]
        return chosen.iloc[0] if len(chosen) else self.best.loc[self.current]

    def _plane(self, image: np.ndarray | None) -> bytes:
        shape = self.data.synthetic.image_shape[1:]
        lo, hi = self.window.value
        if image is None:
            return to_png(np.ones(shape), size=self.panel_size)
        c = self.channel.value
        if self.overlay.value and self.seg is not None and c != self.seg:
            return overlay_png(image[c], image[self.seg], vmin=lo, vmax=hi, size=self.panel_size)
        if c == self.seg:
            return to_png(image[c], size=self.panel_size)  # labels: never windowed
        return to_png(image[c], vmin=lo, vmax=hi, size=self.panel_size)

    def _render(self) -> None:
        if self._building:
            return
        n = len(self.shown)
        self.prev_button.disabled = n == 0 or self.pos == 0
        self.next_button.disabled = n == 0 or self.pos >= n - 1
        if n == 0:
            self.position.value = "<b>0</b> images shown"
            self.info.value = _message("No synthetic image passes these filters.", kind="warning")
            for name in PANELS:
                self.images[name].value, self.titles[name].value = to_png(np.ones((8, 8))), ""
            self._show_mark()
            return
        sid, row = self.current, self.best.loc[self.current]
        match = self._match_row()
        self.position.value = f"image <b>{self.pos + 1}</b> of {n} shown ({len(self.ids)} in all)"
        try:
            d = self.data
            synth = d.synthetic[sid]
            rows = [int(match["match_row"])] + [int(match[k]) for k in ("match_prev", "match_next") if pd.notna(match[k])]
            read = dict(zip(rows, d.train.read_rows(rows)))
        except (WorkbenchError, OSError, ValueError) as err:
            self.info.value = _message(f"Synthetic image #{sid}: its images cannot be read ({html.escape(str(err))}). "
                                       "Check that the stores named in memorization.json are where they were written.")
            return
        best_img = read[int(match["match_row"])]
        prev = read.get(int(match["match_prev"])) if pd.notna(match["match_prev"]) else None
        nxt = read.get(int(match["match_next"])) if pd.notna(match["match_next"]) else None
        z = match["match_z"]
        for name, img in (("synthetic", synth), ("match", best_img), ("prev", prev), ("next", nxt)):
            self.images[name].value = self._plane(img)
        self.images["scatter"].value = density_png(best_img, synth, size=self.panel_size)
        subject = html.escape(str(match["match_subject"]))
        zi = None if pd.isna(z) else int(z)
        where = _slice(z)
        self.titles["synthetic"].value = f"<b>synthetic #{sid}</b>"
        self.titles["match"].value = f"<b>{subject}</b>{where} · row {int(match['match_row'])}"
        self.titles["scatter"].value = f"pixels, all channels · r = {match['r']:.4f}"
        if zi is None:
            self.titles["prev"].value = self.titles["next"].value = "no adjacent slices (a 2D image)"
        else:
            self.titles["prev"].value = f"{subject} z={zi - 1}" if prev is not None else "z−1 not in the store"
            self.titles["next"].value = f"{subject} z={zi + 1}" if nxt is not None else "z+1 not in the store"
        parts = [f"<b>synthetic #{sid}</b>",
                 f"match {int(match['rank'])}: <b>{subject}</b>{' slice' + where if where else ''} "
                 f"(training row {int(match['match_row'])})",
                 f"pixel r = <b>{match['r']:.4f}</b>"]
        if int(match["rank"]) != 1:
            parts.append(f"best r = {row['r']:.4f} ({html.escape(str(row['match_subject']))} z={row['match_z']})")
        if "embedding" in row.index and pd.notna(row["embedding"]):
            where = ""
            if "embedding_row" in row.index and pd.notna(row["embedding_row"]):
                m = d.train.manifest.iloc[int(row["embedding_row"])]  # d.train holds every store row
                where = f" ({html.escape(str(m['subject']))} z={m['z']})"
            parts.append(f"embedding similarity = <b>{row['embedding']:.3f}</b>{where}")
        if d.has_flags:
            if bool(row["copy"]):
                why = [name for name, col in ((PIXEL, "pixel_copy"), (EMBEDDING, "embedding_copy"))
                       if col in row.index and bool(row[col])]
                tau = ", ".join(f"{w} > {d.thresholds[w]:.3f}" if w in d.thresholds else w for w in why)
                parts.append(f'<span style="color:#b91c1c"><b>flagged as a copy</b> ({tau})</span>')
            else:
                parts.append("not flagged")
        self.info.value = " · ".join(parts)
        self._show_mark()

    def _auto_window(self) -> None:
        if self.current is None:
            return
        plane = self.data.synthetic[self.current][self.channel.value]
        lo, hi = np.percentile(plane, [1, 99])
        if hi - lo < 0.02:
            lo, hi = 0.0, 1.0
        self.window.value = (float(np.floor(lo * 100) / 100), float(np.ceil(hi * 100) / 100))

    # -- histogram --------------------------------------------------------------------------------
    def _build_histogram(self) -> None:
        v = self.best[self.value_column].to_numpy(float)
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.005, hi + 0.005
        self.edges = np.linspace(lo, hi, self.n_bins + 1)
        counts, _ = np.histogram(v, bins=self.edges)
        self.counts = counts
        name = PIXEL if self.value_column == "r" else EMBEDDING
        tau = self.data.thresholds.get(name)
        self.bars = []
        top = max(int(counts.max()), 1) if counts.size else 1
        for i, n in enumerate(counts):
            left, right = self.edges[i], self.edges[i + 1]
            above = tau is not None and left >= tau
            bar = widgets.Button(description="", tooltip=f"{name} {left:.3f}–{right:.3f}: {n} images",
                                 layout=widgets.Layout(width="18px", height=f"{6 + 80 * n / top:.0f}px" if n else "2px",
                                                       padding="0", margin="0 1px"),
                                 style={"button_color": ("#dc2626" if above else "#64748b") if n else
                                        ("#fca5a5" if above else "#cbd5e1")})
            bar.add_class("workbench-histogram-bar")
            bar.on_click(lambda _, i=i: self.select_bin(i))
            self.bars.append(bar)
        self.bars_box.children = self.bars
        tau_text = f" · red: above the copy threshold τ = {tau:.3f}" if tau is not None else ""
        self.axis.value = (f"<small>highest {name} per synthetic image: {lo:.3f} … {hi:.3f}{tau_text}</small>")

    def _paint_bars(self) -> None:
        for i, bar in enumerate(self.bars):
            bar.style.font_weight = "bold" if i == self.bin else ""
            bar.layout.border = "2px solid #111" if i == self.bin else ""
        self.clear_bin.disabled = self.bin is None
        if self.bin is None:
            self.bin_label.value = "<small>all bars</small>"
        else:
            name = PIXEL if self.value_column == "r" else EMBEDDING
            self.bin_label.value = (f"showing the bar {name} {self.edges[self.bin]:.3f}–{self.edges[self.bin + 1]:.3f} "
                                    f"({int(self.counts[self.bin])} images)")

    # -- marks --------------------------------------------------------------------------------------
    def _show_mark(self) -> None:
        if self.log is None or self.current is None:
            return
        marks = self._marks()
        if self.current in marks.index:
            m = marks.loc[self.current]
            self.mark_state.value = mark_html(m)
            self.comment.value = str(m["comment"])
        else:
            self.mark_state.value = "not marked yet"
            self.comment.value = ""

    def mark(self, verdict: str, comment: str | None = None) -> None:
        """Mark the image shown (saved to ``<run>/marks.csv`` at once)."""
        if self.log is None:
            raise WorkbenchError(self.marks_problem)
        if self.current is None:
            raise WorkbenchError("no image is shown to mark")
        self.log.mark(self.current, verdict, comment=self.comment.value if comment is None else comment)
        self._show_mark()

    def _verdict_clicked(self, button) -> None:
        try:
            self.mark(button.description)
        except (WorkbenchError, OSError) as err:
            self.mark_state.value = _message(f"The mark was not saved: {html.escape(str(err))}")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# -- the static figure of one match (the study's figure), for notebooks and reports --------------------
def _best_rows(matches: pd.DataFrame) -> pd.DataFrame:
    best = matches[matches["rank"] == 1] if "rank" in matches.columns else matches
    return best.sort_values("r", ascending=False).reset_index(drop=True)


def match_images(matches: pd.DataFrame, position: int, synthetic: SliceStore, train: SliceStore) -> dict:
    """Images and labels of the ``position``-th strongest match (0 = highest r)."""
    synthetic = align_channels(synthetic, train, what="synthetic images")  # panels pair channels by name
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
    synthetic = align_channels(synthetic, train, what="synthetic images")
    m = match_images(matches, position, synthetic, train)
    n = len(_best_rows(matches))
    return match_figure(m["synthetic"], m["match"], m["prev"], m["next"], r=float(m["row"]["r"]), channel=channel,
                        channel_name=f"channel: {synthetic.channels[channel]} · rank {position + 1} of {n} by r",
                        titles=m["titles"])
