"""The volume viewer: a synthetic 3D volume beside its best-matching training volume, in linked views.

Each synthetic volume of a volume store (``store.is_volume``: images ``(C, D, H, W)``, D axial
planes from inferior to superior, each plane with anterior up and the subject's left on the
image's left) is shown beside the training volume with the highest Pearson r over all its
voxels (the exact search, :func:`workbench.search.topk_correlation`, which sees a volume as one
long vector), in three orthogonal views each:

- **axial** (plane z, as stored), **coronal** (row y; superior up, left on the left) and
  **sagittal** (column x; superior up, anterior on the left);
- one cursor (x, y, z) shared by all six panels: click a point in any panel, drag the x / y / z
  sliders, or press ↑ / ↓ (z up / down) with the pointer over the panels; a yellow cross-hair marks
  the cursor in every panel;
- a channel selector, the segmentation as a red overlay on any contrast, and one window shared by
  the panels (as in the 2D match browser);
- the **slice profile**: for each axial plane z, Pearson r between the synthetic plane and the
  training volume's plane (:func:`slice_profile`), over all channels or over the channel shown,
  drawn as a small line plot with the cursor's z marked; click the plot to move z there.  A copy
  of a training volume has r near 1 on every plane; a volume that copies a few planes (or a
  tumour) has a peak there;
- next / previous volume (buttons, or ← / → with the pointer over the panels) in order of r,
  highest first; a header with the synthetic id, its seed and model, the training subject and r;
- "copy" / "not a copy" / "unsure" marks with a comment, saved to ``<run>/marks.csv`` at once
  (:class:`workbench.evaluate.marks.MarkLog`, keyed by the synthetic volume's position in its
  store) and shown again on return.  Give the run folder of the volume study: its marks are of
  volumes, not of the slices a 2D match browser marks.

Why panels drawn in the kernel and not ipyniivue
------------------------------------------------
ipyniivue (NiiVue, a WebGL2 volume viewer, as an anywidget) was tried (2.4.4, with anywidget
0.11, Voila 0.5): it does render in Voila in headless chromium offline (WebGL2 through ANGLE on
SwiftShader, no request leaves 127.0.0.1).  The panels are drawn in the kernel as PNG bytes
(:mod:`workbench.widgets.render`) all the same, because

- a step sends only the six planes shown (a few kB each); NiiVue needs whole volumes in the page
  as float32 NIfTI: the channel shown and the segmentation of two 128³ volumes are 34 MB per step,
  of a BraTS-size pair ~140 MB;
- on the machines this workbench runs on (no GPU; headless chromium) WebGL2 is software
  rendering, and a page with two NiiVue canvases kept in sync is heavier than six images;
- what the reviewer sees is the store's voxels with the same window, overlay and nearest-neighbour
  upscaling as the 2D match browser, and it can be tested without a browser (the panels are
  bytes in the kernel; a WebGL canvas cannot be read back without ``preserveDrawingBuffer``);
- it would add anywidget, psygnal and a 5 MB script to the dependencies, and each volume would
  have to be encoded as a NIfTI file (its ``path`` or ``data``) to reach the page.

ipyniivue remains the better tool for free 3D rendering (a rendered volume, oblique planes); it
could be shown beside this viewer if that is ever wanted.

Anything missing or broken (a store of 2D slices, channels that differ, empty stores, an
unreadable marks file) is shown as a message in the widget that says what to do, never as a
traceback.

>>> VolumeViewer("stores/synthetic_volumes", "stores/volumes", run="runs/volumes", reviewer="dr-a")  # doctest: +SKIP
"""
from __future__ import annotations

import html
import io
import math
import os
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..evaluate.marks import VERDICTS, MarkLog, mark_html
from ..search import topk_correlation
from .match_browser import message_widget
from .render import crosshair_png, to_png

VIEWS = ("axial", "coronal", "sagittal")
ROWS = ("synthetic", "train")
NEXT_KEYS = ("ArrowRight", "PageDown")
PREVIOUS_KEYS = ("ArrowLeft", "PageUp")
UP_KEYS = ("ArrowUp",)
DOWN_KEYS = ("ArrowDown",)

#: the slice-profile plot: size and margins (pixels) of its PNG
PROFILE_WIDTH, PROFILE_HEIGHT = 420, 130
PROFILE_PAD = (34, 10, 10, 20)  # left, right, top, bottom
PROFILE_LINE = (37, 99, 235)
PROFILE_CURSOR = (217, 119, 6)


