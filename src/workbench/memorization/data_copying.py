"""The data-copying test of Meehan, Chaudhuri & Dasgupta (2020): one statistic C_T for a whole model.

The per-image figures elsewhere in this package ask "is *this* synthetic image a copy?".  This
module asks the dataset-level question: taken together, do the generated images sit closer to
the training images than genuinely new images from the same distribution do?

What C_T measures
-----------------
Three samples in one feature space: the training set T, a held-out test set P_n (same
distribution, never trained on) and the generated samples Q_m.

1. The training set is split into ``cells`` regions by k-means (seeded k-means++ then Lloyd
   iterations); every sample belongs to the cell of its nearest centroid.
2. Every test and generated sample gets d(x): the Euclidean distance to its nearest *training*
   point in the same cell (T_pi in the paper).  Distances are exact (brute force in float64,
   or a k-d tree in low dimensions), never approximate.
3. In each cell pi the two lists of distances are compared with the Mann-Whitney U test.
   U counts the (generated, test) pairs in which the generated sample is *farther* from the
   training set than the test sample (ties count one half), and
   Z_U = (U - m n / 2) / sigma_U  with the tie-corrected null standard deviation
   sigma_U^2 = m n / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1))),  N = m + n, t = tie sizes.
4. C_T = sum_pi P_n(pi) Z_U(pi) / sum_pi P_n(pi) over the cells with enough generated samples:
   Q_m(pi) >= tau (tau = 20 / m by default, i.e. at least 20 generated samples in the cell).
   P_n(pi) is the fraction of test samples in cell pi.  A cell with no test sample cannot give
   a Z_U (and has weight P_n(pi) = 0 anyway); it is skipped, as is a cell whose distances are
   all tied (sigma_U = 0).  The table says why each skipped cell was skipped.

Sign convention and how to read it
----------------------------------
* C_T strongly **negative** (below -3): generated samples are closer to the training data than
  held-out samples are -- evidence of **data copying** (memorization).
* C_T near 0: generated samples are as far from the training data as new real samples are --
  no evidence of copying.
* C_T strongly **positive** (above +3): generated samples are *farther* from the training data
  than real samples are -- the model **underfits** (blurry, off-distribution samples).

Under the null hypothesis each Z_U is roughly standard normal, so C_T (a weighted mean of them)
is at most about as spread as one standard normal.  C_T is an average: a model can copy in a few
cells and underfit elsewhere, so look at the per-cell table too (cells with Z_U < -3 are flagged
``copying``).

Features
--------
The test works on any feature vectors.  :func:`image_features` gives the default feature space
for images: each channel block-averaged (area-averaged) down to ``size`` x ``size`` pixels and
flattened.  Embeddings from a learned network can be passed instead, as plain arrays.

Reference
---------
C. Meehan, K. Chaudhuri, S. Dasgupta, "A Non-Parametric Test to Detect Data-Copying in
Generative Models", AISTATS 2020.

Example
-------
>>> from workbench.memorization.data_copying import data_copying_test, image_features
>>> res = data_copying_test(image_features(train.to_array()),           # doctest: +SKIP
...                         image_features(test.to_array()),
...                         image_features(synthetic.to_array()), cells=20, seed=0)
>>> res.c_t, res.interpretation                                          # doctest: +SKIP
(-5.2, 'C_T = -5.20: generated images are closer to the training images than held-out images are -- evidence of data copying ...')
>>> res.cells[res.cells["copying"]]                                      # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.stats import rankdata
from ..progress import tqdm

from ..data.store import SliceStore
from ..errors import WorkbenchError

__all__ = ["DataCopyingResult", "data_copying_test", "image_features", "mann_whitney_z"]

#: Default minimum number of generated samples in a cell (the paper's tau = 20 / m).
MIN_GENERATED_DEFAULT = 20
#: Feature dimension up to which nearest neighbours are found with a k-d tree (exact either way).
_KDTREE_MAX_DIM = 16
#: Float64 elements of one distance block (rows x reference points), about 64 MB.
_BLOCK_ELEMENTS = 8_000_000


# ------------------------------------------------------------------------------------------------
# features
# ------------------------------------------------------------------------------------------------
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: output pixel i is the mean of input interval [i n_in/n_out, (i+1) n_in/n_out)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def image_features(images, *, size: int | str | None = "auto", block_size: int = 1024) -> np.ndarray:
    """Images as feature vectors: each channel area-averaged to ``size`` along every spatial axis
    (``size`` x ``size`` for slices, ``size``³ for volumes), then flattened.

    Parameters
    ----------
    images : array ``(N, C, H, W)`` or ``(N, H, W)``, volumes ``(N, C, D, H, W)``, or a
        :class:`SliceStore` of either (read in blocks).
    size : side of the averaged image; ``"auto"``: 16 for slices, 8 for volumes (8³ = 512 features
        a channel, about the 16² = 256 of a slice); None keeps full resolution.  When ``size`` divides an axis this is plain
        block averaging; otherwise each output pixel is the area-weighted mean of the input pixels
        it covers.  This is the default feature space of :func:`data_copying_test`; embeddings from
        a learned detector can be passed to that function instead.
    block_size : images processed at a time.

    Returns
    -------
    float32 array ``(N, C * size^d)``, channel-major (all pixels of channel 0 first).

    >>> image_features(np.ones((2, 3, 64, 64), np.float32), size=16).shape
    (2, 768)
    >>> image_features(np.ones((2, 1, 16, 16, 16), np.float32)).shape
    (2, 512)
    """
    if isinstance(images, SliceStore):
        name = str(images.path)
        c, *spatial = images.image_shape
        n = len(images)
        blocks = (b for _, b in images.blocks(max(1, block_size // (8 if images.is_volume else 1))))
    else:
        name = "images"
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim not in (4, 5):
            raise WorkbenchError(f"{name}: expected an array (N, C, H, W), (N, H, W) or (N, C, D, H, W); "
                                 f"got shape {arr.shape}")
        n, c, *spatial = arr.shape
        blocks = (arr[a:a + block_size] for a in range(0, n, block_size))
    if n == 0:
        raise WorkbenchError(f"{name}: no images")
    if size == "auto":
        size = 8 if len(spatial) == 3 else 16
    if size is None:  # full resolution
        mats, out_side = [None] * len(spatial), list(spatial)
    else:
        if isinstance(size, (str, bool)) or int(size) != size or size < 1:
            raise WorkbenchError(f"{name}: size must be a positive integer, got {size!r}")
        if size > min(spatial):
            raise WorkbenchError(f"{name}: size {size} is larger than the images ({' x '.join(map(str, spatial))}); "
                                 "features only average down, never up")
        size = int(size)
        mats = [None if m == size else _area_matrix(m, size).astype(np.float32) for m in spatial]
        out_side = [size] * len(spatial)
    out = np.empty((n, c * int(np.prod(out_side))), np.float32)
    start = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():
            raise WorkbenchError(f"{name}: images {start}..{start + len(block) - 1} contain non-finite pixels")
        small = block
        for axis, a in enumerate(mats):  # average along each spatial axis in turn
            if a is None:
                continue
            small = np.moveaxis(np.tensordot(small, a, axes=([2 + axis], [1])), -1, 2 + axis)
        out[start:start + len(block)] = small.reshape(len(block), -1)
        start += len(block)
    return out


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def mann_whitney_z(test_distances, generated_distances) -> float:
    """Z-scored Mann-Whitney U of generated vs test distances (Z_U of the paper); NaN if undefined.

    U = #{(g, t): g > t} + 0.5 #{(g, t): g = t} over generated distances g and test distances t,
    so U is small -- and Z_U negative -- when generated samples are closer to the training set.
    Normal approximation with tie correction, no continuity correction:
    Z_U = (U - m n / 2) / sigma_U.  NaN when either list is empty or every value is tied.
    """
    t = np.asarray(test_distances, dtype=np.float64).ravel()
    g = np.asarray(generated_distances, dtype=np.float64).ravel()
    n, m = len(t), len(g)
    if n == 0 or m == 0:
        return float("nan")
    both = np.concatenate([g, t])
    ranks = rankdata(both)  # average ranks for ties
    u = ranks[:m].sum() - m * (m + 1) / 2.0
    total = n + m
    _, counts = np.unique(both, return_counts=True)
    tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (total * (total - 1)) if total > 1 else 0.0
    var = m * n / 12.0 * ((total + 1) - tie_term)
    if var <= 0:
        return float("nan")
    return float((u - m * n / 2.0) / math.sqrt(var))


# ------------------------------------------------------------------------------------------------
# geometry: k-means cells and exact nearest neighbours
# ------------------------------------------------------------------------------------------------
def _rows_per_block(per_row: int) -> int:
    """Rows per block so that a block of ``per_row`` float64 values per row stays near 64 MB."""
    return max(1, _BLOCK_ELEMENTS // max(1, per_row))


def _nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (squared Euclidean; ties go to the lower index)."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(x), np.int64)
    step = _rows_per_block(max(len(centroids), x.shape[1]))
    for a in range(0, len(x), step):
        d = c_sq[None, :] - 2.0 * (x[a:a + step] @ centroids.T)
        out[a:a + step] = np.argmin(d, axis=1)
    return out


def _sq_dist_to_centroids(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    diff = x - centroids[labels]
    return np.einsum("ij,ij->i", diff, diff)


def _kmeans(x: np.ndarray, k: int, *, seed: int, max_iter: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means++ and Lloyd iterations; returns (centroids, labels).

    An empty cluster is re-seeded at the point farthest from its centroid; clusters still empty
    at the end (only possible when T has fewer than k distinct points) are dropped.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    # k-means++ seeding (a few candidates per step, the greedy variant); squared distances from
    # norms and matrix products, so no (n, d) temporary per candidate
    n_local = 2 + int(math.log(k))
    x_sq = np.einsum("ij,ij->i", x, x)
    centroids = np.empty((k, x.shape[1]), np.float64)

    def sq_to(rows: np.ndarray) -> np.ndarray:  # (n, len(rows))
        return np.maximum(x_sq[:, None] - 2.0 * (x @ x[rows].T) + x_sq[rows][None, :], 0.0)

    first = int(rng.integers(n))
    centroids[0] = x[first]
    closest = sq_to(np.array([first]))[:, 0]
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already coincides with a centroid
            centroids[j] = x[rng.integers(n)]
            continue
        cand = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(n_local) * total), n - 1)
        new_closest = np.minimum(closest[:, None], sq_to(cand))
        best = int(np.argmin(new_closest.sum(axis=0)))
        centroids[j] = x[cand[best]]
        closest = new_closest[:, best]
    labels = _nearest_centroid(x, centroids)
    bar = tqdm(total=max_iter, desc="k-means cells", unit="iter", disable=not progress, leave=False)
    for _ in range(max_iter):
        bar.update(1)
        counts = np.bincount(labels, minlength=k)
        sums = sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n)) @ x
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
        if not nonempty.all():
            far = np.argsort(-_sq_dist_to_centroids(x, centroids, labels), kind="stable")
            for j, i in zip(np.flatnonzero(~nonempty), far):
                centroids[j] = x[i]
        new = _nearest_centroid(x, centroids)
        if np.array_equal(new, labels):
            break
        labels = new
    bar.close()
    used = np.unique(labels)
    if len(used) < k:  # drop clusters that own no training point, renumber 0..k'-1
        remap = np.full(k, -1, np.int64)
        remap[used] = np.arange(len(used))
        centroids, labels = centroids[used], remap[labels]
    return centroids, labels


def _nearest_distance(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each query row to its nearest reference row.

    Low dimensions: a k-d tree (exact).  Otherwise brute force in float64 on data centred at the
    reference mean, and the few best candidates of each row are re-measured directly as
    ||q - r||, so rounding in the matrix product cannot change the reported distance.
    """
    if len(queries) == 0:
        return np.empty(0, np.float64)
    if reference.shape[1] <= _KDTREE_MAX_DIM:
        d, _ = cKDTree(reference).query(queries, k=1)
        return np.asarray(d, dtype=np.float64)
    centre = reference.mean(axis=0)
    ref = reference - centre
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    n_cand = min(4, len(ref))
    out = np.empty(len(queries), np.float64)
    step = _rows_per_block(max(len(ref), n_cand * ref.shape[1]))
    for a in range(0, len(queries), step):
        q = queries[a:a + step] - centre
        d2 = ref_sq[None, :] - 2.0 * (q @ ref.T)  # + ||q||^2, the same for every candidate
        if n_cand < len(ref):
            cand = np.argpartition(d2, n_cand - 1, axis=1)[:, :n_cand]
        else:
            cand = np.broadcast_to(np.arange(len(ref)), (len(q), len(ref)))
        diff = q[:, None, :] - ref[cand]
        out[a:a + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff).min(axis=1))
    return out


