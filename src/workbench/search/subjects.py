"""Distinct-subject search: the best match from each of the k best different subjects (or labels).

So a user sees whether one patient dominates a query's matches.  The labels are a manifest
column of a SliceStore reference (``"subject"``) or one label per reference image.
"""
from __future__ import annotations

import numpy as np

from ..data.store import SliceStore
from ..errors import TooFewReferenceImages, WorkbenchError
from .result import SearchResult


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


def topk_distinct(search, queries, reference, k, distinct, **options) -> SearchResult:
    """Best match per label for the k best labels: an exact top-k' search, widened until enough.

    ``search(queries, reference, k', **options)`` is the exact top-k' search (the caller's,
    :func:`~workbench.search.topk_correlation`).  The exact top-k' list is ordered by r (ties to
    the lower index), so the first image of each label in it is that label's best match; k' grows
    until every query sees k labels, or every non-constant image is in it (constant images have no
    r and are never matched: a search for more than the non-constant images is asked again for
    as many as there are; fewer than k labels among them is an error, as fewer than k images is
    for the plain search).
    """
    labels = reference_labels(reference, distinct)
    n = len(reference)
    if len(labels) != n:
        raise WorkbenchError(f"distinct: {len(labels)} labels for {n} reference images")
    n_labels = len(set(labels.tolist()))
    if not 1 <= k <= n_labels:
        raise WorkbenchError(f"k={k} distinct matches asked for, but the reference has {n_labels} different labels")
    limit = n  # until a search says how many images are non-constant
    kk = min(n, max(2 * k, k + 16))
    while True:
        try:
            res = search(queries, reference, kk, **options)
        except TooFewReferenceImages as err:  # constant images among the reference
            if err.available is None or not k <= err.available < kk:
                raise
            limit = kk = err.available
            continue
        values = np.full((len(res.values), k), -np.inf)
        indices = np.full((len(res.values), k), -1, dtype=np.int64)
        short, fewest = False, k
        for q in range(len(res.values)):
            if res.constant_queries[q]:
                continue
            seen, j = set(), 0
            for v, i in zip(res.values[q], res.indices[q]):
                if i < 0 or labels[i] in seen:
                    continue
                seen.add(labels[i])
                values[q, j], indices[q, j] = v, i
                j += 1
                if j == k:
                    break
            short |= j < k
            fewest = min(fewest, j)
        if not short:
            break
        if kk == limit:  # every non-constant image searched: the labels they carry are too few
            raise TooFewReferenceImages(f"k={k} distinct matches asked for, but the reference's non-constant images "
                                        f"have only {fewest} different labels", k=k, available=fewest)
        kk = min(limit, kk * 4)
    res.values, res.indices = values, indices
    res.stats.update(distinct=distinct if isinstance(distinct, str) else "labels", searched_k=kk)
    return res
