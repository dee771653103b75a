"""A blind reader study: can a reader tell real images from synthetic ones? (DuMont Schütte et al. 2021)

The logic behind the ``ReaderStudy`` widget, kept apart from it so it is tested without a browser:

* :func:`plan_study` draws a seeded, shuffled mix of real held-out images and synthetic images;
  the reader sees only the item number.
* :class:`AnswerLog` appends each answer to ``<run>/reader_study/<reader>.csv`` the moment it is
  given (flushed and fsynced), so nothing is lost when a browser tab closes, and a reader who
  comes back continues where they stopped.  A reader in two tabs (two kernels) answers each item
  once: "already answered?" is checked against the file and the answer appended under one
  inter-process lock (:mod:`workbench.data.csv_log`).
* :func:`summarize` scores the answers per reader and pooled: accuracy, sensitivity (synthetic
  images called synthetic), specificity (real images called real), an exact binomial test of
  the accuracy against chance (0.5) and a Clopper-Pearson 95 % interval.

>>> plan = plan_study(test_store, synthetic_store, n_real=20, n_synthetic=20, seed=0)   # doctest: +SKIP
>>> log = AnswerLog("runs/demo", "reader-1", plan)                                      # doctest: +SKIP
>>> log.answer(0, "synthetic", confidence=4)                                            # doctest: +SKIP
>>> summarize(load_answers("runs/demo"))                                                # doctest: +SKIP
"""
from __future__ import annotations

import io
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.store import SliceStore
from ..data.csv_log import append_row, read_complete
from ..data import layout
from ..errors import WorkbenchError

ANSWERS = ("real", "synthetic")
COLUMNS = ["item", "truth", "answer", "confidence", "answered_at"]
FOLDER = layout.READER_STUDY
PLAN = layout.READER_PLAN