# ------------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------------
@dataclass
class DataCopyingResult:
    """Outcome of :func:`data_copying_test`.

    Attributes
    ----------
    c_t : the C_T statistic (negative: copying, near 0: fine, positive: underfitting); NaN never.
    cells : one row per cell: ``cell``, ``n_train``, ``n_test``, ``n_generated``, ``test_fraction``
        (P_n), ``generated_fraction`` (Q_m), ``test_median_distance``,
        ``generated_median_distance``, ``z_u``, ``used`` (counted in C_T), ``copying``
        (used and Z_U below -threshold), ``skipped`` (why an unused cell was left out, else "").
    n_cells_used : cells that entered C_T.
    interpretation : one plain-language sentence.
    settings : the options, sample sizes and seed, for recording next to the result.
    test_cell, generated_cell : cell of every test / generated sample.
    test_distance, generated_distance : d(x) of every test / generated sample (nearest training
        point in the same cell).
    """

    c_t: float
    cells: pd.DataFrame
    n_cells_used: int
    interpretation: str
    settings: dict = field(default_factory=dict)
    test_cell: np.ndarray | None = field(default=None, repr=False)
    generated_cell: np.ndarray | None = field(default=None, repr=False)
    test_distance: np.ndarray | None = field(default=None, repr=False)
    generated_distance: np.ndarray | None = field(default=None, repr=False)

    @property
    def copying_cells(self) -> pd.DataFrame:
        """Rows of the cells flagged ``copying``, most negative Z_U first."""
        return self.cells[self.cells["copying"]].sort_values("z_u").reset_index(drop=True)

    def summary(self) -> dict:
        """Key figures as plain Python values (for JSON or scrapbook)."""
        return {
            "c_t": float(self.c_t),
            "n_cells_used": int(self.n_cells_used),
            "n_cells_copying": int(self.cells["copying"].sum()),
            "min_cell_z_u": float(self.cells.loc[self.cells["used"], "z_u"].min()),
            "interpretation": self.interpretation,
            **self.settings,
        }


