"""Distinct-subject search: the best match from each of the k best different subjects (or labels).

So a user sees whether one patient dominates a query's matches.  The labels are a manifest
column of a SliceStore reference (``"subject"``) or one label per reference image.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from ..data.store import SliceStore
from ..errors import TooFewReferenceImages, WorkbenchError
from .result import SearchResult
from .sources import as_source


def reference_labels(reference, distinct) -> np.ndarray:
    """One label per reference image: a manifest column by name, or the given labels."""
    if isinstance(distinct, str):
        if not isinstance(reference, SliceStore):
            raise WorkbenchError(f"distinct={distinct!r} needs a SliceStore reference (its manifest has the labels); "
                                 "for arrays pass one label per reference image")
        if distinct not in reference.manifest.columns:
            raise WorkbenchError(f"{reference.path}: manifest has no column {distinct!r} for distinct=")
        return reference.manifest[distinct].to_numpy()
    return np.asarray(distinct)


def topk_distinct(search, queries, reference, k, distinct, labelled: bool = False, **options) -> SearchResult:
    """Best match per label for the k best labels: an exact top-k' search, widened until enough.

    ``search(queries, reference, k', **options)`` is the exact top-k' search (the caller's,
    :func:`~workbench.search.topk_correlation`).  The exact top-k' list is ordered by r (ties to
    the lower index), so the first image of each label in it is that label's best match.  The
    first k' is :func:`first_k`'s (larger where each label holds many images).  The
    queries that do not see k labels in it are searched again, alone, with k' four times larger,
    until every query sees k labels or every non-constant image is in its list (neighbouring
    slices of one volume are alike, so a query's top k' often holds one or two subjects: searching
    all queries again for a few of them repeated the whole search).  Constant images have no r and
    are never matched: a search for more than the non-constant images is asked again for as many
    as there are; fewer than k labels among them is an error, as fewer than k images is for the
    plain search.

    ``labelled``: ``search`` takes ``by_label=`` (``topk_correlation``'s): every method then screens
    at the k-th best label's best (not the k'-th pair's), rescores only the pairs that may be a
    label's best among the k best labels or in the plain top, and says per query whether that is
    the answer: with k labels in the reference every query is done in one pass (a query searched
    again is one whose screen had to fall back on the k'-th pair, a Dask shard of fewer labels say).
    """
    return topk_with_distinct(search, queries, reference, None, k, distinct, labelled, **options)[1]


#: the first search of a distinct-label search asks for at least k x (median images per label) /
#: RUN_DIVISOR matches (:func:`first_k`)
RUN_DIVISOR = 4


def first_k(labels: np.ndarray, k: int, least: int) -> int:
    """The k' of a distinct search's first top-k' list: max(2k, k + 16), or, where each label holds
    many images (slices of a volume), k x the median images per label / RUN_DIVISOR.

    Neighbouring slices of one volume are alike, so a query's best matches come in runs from one
    subject, and a run grows with the slices per subject; every query short of k labels is searched
    again (at BraTS scale a pass of brute force is hours).  On brain phantoms (104 slices a
    subject, k = 5) the 5th subject came at a median position of 51 and a 90th percentile of 112:
    the first k' of 21 left 94 % of the queries short (then 84, and 336 for 27 %), 129 left 5 %
    (BENCHMARKS.md, issue 16 item 24).  One image per label (chest X-rays) keeps 2k or k + 16."""
    n = len(labels)
    runs = int(k * np.median(list(Counter(labels.tolist()).values())) // RUN_DIVISOR)
    return int(min(n, max(2 * k, k + 16, least, runs)))


def topk_with_distinct(search, queries, reference, k_plain: int | None, k, distinct, labelled: bool = False,
                       **options) -> tuple[SearchResult | None, SearchResult]:
    """``(plain, by_label)``: the exact top-``k_plain`` (None: not wanted) and :func:`topk_distinct`'s
    answer, from one search.  The first top-k' list of the distinct search is the exact top-k'
    for every query, so its first ``k_plain`` columns are the plain answer (k' >= k_plain): an
    analysis that wants both (the match table and the best match of each subject) searches the
    reference once, not twice (at BraTS scale each brute-force pass is hours)."""
    labels = reference_labels(reference, distinct)
    n = len(reference)
    if len(labels) != n:
        raise WorkbenchError(f"distinct: {len(labels)} labels for {n} reference images")
    n_labels = len(set(labels.tolist()))
    if not 1 <= k <= n_labels:
        raise WorkbenchError(f"k={k} distinct matches asked for, but the reference has {n_labels} different labels")
    queries = as_source(queries, "queries")
    least = max(k, k_plain or 0)  # the plain answer's columns are the first search's
    limit = [n]  # until a search says how many images are non-constant
    if labelled:  # a label number per image, for the search's own rescore (topk_distinct)
        number = {}
        codes = np.array([number.setdefault(v, len(number)) for v in labels.tolist()], dtype=np.int64)
        options = {**options, "by_label": (codes, k, max(1, k_plain or 0))}

    def searched(rows, kk: int):
        """The exact top-kk of the queries at ``rows`` (None: all), and the kk it ran with."""
        part = queries if rows is None else queries.take(rows) if isinstance(queries, SliceStore) else queries[rows]
        while True:
            try:
                return search(part, reference, kk, **options), kk
            except TooFewReferenceImages as err:  # constant images among the reference
                if err.available is None or not least <= err.available < kk:
                    raise
                limit[0] = kk = err.available

    first, kk = searched(None, first_k(labels, k, least))
    values = np.full((len(first.values), k), -np.inf)
    indices = np.full((len(first.values), k), -1, dtype=np.int64)
    todo, res, widened = np.arange(len(first.values)), first, 0
    while True:
        short = []
        for row, q in enumerate(todo):
            if res.constant_queries[row]:
                continue
            if res.by_label is not None:  # the search's own answer (topk_distinct's labelled)
                got_v, got_i, done = res.by_label
                if done[row]:
                    values[q], indices[q] = got_v[row], got_i[row]
                else:
                    short.append((q, int((got_i[row] >= 0).sum())))
                continue
            seen, j = set(), 0
            for v, i in zip(res.values[row], res.indices[row]):
                if i < 0 or labels[i] in seen:
                    continue
                seen.add(labels[i])
                values[q, j], indices[q, j] = v, i
                j += 1
                if j == k:
                    break
            if j < k:
                short.append((q, j))
        if not short:
            break
        if kk == limit[0]:  # every non-constant image searched: the labels they carry are too few
            raise TooFewReferenceImages(f"k={k} distinct matches asked for, but the reference's non-constant images "
                                        f"have only {min(j for _, j in short)} different labels", k=k,
                                        available=min(j for _, j in short))
        todo = np.array([q for q, _ in short])
        res, kk = searched(todo, min(limit[0], kk * 4))
        widened += len(todo)
    plain = None
    # searched_k: the widest search; widened_queries: the queries searched again, counted at each widening
    stats = {**first.stats, "searched_k": kk, "widened_queries": widened}
    if k_plain is not None:
        plain = replace(first, values=first.values[:, :k_plain].copy(), indices=first.indices[:, :k_plain].copy(),
                        stats=dict(stats), by_label=None)
    by_label = replace(first, values=values, indices=indices, by_label=None,
                       stats={**stats, "distinct": distinct if isinstance(distinct, str) else "labels"})
    return plain, by_label
