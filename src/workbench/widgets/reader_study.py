"""The blind reader study as a widget: one image at a time, "real" or "synthetic", answers saved as given.

The plan, the answer log and the scoring live in :mod:`workbench.evaluate.reader_study`; this
is only the view.  The reader sees the item number and the image, never where it came from.
When every item is answered the widget shows the summary (per reader and pooled).

>>> ReaderStudy("runs/demo", "dr-a", real=test_store, synthetic=synthetic_store)   # doctest: +SKIP
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from ..data.store import SliceStore
from ..evaluate.reader_study import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize
from ..errors import WorkbenchError
from .render import to_png


class ReaderStudy:
    """A reader's session of the study in ``run`` (planned on first use, then shared by every reader)."""

    def __init__(self, run, reader: str, *, real: SliceStore, synthetic: SliceStore, n_real: int = 20,
                 n_synthetic: int = 20, seed: int = 0, channel: int | str = 0, panel_size: int = 320):
        self.run, self.real, self.synthetic = run, real, synthetic
        try:
            plan = load_plan(run)
        except WorkbenchError as err:
            if "no reader study planned" not in str(err):
                raise
            plan = plan_study(real, synthetic, n_real=n_real, n_synthetic=n_synthetic, seed=seed)
            save_plan(run, plan)
        self.plan = plan.set_index("item")
        self.log = AnswerLog(run, reader, plan)
        self.channel = real.channels.index(channel) if isinstance(channel, str) else int(channel)
        self.panel_size = panel_size
        self.image = widgets.Image(format="png", width=panel_size, height=panel_size)
        self.status = widgets.HTML()
        self.confidence = widgets.ToggleButtons(options=[("no confidence", None), ("1", 1), ("2", 2), ("3", 3),
                                                         ("4", 4), ("5", 5)], value=None, description="confidence")
        self.buttons = [widgets.Button(description=label, button_style=style, tooltip=f"this image is {label}")
                        for label, style in (("real", "info"), ("synthetic", "warning"))]
        for button in self.buttons:
            button.on_click(self._answer)
        self.summary = widgets.HTML()
        self.widget = widgets.VBox([self.status, self.image, widgets.HBox(self.buttons), self.confidence, self.summary])
        self._show()

    def _show(self) -> None:
        self.item = self.log.next_item()
        total = len(self.plan)
        if self.item is None:
            for b in self.buttons:
                b.disabled = True
            self.status.value = f"<b>Done</b>: {total} of {total} images answered by {html.escape(self.log.reader)}."
            table = summarize(load_answers(self.run))
            self.summary.value = ("<h4>Reader study summary</h4>" + table.to_html(float_format=lambda v: f"{v:.3f}"))
            return
        row = self.plan.loc[self.item]
        store = self.real if row["truth"] == "real" else self.synthetic
        self.image.value = to_png(store.read([int(row["position"])])[0, self.channel], size=self.panel_size)
        self.status.value = (f"Image <b>{self.item + 1}</b> of {total} · reader {html.escape(self.log.reader)} · "
                             f"is this image real or synthetic?")

    def _answer(self, button) -> None:
        self.log.answer(self.item, button.description, confidence=self.confidence.value)
        self.confidence.value = None
        self._show()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