def _check_features(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        hint = " (images? turn them into features with image_features(images))" if arr.ndim in (3, 4) else ""
        raise WorkbenchError(f"{name}: expected a 2-D array (samples, features); got shape {arr.shape}{hint}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise WorkbenchError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.shape[1] == 0 or arr.shape[0] == 0:
        raise WorkbenchError(f"{name}: empty array of shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise WorkbenchError(f"{name}: {len(rows)} rows contain NaN or infinite values (rows {shown})")
    return arr


def _interpret(c_t: float, threshold: float, n_copying: int, n_used: int) -> str:
    head = f"C_T = {c_t:.2f}: "
    if c_t < -threshold:
        text = (head + "generated images are closer to the training images than held-out images are"
                " -- evidence of data copying")
    elif c_t > threshold:
        text = (head + "generated images are farther from the training images than held-out images are"
                " -- the model underfits (no evidence of data copying)")
    else:
        text = (head + "generated images are about as close to the training images as held-out images are"
                f" -- no evidence of data copying (|C_T| <= {threshold:g})")
    if n_copying:
        text += f"; {n_copying} of {n_used} cells show local copying (Z_U < -{threshold:g})"
    return text + "."


def data_copying_test(train_features, test_features, generated_features, *, cells: int = 10,
                      tau: float | None = None, threshold: float = 3.0, seed: int = 0,
                      max_iter: int = 100, progress: bool = True) -> DataCopyingResult:
    """Meehan et al.'s C_T test of data copying over k-means cells of the training features.

    Parameters
    ----------
    train_features : ``(l, d)`` features of the training set T (the model was trained on these).
    test_features : ``(n, d)`` features of held-out real samples P_n (same distribution, unseen).
    generated_features : ``(m, d)`` features of generated samples Q_m.
        For images use :func:`image_features`; any embedding works.
    cells : number of k-means cells fitted on T (at least 2; at most the number of training,
        test and generated samples).  More cells localise copying better but leave fewer samples
        per cell; keep several test and ``tau * m`` generated samples per cell.
    tau : fraction of the generated samples a cell needs to count in C_T (Q_m(pi) >= tau).
        ``None``: 20 / m, i.e. at least 20 generated samples (the paper's default).
    threshold : |Z| above which a cell, or C_T itself, is read as copying (negative side) or
        underfitting (positive side) in the table and the interpretation.  Does not change C_T.
    seed : seeds the k-means++ initialisation; the same inputs and seed give the same result.
    max_iter : k-means iterations at most (it stops earlier when no assignment changes).
    progress : show a progress bar.

    Returns
    -------
    :class:`DataCopyingResult` with ``c_t``, the per-cell table and a plain-language reading.

    Rule for cells: a cell counts in C_T when it holds at least ``ceil(tau * m)`` generated samples
    and at least one test sample, and its distances are not all tied; other cells are listed with
    ``used = False`` and the reason in ``skipped``.

    >>> res = data_copying_test(train_f, test_f, gen_f, cells=10, seed=0)   # doctest: +SKIP
    >>> print(res.interpretation)                                          # doctest: +SKIP
    """
    train = _check_features("train_features", train_features)
    test = _check_features("test_features", test_features)
    gen = _check_features("generated_features", generated_features)
    dims = {"train_features": train.shape[1], "test_features": test.shape[1], "generated_features": gen.shape[1]}
    if len(set(dims.values())) != 1:
        raise WorkbenchError("feature dimensions differ: " + ", ".join(f"{k} has {v}" for k, v in dims.items())
                             + "; all three must come from the same feature extractor")
    if isinstance(cells, bool) or int(cells) != cells or cells < 2:
        raise WorkbenchError(f"cells must be an integer >= 2, got {cells!r}")
    cells = int(cells)
    l, n, m = len(train), len(test), len(gen)
    for name, count in (("training", l), ("test", n), ("generated", m)):
        if count < cells:
            raise WorkbenchError(f"only {count} {name} samples for {cells} cells; "
                                 f"use fewer cells (at most {count}) or more {name} samples")
    if tau is None:
        min_generated = MIN_GENERATED_DEFAULT
        tau = min_generated / m
    else:
        if not (0 < tau <= 1):
            raise WorkbenchError(f"tau must be a fraction in (0, 1], got {tau!r}")
        min_generated = max(1, math.ceil(tau * m - 1e-9))
    if min_generated > m:
        raise WorkbenchError(f"only {m} generated samples, but a cell needs {min_generated} to count in C_T "
                             f"(tau = {tau:g}); give at least {MIN_GENERATED_DEFAULT} generated samples or a larger tau")
    if threshold <= 0:
        raise WorkbenchError(f"threshold must be positive, got {threshold!r}")

    centroids, train_cell = _kmeans(train, cells, seed=seed, max_iter=max_iter, progress=progress)
    k = len(centroids)
    test_cell = _nearest_centroid(test, centroids)
    gen_cell = _nearest_centroid(gen, centroids)

    test_dist = np.empty(n, np.float64)
    gen_dist = np.empty(m, np.float64)
    n_train = np.bincount(train_cell, minlength=k)
    n_test = np.bincount(test_cell, minlength=k)
    n_gen = np.bincount(gen_cell, minlength=k)
    z_u = np.full(k, np.nan)
    skipped = [""] * k
    for c in tqdm(range(k), desc="cells", unit="cell", disable=not progress, leave=False):
        ref = train[train_cell == c]
        ti, gi = test_cell == c, gen_cell == c
        test_dist[ti] = _nearest_distance(test[ti], ref)
        gen_dist[gi] = _nearest_distance(gen[gi], ref)
        if n_gen[c] < min_generated:
            skipped[c] = f"fewer than {min_generated} generated samples"
        elif n_test[c] == 0:
            skipped[c] = "no test samples"
        else:
            z_u[c] = mann_whitney_z(test_dist[ti], gen_dist[gi])
            if np.isnan(z_u[c]):
                skipped[c] = "all distances tied"
    used = np.array([s == "" for s in skipped])
    if not used.any():
        raise WorkbenchError(
            f"no cell has at least {min_generated} generated samples and a test sample "
            f"({m} generated, {n} test samples over {k} cells; most generated samples per cell: {int(n_gen.max())}); "
            "use fewer cells or more samples")
    p_n = n_test / n
    c_t = float(np.sum(p_n[used] * z_u[used]) / np.sum(p_n[used]))
    table = pd.DataFrame({
        "cell": np.arange(k),
        "n_train": n_train,
        "n_test": n_test,
        "n_generated": n_gen,
        "test_fraction": p_n,
        "generated_fraction": n_gen / m,
        "test_median_distance": [float(np.median(test_dist[test_cell == c])) if n_test[c] else np.nan for c in range(k)],
        "generated_median_distance": [float(np.median(gen_dist[gen_cell == c])) if n_gen[c] else np.nan for c in range(k)],
        "z_u": z_u,
        "used": used,
        "copying": used & (np.nan_to_num(z_u, nan=0.0) < -threshold),
        "skipped": skipped,
    })
    n_used = int(used.sum())
    settings = {
        "cells": cells, "cells_formed": k, "tau": float(tau), "min_generated": int(min_generated),
        "threshold": float(threshold), "seed": int(seed), "max_iter": int(max_iter),
        "n_train": l, "n_test": n, "n_generated": m, "n_features": int(train.shape[1]),
        "distance": "euclidean, to the nearest training sample in the same cell",
    }
    return DataCopyingResult(
        c_t=c_t, cells=table, n_cells_used=n_used,
        interpretation=_interpret(c_t, threshold, int(table["copying"].sum()), n_used),
        settings=settings, test_cell=test_cell, generated_cell=gen_cell,
        test_distance=test_dist, generated_distance=gen_dist,
    )
