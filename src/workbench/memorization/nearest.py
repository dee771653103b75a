"""Match tables and Akbar et al.'s summary (2023): the nearest training slices of each query, and
how the highest r of synthetic images compares with that of held-out images.

For each synthetic image: the highest Pearson r with any training image.  The same search for
held-out test images gives the baseline: how close an unseen patient's slice comes to the
training set by chance.  Synthetic images that match a training slice more closely than any
unseen slice does are candidates for copies.  The searches themselves run once, in
:func:`workbench.memorization.analysis.run_analysis`; :func:`match_table` is the one-off search
the command line's ``workbench search`` writes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..search import CorrelationIndex, topk_correlation


def match_table(queries: SliceStore, reference, *, k: int = 1, device: str = "auto",
                progress: bool = True, **search_options) -> pd.DataFrame:
    """One row per (query, rank): r and where the matching reference slice comes from.

    ``reference``: a SliceStore (view), or a :class:`~workbench.search.CorrelationIndex` built on
    one (searched with its ``topk``; ``search_options`` are then its: ``method``, ``channels``).

    Columns: ``query`` (position in ``queries``), ``query_row`` (its store row), ``query_subject``,
    ``query_z``, ``rank`` (1 = best), ``r``, ``match`` (position in ``reference``), ``match_row``,
    ``match_subject``, ``match_z``, ``match_prev`` / ``match_next`` (store rows of the matched
    slice's z-1 / z+1 neighbours, <NA> if absent).  Constant queries (no defined r) are dropped
    and listed in ``table.attrs["constant_queries"]``.
    """
    if isinstance(reference, CorrelationIndex):
        index, reference = reference, reference.reference
        if not isinstance(reference, SliceStore):
            raise WorkbenchError("match_table: the index must be built on a SliceStore (its manifest names the matches)")
        queries = align_channels(queries, reference, what="queries")  # paired by channel name
        result = index.topk(queries, k=k, progress=progress, **search_options)
    else:
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