def _message(text: str, *, kind: str = "error") -> str:
    colour = {"error": "#9b1c1c", "warning": "#8a5a00", "note": "#333"}[kind]
    return f'<div class="workbench-{kind}" style="color:{colour};white-space:normal">{text}</div>'


# -- the slice profile --------------------------------------------------------------------------------
def slice_profile(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between ``a`` and ``b`` on each axial plane: an array of length D.

    ``a`` and ``b`` are volumes ``(D, H, W)`` (one channel) or ``(C, D, H, W)`` (r of plane z over
    all its channels' voxels together, as the search computes r over all channels).  A plane that
    is constant in either volume has no Pearson r: NaN there.  Computed in float64.

    >>> r = slice_profile(synthetic[0], train[best])          # doctest: +SKIP
    >>> int(np.nanargmax(r))                                   # doctest: +SKIP
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise WorkbenchError(f"slice_profile: volumes of shapes {a.shape} and {b.shape} differ")
    if a.ndim not in (3, 4):
        raise WorkbenchError(f"slice_profile: a volume is (D, H, W) or (C, D, H, W), got shape {a.shape}")
    if a.ndim == 4:
        a, b = np.moveaxis(a, 1, 0), np.moveaxis(b, 1, 0)
    d = a.shape[0]
    x = a.reshape(d, -1).astype(np.float64)
    y = b.reshape(d, -1).astype(np.float64)
    if x.shape[1] == 0:
        return np.full(d, np.nan)
    constant = (x.max(1) == x.min(1)) | (y.max(1) == y.min(1))
    x -= x.mean(1, keepdims=True)
    y -= y.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))
    r = np.clip(r, -1.0, 1.0)
    r[constant] = np.nan
    return r


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def profile_png(r: np.ndarray, z: int | None = None) -> bytes:
    """The slice profile ``r`` (one value per axial plane) as a small line plot, with plane ``z`` marked.

    z runs left to right (0 = inferior), r upwards from min(0, lowest r) to 1; NaN planes are gaps.
    """
    r = np.asarray(r, dtype=np.float64)
    left, right, top, bottom = PROFILE_PAD
    img = Image.new("RGB", (PROFILE_WIDTH, PROFILE_HEIGHT), "white")
    g = ImageDraw.Draw(img)
    font = _font(10)
    finite = r[np.isfinite(r)]
    lo = min(0.0, math.floor(float(finite.min()) * 10) / 10) if finite.size else 0.0
    x0, x1, y0, y1 = left, PROFILE_WIDTH - right, top, PROFILE_HEIGHT - bottom

    def px(i):
        return x0 + (x1 - x0) * (i / max(len(r) - 1, 1))

    def py(v):
        return y1 - (y1 - y0) * (v - lo) / (1.0 - lo)

    for v in sorted({lo, 0.0, 0.5, 1.0}):
        if lo <= v <= 1:
            g.line([(x0, py(v)), (x1, py(v))], fill=(226, 232, 240) if v not in (0.0, 1.0) else (203, 213, 225))
            g.text((2, py(v) - 6), f"{v:.1f}", fill=(71, 85, 105), font=font)
    g.rectangle([x0, y0, x1, y1], outline=(148, 163, 184))
    g.text((x0, y1 + 4), "z=0", fill=(71, 85, 105), font=font)
    end = f"z={len(r) - 1}"
    g.text((x1 - g.textlength(end, font=font), y1 + 4), end, fill=(71, 85, 105), font=font)
    if z is not None and 0 <= z < len(r):
        g.line([(px(z), y0), (px(z), y1)], fill=PROFILE_CURSOR, width=1)
    run: list[tuple[float, float]] = []
    for i, v in enumerate(r.tolist() + [np.nan]):
        if np.isfinite(v):
            run.append((px(i), py(v)))
            continue
        if len(run) > 1:
            g.line(run, fill=PROFILE_LINE, width=2)
        elif len(run) == 1:
            (cx, cy), = run
            g.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=PROFILE_LINE)
        run = []
    if z is not None and 0 <= z < len(r) and np.isfinite(r[z]):
        cx, cy = px(z), py(r[z])
        g.ellipse([cx - 3.5, cy - 3.5, cx + 3.5, cy + 3.5], fill=PROFILE_CURSOR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def profile_z(data_x: float, depth: int) -> int:
    """The plane z under horizontal pixel ``data_x`` of :func:`profile_png` (clipped to 0..depth-1)."""
    left, right, _, _ = PROFILE_PAD
    frac = (float(data_x) - left) / (PROFILE_WIDTH - right - left)
    return int(np.clip(round(frac * (depth - 1)), 0, depth - 1))


# -- the orthogonal views --------------------------------------------------------------------------------
def view_plane(volume: np.ndarray, view: str, cursor: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2D plane of ``volume`` (D, H, W) that ``view`` shows through ``cursor`` = (x, y, z), in
    display orientation, and the cursor's (row, column) in it."""
    x, y, z = cursor
    d = volume.shape[0]
    if view == "axial":
        return volume[z], (y, x)
    if view == "coronal":
        return volume[::-1, y, :], (d - 1 - z, x)
    if view == "sagittal":
        return volume[::-1, :, x], (d - 1 - z, y)
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def cursor_at(view: str, row: int, col: int, cursor: tuple[int, int, int], depth: int) -> tuple[int, int, int]:
    """The cursor (x, y, z) after a click on pixel (row, column) of ``view``: the view's own axis stays."""
    x, y, z = cursor
    if view == "axial":
        return col, row, z
    if view == "coronal":
        return col, y, depth - 1 - row
    if view == "sagittal":
        return x, col, depth - 1 - row
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def _open(store, what: str) -> SliceStore:
    if isinstance(store, SliceStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return SliceStore.open(store)
    raise WorkbenchError(f"the {what} store must be a SliceStore or a store folder, got {type(store).__name__}")


def _matches(matches, n_synthetic: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(best training row, its r) per synthetic volume from ``(indices, values)`` or a SearchResult."""
    if hasattr(matches, "indices") and hasattr(matches, "values") and not isinstance(matches, (tuple, list)):
        indices, values = matches.indices, matches.values
    else:
        try:
            indices, values = matches
        except (TypeError, ValueError):
            raise WorkbenchError("matches must be a pair (indices, values) of each synthetic volume's best "
                                 "training volume and its r, or the SearchResult of topk_correlation") from None
    indices, values = np.asarray(indices), np.asarray(values)

    def integral(a):
        return a.size > 0 and np.issubdtype(a.dtype, np.number) and np.all(np.isfinite(a)) and np.all(a == np.round(a))

    if not integral(indices) and integral(values):  # given in SearchResult's unpacking order (values, indices)
        indices, values = values, indices
    indices, values = np.asarray(indices), np.asarray(values, dtype=np.float64)
    if indices.ndim == 2:
        indices = indices[:, 0]
    if values.ndim == 2:
        values = values[:, 0]
    if indices.shape != (n_synthetic,) or values.shape != (n_synthetic,):
        raise WorkbenchError(f"matches hold {indices.shape[0] if indices.ndim else 0} indices and "
                             f"{values.shape[0] if values.ndim else 0} values for {n_synthetic} synthetic volumes; "
                             f"give one best training volume per synthetic volume (topk_correlation(synthetic, train, k=1))")
    if not integral(indices):
        raise WorkbenchError("matches: the indices of the training volumes must be whole numbers")
    indices = indices.astype(np.int64)
    bad = (indices >= n_train) | (indices < -1)
    if bad.any():
        raise WorkbenchError(f"matches: training volume {int(indices[bad][0])} is not in the training store "
                             f"(0..{n_train - 1}); were the matches searched against another store?")
    return indices, values


class VolumeViewer:
    """A synthetic volume beside its best training volume in linked axial / coronal / sagittal views.

    Parameters
    ----------
    synthetic, train : volume stores (``SliceStore`` with ``is_volume``, or their folders) with the
        same channels (matched by name) and volume size.
    matches : each synthetic volume's best training volume (position in ``train``) and its Pearson
        r, as a pair ``(indices, values)`` of length N (or N x k: the first column is used), or the
        SearchResult of :func:`workbench.search.topk_correlation`; None: searched here
        (``topk_correlation(synthetic, train, k=1)``).
    run : folder where marks are saved (``<run>/marks.csv``); None: marking is off.
    reviewer : name written beside each mark.
    channel : channel shown first (name or index; default the first contrast).
    index : position in the order by r to show first (0: the highest r).
    panel_size : displayed size of the longest side of a panel, pixels.

    The viewer shows itself in a notebook; ``viewer.widget`` is its ipywidget.
    """

    def __init__(self, synthetic, train, *, matches=None, run=None, reviewer: str = "reviewer",
                 channel: str | int | None = None, index: int = 0, panel_size: int = 224):
        self.panel_size = int(panel_size)
        self.synthetic = self.train = None
        try:
            self._load(synthetic, train, matches)
            self._build(run, reviewer, channel, index)
        except (WorkbenchError, OSError) as err:
            self.synthetic = self.train = None
            self.widget = message_widget("The volume viewer cannot open these volumes", err)

    # -- input ---------------------------------------------------------------------------------------
    def _load(self, synthetic, train, matches) -> None:
        train = _open(train, "training")
        synthetic = _open(synthetic, "synthetic")
        for store, what in ((synthetic, "synthetic"), (train, "training")):
            if not store.is_volume:
                raise WorkbenchError(f"{store.path}: the {what} store holds 2D slices {store.image_shape}, not volumes; "
                                     f"browse slices with MatchBrowser, or build a volume store with "
                                     f"workbench.data.volumes.prepare_volume_store")
            if len(store) == 0:
                raise WorkbenchError(f"{store.path}: the {what} store (or the view of it given) holds no volumes")
        synthetic = align_channels(synthetic, train, what="synthetic volumes")
        if synthetic.image_shape != train.image_shape:
            raise WorkbenchError(f"{synthetic.path}: synthetic volumes of shape {synthetic.image_shape} but "
                                 f"{train.path} holds {train.image_shape}; the views pair voxels, so both must be "
                                 f"(C, D, H, W) of one size (prepare both with the same size=)")
        if matches is None:
            matches = topk_correlation(synthetic, train, k=1)
        self.best, self.r = _matches(matches, len(synthetic), len(train))
        self.synthetic, self.train = synthetic, train
        r = np.where(np.isfinite(self.r) & (self.best >= 0), self.r, -np.inf)
        self.order = np.lexsort((np.arange(len(r)), -r))  # r highest first, ties by id

    # -- building ------------------------------------------------------------------------------------
    def _build(self, run, reviewer: str, channel, index: int) -> None:
        channels = self.train.channels
        labels = self.train.label_channels
        self.seg = channels.index(labels[0]) if labels else None
        contrasts = [i for i in range(len(channels)) if i != self.seg] or [0]
        if channel is None:
            chan = contrasts[0]
        elif isinstance(channel, str):
            if channel not in channels:
                raise WorkbenchError(f"channel {channel!r} is not one of the stores' channels {channels}")
            chan = channels.index(channel)
        else:
            chan = int(channel)
            if not 0 <= chan < len(channels):
                raise WorkbenchError(f"channel {chan} is out of range: the stores have {len(channels)} channels {channels}")
        _, self.depth, self.height, self.width = self.train.image_shape
        d, h, w = self.depth, self.height, self.width
        scale = self.panel_size / max(d, h, w)  # one scale for all views: a voxel is as large in each
        #: (width, height) of each view's PNG, as render's upscaling makes it
        self.panel_px = {view: (round(cols * scale), round(round(cols * scale) * rows / cols))
                         for view, (rows, cols) in (("axial", (h, w)), ("coronal", (d, w)), ("sagittal", (d, h)))}
        lay = widgets.Layout
        self.position = widgets.HTML()
        self.info = widgets.HTML(layout=lay(min_height="44px"))
        self.prev_button = widgets.Button(description="◀ previous", tooltip="previous volume (← with the pointer over the panels)")
        self.next_button = widgets.Button(description="next ▶", tooltip="next volume (→ with the pointer over the panels)")
        self.channel = widgets.Dropdown(options=[(c, i) for i, c in enumerate(channels)], value=chan,
                                        description="channel", layout=lay(width="200px"))
        self.overlay = widgets.Checkbox(value=False, description=f"{channels[self.seg]} overlay" if self.seg is not None
                                        else "no segmentation channel", disabled=self.seg is None, indent=False,
                                        layout=lay(width="170px"))
        self.window = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01, description="window",
                                               readout_format=".2f", continuous_update=False, layout=lay(width="360px"))
        self.auto_window = widgets.Button(description="auto window", layout=lay(width="110px"),
                                          tooltip="1st to 99th percentile of the synthetic volume's channel")
        self.x = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="x (L→R)", continuous_update=False,
                                   layout=lay(width="320px"))
        self.y = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="y (A→P)", continuous_update=False,
                                   layout=lay(width="320px"))
        self.z = widgets.IntSlider(value=d // 2, min=0, max=d - 1, description="z (I→S)", continuous_update=False,
                                   layout=lay(width="320px"))
        for s in (self.x, self.y, self.z):
            s.add_class("workbench-cursor")
        self.images = {(row, v): widgets.Image(format="png", width=self.panel_px[v][0], height=self.panel_px[v][1])
                       for row in ROWS for v in VIEWS}
        self.titles = {(row, v): widgets.HTML() for row in ROWS for v in VIEWS}
        self.row_titles = {row: widgets.HTML(layout=lay(width="120px")) for row in ROWS}
        from ipyevents import Event  # clicks on the panels, keys while the pointer is over them

        self._clicks = []
        for (row, v), image in self.images.items():
            image.add_class(f"workbench-{row}-{v}")
            ev = Event(source=image, watched_events=["click"], prevent_default_action=True)
            ev.on_dom_event(lambda event, v=v: self.click(v, event))
            self._clicks.append(ev)
        grid = widgets.VBox([
            widgets.HBox([self.row_titles[row]] + [widgets.VBox([self.titles[(row, v)], self.images[(row, v)]],
                                                                layout=lay(margin="0 6px 4px 0"))
                                                   for v in VIEWS], layout=lay(align_items="center"))
            for row in ROWS])
        self.panels = grid
        self._keys = Event(source=grid, watched_events=["keydown"], prevent_default_action=True)
        self._keys.on_dom_event(self._key)
        # the slice profile
        self.profile_over = widgets.ToggleButtons(options=[("all channels", "all"), ("channel shown", "channel")],
                                                  value="all", description="r over", style={"button_width": "auto"})
        self.profile_image = widgets.Image(format="png", width=PROFILE_WIDTH, height=PROFILE_HEIGHT)
        self.profile_image.add_class("workbench-slice-profile")
        self._profile_click = Event(source=self.profile_image, watched_events=["click"], prevent_default_action=True)
        self._profile_click.on_dom_event(self._profile_clicked)
        self.profile_text = widgets.HTML()
        profile = widgets.VBox([widgets.HTML("<b>slice profile</b>: r of each axial plane, synthetic vs training "
                                             "(click to move z)"),
                                self.profile_over, self.profile_image, self.profile_text])
        # marks
        self.comment = widgets.Text(placeholder="comment (optional), then click a verdict", description="comment",
                                    layout=lay(width="460px"))
        self.verdicts = {v: widgets.Button(description=v, tooltip=f"mark this volume: {v}",
                                           button_style={"copy": "danger", "not a copy": "success", "unsure": "warning"}[v])
                         for v in VERDICTS}
        self.mark_state = widgets.HTML()
        self.log, self.marks_problem = None, ""
        if run is None:
            self.marks_problem = "Marks are saved in a run folder: open the viewer with VolumeViewer(..., run=...) to mark."
        else:
            folder = Path(getattr(run, "path", run))
            if not folder.is_dir():
                self.marks_problem = f"Marks are off: {folder} is not a folder; create it or give another run= to mark."
            else:
                try:
                    self.log = MarkLog(folder, reviewer=reviewer)
                except (WorkbenchError, OSError) as err:
                    self.marks_problem = f"Marks are off: {err}"
        for b in self.verdicts.values():
            b.disabled = self.log is None
            b.on_click(self._verdict_clicked)
        help_line = widgets.HTML(_message("Click any panel to move the cursor there. Keys with the pointer over the panels: "
                                          "← / → previous / next volume, ↑ / ↓ z up / down.", kind="note"))
        self.widget = widgets.VBox([
            widgets.HBox([self.prev_button, self.next_button, self.position]),
            self.info,
            widgets.HBox([self.channel, self.overlay, self.window, self.auto_window]),
            widgets.HBox([self.x, self.y, self.z]),
            widgets.HBox([grid, profile], layout=lay(flex_flow="row wrap", align_items="flex-start")),
            help_line,
            widgets.HBox([self.comment, *self.verdicts.values()]), self.mark_state,
        ])
        self.widget.add_class("workbench-volume-viewer")
        self._building = True
        self.pos = int(np.clip(index, 0, len(self.order) - 1))
        for s in (self.x, self.y, self.z):
            s.observe(lambda _: self._render(), names="value")
        for wdg in (self.overlay, self.window):
            wdg.observe(lambda _: self._render(), names="value")
        self.channel.observe(lambda _: self._profile_changed(render=True, channel_only=True), names="value")
        self.profile_over.observe(lambda _: self._profile_changed(), names="value")
        self.prev_button.on_click(lambda _: self.previous())
        self.next_button.on_click(lambda _: self.next())
        self.auto_window.on_click(lambda _: self._auto_window())
        self._building = False
        self._volume_changed()
        if self.marks_problem:
            self.mark_state.value = _message(html.escape(self.marks_problem), kind="warning")

    # -- what is shown -------------------------------------------------------------------------------
    @property
    def current(self) -> int:
        """Id (position in the synthetic store) of the volume shown."""
        return int(self.order[self.pos])

    @property
    def cursor(self) -> tuple[int, int, int]:
        """The cursor (x, y, z) shared by all panels."""
        return int(self.x.value), int(self.y.value), int(self.z.value)

    def set_cursor(self, x: int | None = None, y: int | None = None, z: int | None = None) -> None:
        """Move the cursor (clipped to the volume); every panel is drawn once."""
        self._building = True
        try:
            for slider, v in ((self.x, x), (self.y, y), (self.z, z)):
                if v is not None:
                    slider.value = int(np.clip(v, slider.min, slider.max))
        finally:
            self._building = False
        self._render()

    def click(self, view: str, event: dict) -> None:
        """A click on a panel of ``view``: the cursor moves to the voxel under the pointer."""
        width, height = self.panel_px[view]
        if "dataX" in event:  # ipyevents: pixels of the PNG as sent
            fx, fy = float(event["dataX"]) / width, float(event["dataY"]) / height
        elif "relativeX" in event and event.get("boundingRectWidth"):
            fx = float(event["relativeX"]) / float(event["boundingRectWidth"])
            fy = float(event["relativeY"]) / float(event["boundingRectHeight"])
        else:
            return
        d, h, w = self.depth, self.height, self.width
        rows, cols = {"axial": (h, w), "coronal": (d, w), "sagittal": (d, h)}[view]
        row = int(np.clip(math.floor(fy * rows), 0, rows - 1))
        col = int(np.clip(math.floor(fx * cols), 0, cols - 1))
        self.set_cursor(*cursor_at(view, row, col, self.cursor, d))

    def _profile_clicked(self, event: dict) -> None:
        if "dataX" in event:
            self.set_cursor(z=profile_z(event["dataX"], self.depth))

    # -- navigation ----------------------------------------------------------------------------------
    def next(self) -> None:
        if self.pos < len(self.order) - 1:
            self.pos += 1
            self._volume_changed()

    def previous(self) -> None:
        if self.pos > 0:
            self.pos -= 1
            self._volume_changed()

    def go_to(self, synthetic: int) -> None:
        """Show synthetic volume ``synthetic`` (its position in the synthetic store)."""
        synthetic = int(synthetic)
        if not 0 <= synthetic < len(self.order):
            self.info.value = _message(f"There is no synthetic volume #{synthetic} (ids 0–{len(self.order) - 1}).")
            return
        self.pos = int(np.flatnonzero(self.order == synthetic)[0])
        self._volume_changed()

    def _key(self, event: dict) -> None:
        key = event.get("key", "")
        if key in NEXT_KEYS:
            self.next()
        elif key in PREVIOUS_KEYS:
            self.previous()
        elif key in UP_KEYS:
            self.set_cursor(z=self.z.value + 1)
        elif key in DOWN_KEYS:
            self.set_cursor(z=self.z.value - 1)
        elif key == "Home":
            self.pos = 0
            self._volume_changed()
        elif key == "End":
            self.pos = len(self.order) - 1
            self._volume_changed()

    # -- drawing -------------------------------------------------------------------------------------
    def _volume_changed(self) -> None:
        sid = self.current
        j = int(self.best[sid])
        self.volumes = {"synthetic": self.synthetic[sid], "train": self.train[j] if j >= 0 else None}
        n = len(self.order)
        self.prev_button.disabled = self.pos == 0
        self.next_button.disabled = self.pos >= n - 1
        self.position.value = f"volume <b>{self.pos + 1}</b> of {n}, by r (highest first)"
        sm = self.synthetic.manifest.iloc[sid]
        made = [f"{k} {html.escape(str(sm[k]))}" for k in ("seed", "model", "run") if k in sm.index and pd.notna(sm[k])]
        parts = [f"<b>synthetic #{sid}</b>" + (f" ({', '.join(made)})" if made else "")]
        if j >= 0:
            tm = self.train.manifest.iloc[j]
            subject = html.escape(str(tm["subject"])) if pd.notna(tm["subject"]) else f"row {j}"
            parts += [f"best training volume: <b>{subject}</b> (training volume {j})", f"r = <b>{self.r[sid]:.4f}</b>"]
            self.row_titles["train"].value = f"<b>{subject}</b><br><small>training volume {j}</small>"
        else:
            parts.append("no match: the synthetic volume is constant (Pearson r is undefined)")
            self.row_titles["train"].value = "<b>no match</b>"
        self.row_titles["synthetic"].value = f"<b>synthetic #{sid}</b>"
        self.info.value = " · ".join(parts)
        self._profile_changed(render=False)
        self._render()
        self._show_mark()

    def _profile_changed(self, *, render: bool = True, channel_only: bool = False) -> None:
        """Recompute the slice profile (on a new channel only if it is over the channel shown); draw."""
        a, b = self.volumes["synthetic"], self.volumes["train"]
        if channel_only and self.profile_over.value != "channel":
            pass
        elif b is None:
            self.profile = np.full(self.depth, np.nan)
        elif self.profile_over.value == "channel":
            c = self.channel.value
            self.profile = slice_profile(a[c], b[c])
        else:
            self.profile = slice_profile(a, b)
        if render:
            self._render()

    def _panel(self, row: str, view: str) -> bytes:
        vol = self.volumes[row]
        width, height = self.panel_px[view]
        if vol is None:
            return to_png(np.ones((height, width)))
        c = self.channel.value
        plane, point = view_plane(vol[c], view, self.cursor)
        if c == self.seg:  # labels: never windowed
            return crosshair_png(plane, point, size=width)
        mask = None
        if self.overlay.value and self.seg is not None:
            mask, _ = view_plane(vol[self.seg], view, self.cursor)
        lo, hi = self.window.value
        return crosshair_png(plane, point, mask=mask, vmin=lo, vmax=hi, size=width)

    def _render(self) -> None:
        if self._building:
            return
        x, y, z = self.cursor
        where = {"axial": f"axial z={z}", "coronal": f"coronal y={y}", "sagittal": f"sagittal x={x}"}
        for (row, view), image in self.images.items():
            image.value = self._panel(row, view)
            self.titles[(row, view)].value = f"<small>{where[view]}</small>"
        self.profile_image.value = profile_png(self.profile, z)
        over = "all channels" if self.profile_over.value == "all" else html.escape(self.channel.label)
        finite = np.isfinite(self.profile)
        here = f"r = <b>{self.profile[z]:.4f}</b>" if finite[z] else "r undefined (a constant plane)"
        text = f"plane z={z}: {here} ({over})"
        if finite.any():
            top = int(np.nanargmax(self.profile))
            low = int(np.nanargmin(self.profile))
            text += (f" · highest {self.profile[top]:.4f} at z={top} · lowest {self.profile[low]:.4f} at z={low}")
        self.profile_text.value = f"<small>{text}</small>"

    def _auto_window(self) -> None:
        plane = self.volumes["synthetic"][self.channel.value]
        lo, hi = np.percentile(plane, [1, 99])
        if hi - lo < 0.02:
            lo, hi = 0.0, 1.0
        self.window.value = (float(np.floor(lo * 100) / 100), float(np.ceil(hi * 100) / 100))

    # -- marks ---------------------------------------------------------------------------------------
    def _show_mark(self) -> None:
        if self.log is None:
            return
        marks = self.log.current()
        if self.current in marks.index:
            m = marks.loc[self.current]
            self.mark_state.value = mark_html(m)
            self.comment.value = str(m["comment"])
        else:
            self.mark_state.value = "not marked yet"
            self.comment.value = ""

    def mark(self, verdict: str, comment: str | None = None) -> None:
        """Mark the volume shown (saved to ``<run>/marks.csv`` at once)."""
        if self.log is None:
            raise WorkbenchError(self.marks_problem)
        self.log.mark(self.current, verdict, comment=self.comment.value if comment is None else comment)
        self._show_mark()

    def _verdict_clicked(self, button) -> None:
        try:
            self.mark(button.description)
        except (WorkbenchError, OSError) as err:
            self.mark_state.value = _message(f"The mark was not saved: {html.escape(str(err))}")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
