"""The blind reader study as a widget: one image at a time, "real" or "synthetic", answers saved as given.

The plan, the answer log and the scoring live in :mod:`workbench.evaluate.reader_study`; this
is only the view.  The reader sees the item number and the image, never where it came from.
When every item is answered the widget shows the summary (per reader and pooled).

Answers can be given with the mouse or the keyboard.  Keys (``r`` real, ``s`` synthetic, ``1``–``5``
confidence, ``0`` no confidence) come through ipyevents, which hears them only while the mouse
pointer is over the image and its buttons (it focuses that box when the pointer enters it).

>>> ReaderStudy("runs/demo", "dr-a", real=test_store, synthetic=synthetic_store)   # doctest: +SKIP
>>> reader_study_app("runs/demo")   # asks the reader's name, then starts their session   # doctest: +SKIP
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import ipywidgets as widgets
from ipyevents import Event

from ..data.store import SliceStore, align_channels
from ..evaluate.reader_study import (AnswerLog, NoStudyPlanned, load_answers, load_plan, plan_study, save_plan,
                                      summarize)
from ..data import layout
from ..errors import WorkbenchError
from .render import to_png

#: answer keys (lower case; Shift is allowed) and the answers they give
ANSWER_KEYS = {"r": "real", "s": "synthetic"}
#: confidence keys: 1-5 set it, 0 clears it
CONFIDENCE_KEYS = {"0": None, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
KEY_HINT = ("keys, with the pointer over the image: <b>r</b> real · <b>s</b> synthetic · <b>1</b>–<b>5</b> confidence "
            "· <b>0</b> no confidence")
_MODIFIERS = ("ctrlKey", "altKey", "metaKey")


class ReaderStudy:
    """A reader's session of the study in ``run`` (planned on first use, then shared by every reader)."""

    def __init__(self, run, reader: str, *, real: SliceStore, synthetic: SliceStore, n_real: int = 20,
                 n_synthetic: int = 20, seed: int = 0, channel: int | str | None = None, panel_size: int = 320):
        real, synthetic = _open(real), _open(synthetic)
        synthetic = align_channels(synthetic, real, what="synthetic images")  # shown channel by name, not position
        self.run, self.real, self.synthetic = run, real, synthetic
        try:
            plan = load_plan(run)
        except NoStudyPlanned:
            plan = plan_study(real, synthetic, n_real=n_real, n_synthetic=n_synthetic, seed=seed)
            save_plan(run, plan)
        self.plan = plan.set_index("item")
        self.log = AnswerLog(run, reader, plan)
        if channel is None:  # FLAIR where the images have it (the brain contrast readers know best), else the first
            channel = "flair" if "flair" in real.channels else 0
        if isinstance(channel, str) and channel not in real.channels:
            raise WorkbenchError(f"{real.path}: no channel {channel!r} (channels: {real.channels})")
        self.channel = real.channels.index(channel) if isinstance(channel, str) else int(channel)
        self.panel_size = panel_size
        self.image = widgets.Image(format="png", width=panel_size, height=panel_size)
        self.status = widgets.HTML()
        self.confidence = widgets.ToggleButtons(options=[("no confidence", None), ("1", 1), ("2", 2), ("3", 3),
                                                         ("4", 4), ("5", 5)], value=None, description="confidence",
                                                style={"button_width": "auto"})
        self.buttons = [widgets.Button(description=label, button_style=style, tooltip=f"this image is {label}")
                        for label, style in (("real", "info"), ("synthetic", "warning"))]
        for button in self.buttons:
            button.on_click(self._answer)
        self.hint = widgets.HTML(f"<small>{KEY_HINT}</small>")
        self.summary = widgets.HTML()
        # the keys are heard over this box only (ipyevents focuses it when the pointer enters)
        self.answer_box = widgets.VBox([self.image, widgets.HBox(self.buttons), self.confidence])
        self.keys = Event(source=self.answer_box, watched_events=["keydown"])
        self.keys.on_dom_event(self._key)
        self.widget = widgets.VBox([self.status, self.answer_box, self.hint, self.summary])
        self._show()

    @property
    def done(self) -> bool:
        return self.item is None

    def _show(self, notice: str = "") -> None:
        self.item = self.log.next_item()
        total = len(self.plan)
        if self.item is None:
            for b in self.buttons:
                b.disabled = True
            self.confidence.disabled = True
            self.status.value = f"<b>Done</b>: {total} of {total} images answered by {html.escape(self.log.reader)}."
            table = summarize(load_answers(self.run))
            self.summary.value = ("<h4>Reader study summary</h4>" + table.to_html(float_format=lambda v: f"{v:.3f}"))
            return
        row = self.plan.loc[self.item]
        store = self.real if row["truth"] == "real" else self.synthetic
        self.image.value = to_png(store.read([int(row["position"])])[0, self.channel], size=self.panel_size)
        self.status.value = (notice + f"Image <b>{self.item + 1}</b> of {total} · reader "
                             f"{html.escape(self.log.reader)} · is this image real or synthetic?")

    def _record(self, answer: str) -> None:
        """Log ``answer`` for the current item with the chosen confidence, then show the next item."""
        if self.done:
            return
        try:
            self.log.answer(self.item, answer, confidence=self.confidence.value)
        except WorkbenchError as err:  # e.g. the same reader answered this item in another tab
            self.log = AnswerLog(self.run, self.log.reader, self.log.plan)
            self.confidence.value = None
            self._show(notice=f"<span style='color:#b00'>{html.escape(str(err))}</span><br>")
            return
        self.confidence.value = None
        self._show()

    def _answer(self, button) -> None:
        self._record(button.description)

    def _key(self, event: dict) -> None:
        """A keydown from ipyevents: ``r`` / ``s`` answer, ``1``–``5`` set the confidence, ``0`` clears it.

        Held-down keys (auto-repeat), keys with Ctrl / Alt / Meta and every key after the last
        item do nothing.
        """
        if event.get("type") != "keydown" or event.get("repeat") or any(event.get(m) for m in _MODIFIERS):
            return
        if self.done:
            return
        key = str(event.get("key", "")).lower()
        if key in ANSWER_KEYS:
            self._record(ANSWER_KEYS[key])
        elif key in CONFIDENCE_KEYS:
            self.confidence.value = CONFIDENCE_KEYS[key]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _open(store) -> SliceStore:
    return store if isinstance(store, SliceStore) else SliceStore.open(store)


