"""Nearest training slice of every synthetic image, and the held-out baseline (Akbar et al. 2023).

For each synthetic image: the highest Pearson r with any training image.  The same search for
held-out test images gives the baseline: how close an unseen patient's slice comes to the
training set by chance.  Synthetic images that match a training slice more closely than any
unseen slice does are candidates for copies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.atomic import atomic_file
from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..search import topk_correlation


def match_table(queries: SliceStore, reference: SliceStore, *, k: int = 1, device: str = "auto",
                progress: bool = True, **search_options) -> pd.DataFrame:
    """One row per (query, rank): r and where the matching reference slice comes from.

    Columns: ``query`` (position in ``queries``), ``query_row`` (its store row), ``query_subject``,
    ``query_z``, ``rank`` (1 = best), ``r``, ``match`` (position in ``reference``), ``match_row``,
    ``match_subject``, ``match_z``, ``match_prev`` / ``match_next`` (store rows of the matched
    slice's z-1 / z+1 neighbours, <NA> if absent).  Constant queries (no defined r) are dropped
    and listed in ``table.attrs["constant_queries"]``.
    """
    result = topk_correlation(queries, reference, k=k, device=device, progress=progress, **search_options)
    table = matches_frame(queries, reference, result.values, result.indices)
    table.attrs["constant_queries"] = np.flatnonzero(result.constant_queries).tolist()
    table.attrs["search_stats"] = dict(result.stats)
    return table


def matches_frame(queries: SliceStore, reference: SliceStore, values: np.ndarray, indices: np.ndarray) -> pd.DataFrame:
    """The match table of a (Q, k) top-k result (similarities ``values``, reference positions
    ``indices``, -1 where there is no match): one row per (query, rank), with where each match comes
    from.  Shared by the pixel-r and the embedding searches, so both tables read the same."""
    k = indices.shape[1]
    qm = queries.manifest.reset_index(drop=True)
    rm = reference.manifest.reset_index(drop=True)
    q_pos = np.repeat(np.arange(len(queries)), k)
    ranks = np.tile(np.arange(1, k + 1), len(queries))
    match = np.asarray(indices).reshape(-1)
    ok = match >= 0
    q_pos, ranks, match, r = q_pos[ok], ranks[ok], match[ok], np.asarray(values).reshape(-1)[ok]
    return pd.DataFrame({
        "query": q_pos,
        "query_row": queries.rows[q_pos],
        "query_subject": qm["subject"].to_numpy()[q_pos],
        "query_z": qm["z"].to_numpy()[q_pos],
        "rank": ranks,
        "r": r,
        "match": match,
        "match_row": reference.rows[match],
        "match_subject": rm["subject"].to_numpy()[match],
        "match_z": rm["z"].to_numpy()[match],
        "match_prev": rm["prev"].to_numpy()[match],
        "match_next": rm["next"].to_numpy()[match],
    })


@dataclass
class MemorizationResult:
    """Best matches of synthetic and of test images in the training set, and a summary."""

    synthetic: pd.DataFrame
    test: pd.DataFrame | None
    summary: dict = field(default_factory=dict)
    #: synthetic images' best matches from k different subjects (does one patient dominate?)
    synthetic_subjects: pd.DataFrame | None = None

    def best(self, which: str = "synthetic") -> pd.DataFrame:
        """Rank-1 rows, strongest first."""
        t = self.synthetic if which == "synthetic" else self.test
        return t[t["rank"] == 1].sort_values("r", ascending=False).reset_index(drop=True)

    def save(self, folder) -> list[Path]:
        """Write ``matches_synthetic.parquet``, ``matches_synthetic_subjects.parquet``,
        ``matches_test.parquet`` and ``memorization.json`` (last: it marks the results complete)."""
        folder = Path(folder)
        written = []
        for name, table in (("matches_synthetic", self.synthetic), ("matches_synthetic_subjects", self.synthetic_subjects),
                            ("matches_test", self.test)):
            if table is None:
                continue
            path = folder / f"{name}.parquet"
            with atomic_file(path) as tmp:
                table.to_parquet(tmp, index=False)
            written.append(path)
        path = folder / "memorization.json"
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.summary, indent=2, default=float))
        written.append(path)
        return written


def summarize(synthetic_r: np.ndarray, test_r: np.ndarray | None) -> dict:
    """Key figures of the two max-r distributions, and how many synthetic images beat the baseline."""
    s = {
        "n_synthetic": int(len(synthetic_r)),
        "synthetic_max_r_median": float(np.median(synthetic_r)),
        "synthetic_max_r_p90": float(np.percentile(synthetic_r, 90)),
        "synthetic_max_r_max": float(np.max(synthetic_r)),
    }
    if test_r is not None and len(test_r):
        test_max = float(np.max(test_r))
        test_p99 = float(np.percentile(test_r, 99))
        s.update({
            "n_test": int(len(test_r)),
            "test_max_r_median": float(np.median(test_r)),
            "test_max_r_p90": float(np.percentile(test_r, 90)),
            "test_max_r_max": test_max,
            "synthetic_above_test_max": float(np.mean(synthetic_r > test_max)),
            "synthetic_above_test_p99": float(np.mean(synthetic_r > test_p99)),
        })
    return s


def memorization_analysis(synthetic: SliceStore, train: SliceStore, test: SliceStore | None = None, *,
                          k: int = 1, device: str = "auto", progress: bool = True) -> MemorizationResult:
    """Search every synthetic (and test) image against the training images.

    >>> res = memorization_analysis(synth, store.where(split="train"), store.where(split="test"))  # doctest: +SKIP
    >>> res.summary["synthetic_above_test_max"]                                                    # doctest: +SKIP
    """
    synthetic = align_channels(synthetic, train, what="synthetic images")  # by name, never by position
    if test is not None:
        test = align_channels(test, train, what="held-out images")
    if synthetic.image_shape != train.image_shape:
        raise WorkbenchError(f"{synthetic.path}: synthetic images are {synthetic.image_shape} but training images in {train.path} are {train.image_shape}")
    syn = match_table(synthetic, train, k=k, device=device, progress=progress)
    subjects = None
    if k > 1 and "subject" in train.manifest.columns and train.manifest["subject"].notna().all():
        subjects = match_table(synthetic, train, k=min(k, train.manifest["subject"].nunique()), device=device,
                               progress=progress, distinct="subject")
    tst = match_table(test, train, k=k, device=device, progress=progress) if test is not None and len(test) else None
    syn_r = syn.loc[syn["rank"] == 1, "r"].to_numpy()
    tst_r = None if tst is None else tst.loc[tst["rank"] == 1, "r"].to_numpy()
    summary = summarize(syn_r, tst_r)
    summary.update({"n_train": len(train), "k": k, "synthetic_store": str(synthetic.path), "train_store": str(train.path),
                    "constant_synthetic": syn.attrs.get("constant_queries", [])})
    return MemorizationResult(syn, tst, summary, subjects)