def plan_study(real: SliceStore, synthetic: SliceStore, *, n_real: int = 20, n_synthetic: int = 20,
               seed: int = 0) -> pd.DataFrame:
    """A seeded, shuffled list of items: ``item``, ``truth`` (real / synthetic), ``position`` in its store.

    The real images should be held-out images (never trained on), so a reader compares the
    model with unseen patients.  Both stores must have the same channels and image size.
    """
    volumes = [s.path for s in (real, synthetic) if getattr(s, "is_volume", False)]
    if volumes:
        raise WorkbenchError(f"reader study: {volumes[0]} holds 3D volumes, and the reader study shows readers 2D "
                             f"images; cut the volumes into slices (workbench.axial_slice_store) and give those as "
                             f"real= and synthetic=, or review the volumes with workbench.widgets.browse")
    if list(real.channels) != list(synthetic.channels) or tuple(real.image_shape) != tuple(synthetic.image_shape):
        raise WorkbenchError(f"reader study: real images {real.path} ({real.channels}, {real.image_shape}) and synthetic "
                             f"images {synthetic.path} ({synthetic.channels}, {synthetic.image_shape}) must have the "
                             f"same channels and size")
    for name, n, store in (("n_real", n_real, real), ("n_synthetic", n_synthetic, synthetic)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise WorkbenchError(f"reader study: {name} must be a positive integer, got {n!r}")
        if n > len(store):
            raise WorkbenchError(f"reader study: {name}={n} but {store.path} has only {len(store)} images")
    rng = np.random.default_rng(seed)
    rows = [("real", int(p)) for p in np.sort(rng.choice(len(real), n_real, replace=False))]
    rows += [("synthetic", int(p)) for p in np.sort(rng.choice(len(synthetic), n_synthetic, replace=False))]
    order = rng.permutation(len(rows))
    plan = pd.DataFrame([rows[i] for i in order], columns=["truth", "position"])
    plan.insert(0, "item", np.arange(len(plan)))
    plan.attrs.update(seed=int(seed), real=str(real.path), synthetic=str(synthetic.path))
    return plan


def save_plan(run, plan: pd.DataFrame) -> Path:
    """Write the plan to ``<run>/reader_study/plan.csv`` (so every reader sees the same items)."""
    from ..data.atomic import atomic_file

    path = Path(run) / FOLDER / PLAN
    with atomic_file(path) as tmp:
        plan.to_csv(tmp, index=False)
    return path


class NoStudyPlanned(WorkbenchError):
    """The run has no reader-study plan yet (the widget then plans one)."""


def load_plan(run) -> pd.DataFrame:
    path = Path(run) / FOLDER / PLAN
    if not path.is_file():
        raise NoStudyPlanned(f"{path}: no reader study planned in {run}; make one with plan_study() and save_plan()")
    try:
        plan = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise WorkbenchError(f"{path}: corrupt ({err}); delete it and plan the study again") from None
    if list(plan.columns) != ["item", "truth", "position"] or not plan["truth"].isin(ANSWERS).all():
        raise WorkbenchError(f"{path}: not a reader-study plan (columns {list(plan.columns)})")
    return plan


def _reader_file(run, reader: str) -> Path:
    if not isinstance(reader, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", reader):
        raise WorkbenchError(f"reader name {reader!r}: use letters, digits, '-', '_' or '.' (it names a file)")
    return layout.reader_answers(run, reader)


def read_answer_file(path: Path) -> pd.DataFrame:
    """One reader's answers; a damaged file is an error that names it (and says how to recover)."""
    raw = read_complete(path, COLUMNS)  # outside the try: "busy" is not "corrupt"
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype={
            "item": "Int64", "truth": "string", "answer": "string", "confidence": "Int64", "answered_at": "string"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as err:
        raise WorkbenchError(f"{path}: corrupt answers file ({err}); move it aside to start this reader again") from None
    if list(df.columns) != COLUMNS:
        raise WorkbenchError(f"{path}: corrupt answers file (columns {list(df.columns)}, expected {COLUMNS})")
    bad = ~df["answer"].isin(ANSWERS) | ~df["truth"].isin(ANSWERS) | df["item"].isna()
    if bad.any():
        raise WorkbenchError(f"{path}: corrupt answers file (row {int(np.flatnonzero(bad.to_numpy())[0]) + 2} is not "
                             f"a valid answer); move it aside to start this reader again")
    return df


class AnswerLog:
    """One reader's answers, appended to a CSV file as they are given."""

    def __init__(self, run, reader: str, plan: pd.DataFrame):
        self.path = _reader_file(run, reader)
        self.reader = reader
        self.plan = plan.reset_index(drop=True)
        self.answers = read_answer_file(self.path) if self.path.exists() else pd.DataFrame(columns=COLUMNS)

    @property
    def answered(self) -> set[int]:
        return {int(i) for i in self.answers["item"]}

    def next_item(self) -> int | None:
        """The first item not answered yet (None when the reader is done)."""
        done = self.answered
        for item in self.plan["item"]:
            if int(item) not in done:
                return int(item)
        return None

    def answer(self, item: int, answer: str, *, confidence: int | None = None) -> None:
        """Record an answer now (``"real"`` or ``"synthetic"``, optional confidence 1–5); each item once."""
        if answer not in ANSWERS:
            raise WorkbenchError(f"answer must be one of {ANSWERS}, got {answer!r}")
        if confidence is not None and (isinstance(confidence, bool) or confidence not in (1, 2, 3, 4, 5)):
            raise WorkbenchError(f"confidence must be 1-5 or None, got {confidence!r}")
        match = self.plan.loc[self.plan["item"] == item]
        if match.empty:
            raise WorkbenchError(f"item {item!r} is not in the study (items 0..{len(self.plan) - 1})")
        row = {"item": int(item), "truth": match["truth"].iloc[0], "answer": answer,
               "confidence": "" if confidence is None else int(confidence),
               "answered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

        def not_answered_yet() -> None:  # under the file's lock: no other tab can answer in between
            # the same reader may answer in two tabs (two processes): the file as it is now is what counts
            if self.path.exists():
                self.answers = read_answer_file(self.path)
            if int(item) in self.answered:
                raise WorkbenchError(f"item {item} was already answered by {self.reader}")

        append_row(self.path, COLUMNS, row, check=not_answered_yet)
        self.answers = pd.concat([self.answers, pd.DataFrame([row])], ignore_index=True)


def load_answers(run) -> pd.DataFrame:
    """Every reader's answers in a run, with a ``reader`` column."""
    folder = Path(run) / FOLDER
    frames = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        if path.name == PLAN:
            continue
        df = read_answer_file(path)
        df.insert(0, "reader", path.stem)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["reader", *COLUMNS])
    return pd.concat(frames, ignore_index=True)


def _score(df: pd.DataFrame) -> dict:
    from scipy.stats import binomtest

    n = len(df)
    correct = int((df["answer"] == df["truth"]).sum())
    syn, real = df[df["truth"] == "synthetic"], df[df["truth"] == "real"]
    out = {"answers": n, "correct": correct, "accuracy": correct / n if n else np.nan,
           "sensitivity": float((syn["answer"] == "synthetic").mean()) if len(syn) else np.nan,
           "specificity": float((real["answer"] == "real").mean()) if len(real) else np.nan,
           "p_value": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if n:
        test = binomtest(correct, n, 0.5, alternative="two-sided")
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        out.update(p_value=float(test.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


def summarize(answers: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, sensitivity, specificity, binomial p against chance and 95 % CI, per reader and pooled.

    Sensitivity: the share of synthetic images called synthetic.  Specificity: the share of real
    images called real.  Accuracy near 0.5 with a wide interval around it means readers could
    not tell synthetic from real images.
    """
    rows = []
    for reader, df in answers.groupby("reader", sort=True):
        rows.append({"reader": reader, **_score(df)})
    if len(rows) != 1:
        rows.append({"reader": "pooled", **_score(answers)})
    return pd.DataFrame(rows).set_index("reader")