def _find_store(value, run: Path, source: Path) -> Path:
    """A store path from ``memorization.json``: absolute, or relative to the folder it was run from.

    That folder is unknown (usually the repository, e.g. ``runs/demo/store``), so a relative path
    is tried from the working directory, then from the run folder and each folder above it.
    """
    path = Path(value)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, *(base / path for base in (run, *run.parents))]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    where = "" if path.is_absolute() else f" (looked for it from {Path.cwd()}, from {run} and from the folders above it)"
    raise WorkbenchError(f"{source}: names the store {value!r}, which does not exist{where}")


def study_stores(run) -> tuple[SliceStore, SliceStore]:
    """The reader study's images for a run: held-out real images and the synthetic images.

    Read from ``<run>/memorization.json`` (written by ``04_memorization``): real images are the
    ``test`` split of its ``train_store``, synthetic images its ``synthetic_store``.
    """
    run = Path(run).resolve()
    source = run / layout.MEMORIZATION
    if not source.is_file():
        raise WorkbenchError(f"{source}: missing; the reader study takes its images from the memorization stage")
    try:
        summary = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorkbenchError(f"{source}: unreadable ({err})") from None
    missing = [k for k in ("synthetic_store", "train_store") if not isinstance(summary, dict) or not summary.get(k)]
    if missing:
        raise WorkbenchError(f"{source}: has no {' or '.join(missing)}; it was not written by 04_memorization")
    synthetic = SliceStore.open(_find_store(summary["synthetic_store"], run, source))
    train_store = SliceStore.open(_find_store(summary["train_store"], run, source))
    real = train_store.where(split="test")
    if not len(real):
        raise WorkbenchError(f"{train_store.path}: has no images of split 'test' (held-out images) for the reader study")
    return real, synthetic


_HOW_TO = ("Run <code>notebooks/04_memorization.ipynb</code> for this run (<code>workbench run 04_memorization "
           "--out RUN ...</code>), or <code>make demo</code> for <code>runs/demo</code>, then reload this page.")


class ReaderStudyApp:
    """The reader study for anyone with the link: asks the reader's name or id, then starts their session."""

    def __init__(self, run, *, real=None, synthetic=None, **options):
        self.run, self.options, self.study = run, options, None
        self.real = self.synthetic = None
        self.widget = widgets.VBox()
        try:
            if real is None or synthetic is None:
                found_real, found_synthetic = study_stores(run)
                real = found_real if real is None else real
                synthetic = found_synthetic if synthetic is None else synthetic
            self.real, self.synthetic = _open(real), _open(synthetic)
        except WorkbenchError as err:
            self.message = widgets.HTML(f"<p><b>The reader study cannot start</b>: {html.escape(str(err))}</p>"
                                        f"<p>{_HOW_TO}</p>")
            self.widget.children = [self.message]
            return
        # the name is sent on Enter or when the field loses focus (clicking "start" does both)
        self.name = widgets.Text(placeholder="your name or reader id", description="reader", continuous_update=False)
        self.start = widgets.Button(description="start", button_style="primary",
                                    tooltip="start (or continue) your reader study session")
        self.start.on_click(lambda _: self._start())
        self.name.observe(lambda _: self._start(), "value")
        self.message = widgets.HTML()
        self.widget.children = [widgets.HTML("<h3>Reader study: real or synthetic?</h3><p>Enter your name or "
                                             "reader id (letters, digits, <code>-</code>, <code>_</code>, "
                                             "<code>.</code>); a reader who comes back continues where they "
                                             "stopped.</p>"),
                                widgets.HBox([self.name, self.start]), self.message]

    def _start(self) -> None:
        if self.study is not None:
            return
        reader = self.name.value.strip()
        if not reader:
            self.message.value = "<span style='color:#b00'>Please enter your name or reader id first.</span>"
            return
        try:
            self.study = ReaderStudy(self.run, reader, real=self.real, synthetic=self.synthetic, **self.options)
        except WorkbenchError as err:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.widget.children = [self.study.widget]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def reader_study_app(run, *, real=None, synthetic=None, **options) -> ReaderStudyApp:
    """A reader study that first asks for the reader's name, then shows their :class:`ReaderStudy`.

    ``real`` and ``synthetic`` (SliceStores or their folders) default to the run's held-out and
    synthetic images, found through ``<run>/memorization.json``; where that file or a store is
    missing, the widget says what is missing and how to produce it.  ``options`` go to
    :class:`ReaderStudy` (``n_real``, ``n_synthetic``, ``seed``, ``channel``, ``panel_size``).

    >>> reader_study_app("runs/demo", n_real=20, n_synthetic=20, channel="flair")   # doctest: +SKIP
    """
    return ReaderStudyApp(run, real=real, synthetic=synthetic, **options)
