"""A run folder's search results read back for browsing, with a plain message for whatever is missing.

``04_memorization`` writes into the run folder::

    memorization.json                   written last; names the synthetic and training stores
    matches_synthetic.parquet           top-k training matches of every synthetic image (pixel r)
    matches_synthetic_subjects.parquet  best match from each of the k best different subjects
    copy_flags.parquet, copy_analysis.json   calibrated copy flags, embedding similarity, thresholds

:func:`load_run_matches` turns these into one :class:`RunMatches` (one row per synthetic image,
plus its candidate matches), which the match browser shows.  :func:`run_matches` builds the same
from tables and stores in memory.  Anything missing raises a :class:`WorkbenchError` that says
what is missing and how to produce it.

>>> m = load_run_matches("runs/demo")                     # doctest: +SKIP
>>> m.best.sort_values("r", ascending=False).head()        # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.store import SliceStore, align_channels
from ..data import layout
from ..errors import WorkbenchError
from .analysis import EMBEDDING, PIXEL

HOW = f"make it with {layout.HOW_TO_MAKE['analysis']} (`make demo` does it for the demo run)"
MATCH_COLUMNS = ["rank", "r", "match_row", "match_subject", "match_z", "match_prev", "match_next"]


@dataclass
class RunMatches:
    """Everything the match browser needs about one synthetic set and its training matches.

    ``best``: one row per synthetic image (``synthetic`` = its position in the synthetic store),
    with its best pixel-r match (``r``, ``match_row`` = training store row, subject, z, and the
    z-1 / z+1 store rows), and where a copy analysis was saved ``embedding`` /
    ``embedding_row`` (best embedding similarity and its training row), ``pixel_copy``,
    ``embedding_copy`` and ``copy`` (flagged by the calibrated rule).
    ``candidates``: per synthetic image, matches ranked 1..k, from distinct subjects when the
    search saved them (``distinct_subjects`` says which).
    """

    synthetic: SliceStore
    train: SliceStore  # the whole store: matches refer to its rows
    best: pd.DataFrame
    candidates: pd.DataFrame
    distinct_subjects: bool = False
    thresholds: dict = field(default_factory=dict)  # similarity name -> value of the flagging threshold
    run: Path | None = None
    _by_query: dict | None = field(default=None, init=False, repr=False)

    @property
    def has_flags(self) -> bool:
        return "copy" in self.best.columns

    @property
    def has_embedding(self) -> bool:
        return "embedding" in self.best.columns

    def candidates_of(self, synthetic: int) -> pd.DataFrame:
        """The ranked candidate matches of one synthetic image (looked up, not searched: the
        browser asks on every step)."""
        if self._by_query is None:
            ordered = self.candidates.sort_values(["query", "rank"])
            self._by_query = {int(q): g for q, g in ordered.groupby("query", sort=False)}
        return self._by_query.get(int(synthetic), self.candidates.iloc[:0])


def _open_store(path, what: str, source: Path | None) -> SliceStore:
    where = f" (named in {source})" if source else ""
    try:
        return SliceStore.open(path)
    except WorkbenchError as err:
        fix = ("sample again with notebooks/03_sample.ipynb (`workbench sample`)" if what == "synthetic"
               else "prepare it again with notebooks/01_prepare_data.ipynb (`workbench data prepare`)")
        raise WorkbenchError(f"the {what} store{where} cannot be read: {err}. To fix it, {fix}, "
                             f"or move the store back to where it was") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise WorkbenchError(f"{path}: unreadable ({err}); {HOW} again") from None


def run_matches(matches: pd.DataFrame, synthetic: SliceStore, train: SliceStore, *, flags: pd.DataFrame | None = None,
                subjects: pd.DataFrame | None = None, thresholds: dict | None = None, run=None) -> RunMatches:
    """Combine search results (``match_table`` output), optional copy flags and stores into a RunMatches.

    ``train`` may be a view (e.g. the training view of a checkpoint): matches refer to store rows,
    so the whole store is opened for reading neighbours.
    """
    synthetic = align_channels(synthetic, train, what="synthetic images")  # panels pair channels by name
    missing = [c for c in ["query", *MATCH_COLUMNS] if c not in matches.columns]
    if missing:
        raise WorkbenchError(f"search results lack columns {missing}: make them with "
                             f"workbench.memorization.match_table (or {HOW})")
    if not len(matches):
        raise WorkbenchError(f"the search results are empty: no synthetic image has a match; {HOW}")
    if int(matches["query"].max()) >= len(synthetic):
        raise WorkbenchError(f"{synthetic.path}: the search results name synthetic image {int(matches['query'].max())} "
                             f"but the store holds {len(synthetic)} images; were they searched against another store? {HOW}")
    if int(matches["match_row"].max()) >= len(train.all_rows()):
        raise WorkbenchError(f"{train.path}: the search results name training row {int(matches['match_row'].max())} "
                             f"but the store holds {len(train.all_rows())} rows; {HOW}")
    store = train.all_rows()
    best = (matches[matches["rank"] == 1][["query", *MATCH_COLUMNS[1:]]].rename(columns={"query": "synthetic"})
            .sort_values("synthetic").reset_index(drop=True))
    distinct = subjects is not None and len(subjects) > 0
    candidates = subjects if distinct else matches
    candidates = candidates[["query", *MATCH_COLUMNS]].reset_index(drop=True)
    if flags is not None and len(flags):
        f = flags.set_index("synthetic")
        for col, new in (("pixel_copy", "pixel_copy"), ("embedding_copy", "embedding_copy"), ("copy", "copy"),
                         ("embedding_max", "embedding"), ("embedding_match_row", "embedding_row")):
            if col in f.columns:
                best[new] = f[col].reindex(best["synthetic"]).to_numpy()
    return RunMatches(synthetic, store, best, candidates, distinct, dict(thresholds or {}),
                      None if run is None else Path(run))


def load_run_matches(run) -> RunMatches:
    """Read the search results and copy flags a run folder holds (see the module docstring)."""
    run = Path(run)
    if not run.is_dir():
        raise WorkbenchError(f"{run}: no such run folder")
    summary_path = run / layout.MEMORIZATION
    matches_path = run / layout.MATCHES
    if not summary_path.is_file() or not matches_path.is_file():
        missing = [p.name for p in (summary_path, matches_path) if not p.is_file()]
        raise WorkbenchError(f"{run}: no search results here (missing {', '.join(missing)}); to make them, {HOW}")
    try:
        summary = json.loads(summary_path.read_text())
        synthetic_path, train_path = summary["synthetic_store"], summary["train_store"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise WorkbenchError(f"{summary_path}: unreadable or incomplete ({err!r}); {HOW} again") from None
    synthetic = _open_store(synthetic_path, "synthetic", summary_path)
    train = _open_store(train_path, "training", summary_path)
    matches = _read_parquet(matches_path)
    subjects_path = run / layout.SUBJECT_MATCHES
    subjects = _read_parquet(subjects_path) if subjects_path.is_file() else None
    flags = thresholds = None
    if (run / layout.COPY_FLAGS).is_file():
        flags = _read_parquet(run / layout.COPY_FLAGS)
        thresholds = _flag_thresholds(run / layout.COPY_ANALYSIS)
    return run_matches(matches, synthetic, train, flags=flags, subjects=subjects, thresholds=thresholds, run=run)


def _flag_thresholds(path: Path) -> dict:
    """Threshold values that flagged copies in a saved copy analysis ({similarity name: value})."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for name in (PIXEL, EMBEDDING):
        block = saved.get(name)
        if not isinstance(block, dict):
            continue
        chosen = block.get(block.get("flag_rule", saved.get("rule")))
        value = chosen.get("threshold", {}).get("value") if isinstance(chosen, dict) else None
        if isinstance(value, (int, float)) and np.isfinite(value):
            out[name] = float(value)
    return out
