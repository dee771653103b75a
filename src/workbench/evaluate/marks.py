"""A reviewer's judgement of each match ("copy" / "not a copy" / "unsure" + a comment), kept in the run folder.

The match browser calls :meth:`MarkLog.mark` on every click; the mark is appended to
``<run>/marks.csv`` at once (flushed and fsynced) and the latest mark of an image wins, so a
changed mind is recorded too and nothing is lost when the browser or kernel stops.  On return,
:meth:`MarkLog.current` gives every image's latest mark to show beside it.  Reviewers marking
the same run at the same instant write under one inter-process lock
(:mod:`workbench.data.csv_log`): every mark is kept and the header is written once.

>>> log = MarkLog("runs/demo", reviewer="dr-a")           # doctest: +SKIP
>>> log.mark(29, "copy", comment="same tumour, same slice")  # doctest: +SKIP
>>> log.current().loc[29, "verdict"]                       # doctest: +SKIP
'copy'
"""
from __future__ import annotations

import html
import io
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..data.csv_log import append_row, read_complete
from ..data import layout
from ..errors import WorkbenchError

VERDICTS = ("copy", "not a copy", "unsure")
COLUMNS = ["synthetic", "verdict", "comment", "reviewer", "marked_at"]
FILE = layout.MARKS


class MarkLog:
    """Marks of one run folder (shared by reviewers; each mark names its reviewer)."""

    def __init__(self, run, *, reviewer: str = "reviewer"):
        self.path = Path(run) / FILE
        self.reviewer = str(reviewer)
        self.history = self._read() if self.path.exists() else pd.DataFrame(columns=COLUMNS)

    def _read(self) -> pd.DataFrame:
        raw = read_complete(self.path, COLUMNS)  # outside the try: "busy" is not "corrupt"
        try:
            df = pd.read_csv(io.BytesIO(raw),
                             dtype={"synthetic": "Int64", "verdict": "string", "comment": "string",
                                    "reviewer": "string", "marked_at": "string"}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as err:
            raise WorkbenchError(f"{self.path}: corrupt marks file ({err}); move it aside to start marking again") from None
        if list(df.columns) != COLUMNS:
            raise WorkbenchError(f"{self.path}: corrupt marks file (columns {list(df.columns)}, expected {COLUMNS}); "
                                 f"move it aside to start marking again")
        bad = ~df["verdict"].isin(VERDICTS) | df["synthetic"].isna()
        if bad.any():
            raise WorkbenchError(f"{self.path}: corrupt marks file (line {int(bad.to_numpy().nonzero()[0][0]) + 2} "
                                 f"is not a valid mark); move it aside to start marking again")
        return df

    def mark(self, synthetic: int, verdict: str, *, comment: str = "") -> None:
        """Record a verdict for synthetic image ``synthetic`` now; a later mark replaces an earlier one."""
        if verdict not in VERDICTS:
            raise WorkbenchError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        row = {"synthetic": int(synthetic), "verdict": verdict, "comment": str(comment or ""),
               "reviewer": self.reviewer, "marked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        append_row(self.path, COLUMNS, row)
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)

    def current(self) -> pd.DataFrame:
        """The latest mark of every marked image, indexed by synthetic image."""
        if self.history.empty:
            return pd.DataFrame(columns=COLUMNS[1:]).rename_axis("synthetic")
        latest = self.history.assign(synthetic=self.history["synthetic"].astype(int)).groupby("synthetic").tail(1)
        return latest.set_index("synthetic")[COLUMNS[1:]].sort_index()


def mark_html(mark) -> str:
    """One line of HTML for a saved mark (a row of :meth:`MarkLog.current`), as the widgets show it."""
    comment = f" — “{html.escape(str(mark['comment']))}”" if str(mark["comment"]) else ""
    return (f"marked <b>{html.escape(str(mark['verdict']))}</b> by {html.escape(str(mark['reviewer']))} "
            f"at {html.escape(str(mark['marked_at']))}{comment}")
