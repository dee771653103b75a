"""Calibrated copy thresholds and copy rates with bootstrap confidence intervals.

A similarity histogram does not say what to do; a threshold calibrated on the user's own data
does.  Two rules, each computed from the similarities of real images only:

* **Dar et al. (2024)**: τ = the 95th percentile, over training images, of each training image's
  similarity to its nearest held-out image.  A synthetic image more similar than τ to a training
  image is more similar than 95 % of training images are to their closest unseen image.
* **test → train baseline** (Akbar et al.'s comparison, made a rule): τ = a chosen quantile of
  each held-out image's highest similarity to any training image.  At quantile q, about 1 − q
  of novel images would be flagged: the rule's false-positive rate by construction.

Dar et al.'s definitions, as their code computes them
------------------------------------------------------
Read from GitHub Cardio-AI/memorization-ldm, notebook ``memorization_assessement3D.ipynb`` (cells
8-9; the older ``.ipynb_checkpoints/memorization_assessement-checkpoint.ipynb`` computes the same;
the 2D notebook ``memorization_assessment2D.ipynb`` is named in their README but its content was
not retrievable, so the 2D variant is unchecked):

* similarity: scipy ``cdist(..., "correlation")`` between the contrastive network's embedding
  vectors, i.e. distance 1 − r with r the Pearson correlation of two embeddings (their network is
  trained with NT-Xent, a cosine loss, but compared by correlation);
* threshold: ``Thr = np.percentile(d_min, 5)`` where ``d_min`` is, per *training* image, the
  distance to its nearest *validation* image; τ = 1 − Thr.  With numpy's default (linear)
  interpolation that is exactly the 95th percentile (linear) of each training image's highest r
  with a held-out image, which is what :func:`dar_threshold` computes;
* "synthetic samples that are copies": synthetic images whose nearest training image has
  distance ``< Thr``, i.e. r **strictly** above τ, as a percentage (their denominator is the
  number of training images, equal to the number of synthetic volumes they generated; ours is the
  number of synthetic images);
* "training samples that are copies" (the paper's "% of training images memorized"): training
  images whose nearest *synthetic* image has distance ``< Thr`` (r strictly above τ), as a
  percentage of the training images.  Every training image close to *some* synthetic image
  counts, not only the one a copy matches best.
* their 3D data has one volume per exam; they report no per-subject figure.  Our per-subject
  figure is the natural extension: subjects with at least one memorized training image.

So :func:`copy_rates` reports, at one τ (every comparison strictly above τ, as theirs):

* ``synthetic_copies`` / ``synthetic_copy_fraction``: synthetic images whose nearest training
  image is above τ (Dar's "copies");
* ``train_memorized`` / ``train_memorized_fraction`` and ``subjects_memorized`` /
  ``subjects_memorized_fraction``: Dar's "training images memorized" (nearest synthetic image
  above τ; needs ``train_to_synthetic_max``), and training subjects with at least one;
* ``train_best_match_copied`` / ``train_best_match_fraction`` and ``subjects_best_match_copied`` /
  ``subjects_best_match_fraction``: the narrower count of training images that are some copy's
  single best match (and subjects with one).  They are a subset of the memorized images (a
  training image that a copy matches best at r > τ has a nearest synthetic image at least that
  close), and on stacks of neighbouring slices far fewer (one measured run: 22 % against 66 %).

Confidence intervals are percentile bootstraps; ``CopyRates.resampling`` names each one's unit:

* the synthetic copy rate resamples **synthetic images**;
* the memorized and the best-match rates resample **training subjects** (a cluster bootstrap: a
  subject's slices are drawn together, as neighbouring slices are far from independent), or
  training images when no subjects are given.  Each training image's nearest-synthetic
  similarity is a maximum over the synthetic set, and whether it is a copy's best match depends
  on the whole synthetic set too; redrawing synthetic images with replacement leaves about 63 %
  of them distinct, so a count of distinct training images falls in every redraw and a
  percentile interval would lie below the figure itself (measured: 32.9 % with an "interval" of
  25.3 %–31.2 % on a 3D run's 503 synthetic slices).  So these intervals hold the synthetic set
  fixed and say how precisely
  the share is known for training data like this, not how it varies with another synthetic draw.

All intervals treat τ as given.  Every result says which rule, which similarity and which data
produced it.

>>> tau = dar_threshold(train_to_test_max, similarity="pixel r")                       # doctest: +SKIP
>>> rates = copy_rates(synth_max, synth_match, tau, n_train=len(train), train_subjects=subjects,
...                    train_to_synthetic_max=train_to_synth_max)                      # doctest: +SKIP
>>> rates.as_dict()["train_memorized_fraction"]                                        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import WorkbenchError

#: fewer held-out images than this cannot calibrate a 95th percentile meaningfully
MIN_CALIBRATION_IMAGES = 20
#: Dar et al.'s rule takes the quantile over the *training* images, which may be few (small training
#: sets are what models memorize); below this many it is refused, and below MIN_CALIBRATION_IMAGES
#: its description warns that the quantile is uncertain
MIN_DAR_TRAINING_IMAGES = 5


@dataclass
class Threshold:
    """A copy threshold and how it was made."""

    value: float
    rule: str  # "dar95" or "test_quantile"
    quantile: float
    similarity: str  # e.g. "pixel r", "embedding similarity"
    n_calibration: int
    description: str

    def as_dict(self) -> dict:
        return asdict(self)


def _check_similarities(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise WorkbenchError(f"{name}: no similarities given")
    finite = arr[np.isfinite(arr)]
    if finite.size and (finite.min() < -1 - 1e-9 or finite.max() > 1 + 1e-9):
        raise WorkbenchError(f"{name}: similarities must lie in [-1, 1]; found {finite.min():.3g}..{finite.max():.3g}")
    return arr


def check_threshold(value: float) -> float:
    """A user-given threshold must be a number in [-1, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not -1 <= float(value) <= 1:
        raise WorkbenchError(f"threshold must be a number in [-1, 1], got {value!r}")
    return float(value)


def _quantile(values: np.ndarray, q: float, name: str, rule: str, minimum: int = MIN_CALIBRATION_IMAGES,
              hint: str = "hold out more test images or subjects") -> tuple[float, int]:
    finite = values[np.isfinite(values)]
    if finite.size < minimum:
        raise WorkbenchError(f"{rule}: only {finite.size} {name} to calibrate on; at least {minimum} "
                             f"are needed ({hint})")
    return float(np.quantile(finite, q, method="linear")), int(finite.size)


def dar_threshold(train_to_test_max, *, quantile: float = 0.95, similarity: str = "pixel r",
                  data: str = "training images vs held-out images") -> Threshold:
    """τ by Dar et al.'s rule: the ``quantile`` (0.95) of each training image's similarity to its nearest held-out image.

    Linear interpolation (numpy's default), as their ``np.percentile(d_min, 5)`` over distances
    ``1 - r``: the 5th percentile of ``1 - r`` is exactly one minus the 95th percentile of ``r``.
    """
    if not 0 < quantile < 1:
        raise WorkbenchError(f"quantile must be in (0, 1), got {quantile!r}")
    values = _check_similarities(train_to_test_max, "train_to_test_max")
    tau, n = _quantile(values, quantile, "training images", "Dar et al.'s rule", MIN_DAR_TRAINING_IMAGES,
                       "train on more images or use the test-quantile rule")
    caveat = f" (only {n} training images: this quantile is uncertain)" if n < MIN_CALIBRATION_IMAGES else ""
    return Threshold(tau, "dar95" if quantile == 0.95 else "dar", quantile, similarity, n,
                     f"{quantile:.0%} quantile over {n} training images of the {similarity} with their nearest "
                     f"held-out image ({data}); Dar et al. 2024{caveat}")


def baseline_threshold(test_to_train_max, *, quantile: float = 0.95, similarity: str = "pixel r",
                            data: str = "held-out images vs training images") -> Threshold:
    """τ from the study's baseline: the ``quantile`` of each held-out image's highest similarity to the training set."""
    if not 0 < quantile <= 1:
        raise WorkbenchError(f"quantile must be in (0, 1], got {quantile!r}")
    values = _check_similarities(test_to_train_max, "test_to_train_max")
    tau, n = _quantile(values, quantile, "held-out images", "the test-quantile rule")
    return Threshold(tau, "test_quantile", quantile, similarity, n,
                     f"{quantile:.0%} quantile over {n} held-out images of their highest {similarity} with any "
                     f"training image ({data}); about {1 - quantile:.0%} of novel images exceed it")


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.1%} (95% CI {self.low:.1%}–{self.high:.1%})"


@dataclass
class CopyRates:
    """Dar et al.'s figures for one threshold, and the narrower best-match counts beside them.

    ``train_memorized*`` and ``subjects_memorized*`` are None when :func:`copy_rates` was not given
    the training images' nearest-synthetic similarities; ``subjects_*`` are None without subjects.
    """

    threshold: Threshold
    n_synthetic: int
    n_train: int
    n_subjects: int | None
    #: synthetic images whose nearest training image is above τ (Dar et al.'s "copies")
    synthetic_copies: int
    synthetic_copy_fraction: Interval
    #: training images that are some copy's single best match (not Dar et al.'s figure)
    train_best_match_copied: int
    train_best_match_fraction: Interval
    #: training images whose nearest synthetic image is above τ (Dar et al.'s "memorized")
    train_memorized: int | None = None
    train_memorized_fraction: Interval | None = None
    #: training subjects with at least one memorized training image
    subjects_memorized: int | None = None
    subjects_memorized_fraction: Interval | None = None
    #: training subjects with at least one image that is a copy's best match
    subjects_best_match_copied: int | None = None
    subjects_best_match_fraction: Interval | None = None
    #: positions (in the training view) of the memorized / best-match training images
    memorized_train_rows: list | None = None
    best_match_train_rows: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    #: the resampling unit of each interval
    resampling: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.synthetic_copies} of {self.n_synthetic} synthetic images are copies (nearest training "
                 f"image above τ): {self.synthetic_copy_fraction}"]
        if self.train_memorized is None:
            parts.append("training images memorized (Dar et al.): not computed (pass train_to_synthetic_max)")
        else:
            parts.append(f"{self.train_memorized} of {self.n_train} training images memorized (Dar et al.: nearest "
                         f"synthetic image above τ): {self.train_memorized_fraction}")
            if self.subjects_memorized is not None:
                parts.append(f"{self.subjects_memorized} of {self.n_subjects} training subjects have a memorized "
                             f"image: {self.subjects_memorized_fraction}")
        parts.append(f"{self.train_best_match_copied} of {self.n_train} training images are a copy's best match: "
                     f"{self.train_best_match_fraction}")
        if self.subjects_best_match_copied is not None:
            parts.append(f"{self.subjects_best_match_copied} of {self.n_subjects} training subjects have a copy's best "
                         f"match: {self.subjects_best_match_fraction}")
        return (f"threshold {self.threshold.value:.4f} ({self.threshold.rule}, {self.threshold.similarity}): "
                + "; ".join(parts))


def _percentile_interval(point: np.ndarray, draws: np.ndarray | None, ci: float) -> list[Interval]:
    if draws is None:
        return [Interval(float(p), float(p), float(p)) for p in point]
    lo, hi = np.quantile(draws, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    return [Interval(float(p), float(a), float(b)) for p, a, b in zip(point, lo, hi)]


def _training_intervals(hit: np.ndarray, subject_codes, n_subjects, rng, bootstrap: int, ci: float) -> list[Interval]:
    """Intervals for the share of training images with ``hit`` and (given subjects) of subjects with one.

    A cluster bootstrap over training subjects (a subject's images drawn together: neighbouring
    slices are far from independent), or over training images when there are no subjects.
    """
    n_train = hit.size
    if subject_codes is None:
        p = float(hit.mean())
        # resampling n_train images with replacement: the count drawn is Binomial(n_train, p)
        draws = rng.binomial(n_train, p, bootstrap)[:, None] / n_train if bootstrap else None
        return _percentile_interval(np.array([p]), draws, ci)
    images = np.bincount(subject_codes, minlength=n_subjects)
    hits = np.bincount(subject_codes, weights=hit, minlength=n_subjects)
    subject_hit = hits > 0
    point = np.array([hit.mean(), subject_hit.mean()])
    draws = None
    if bootstrap:
        draws = np.empty((bootstrap, 2))
        for start in range(0, bootstrap, 256):  # blocks keep memory at 256 x n_subjects
            d = rng.integers(0, n_subjects, (min(256, bootstrap - start), n_subjects))
            draws[start:start + len(d), 0] = hits[d].sum(axis=1) / images[d].sum(axis=1)
            draws[start:start + len(d), 1] = subject_hit[d].mean(axis=1)
    return _percentile_interval(point, draws, ci)


def copy_rates(synthetic_max, synthetic_match, threshold: Threshold, *, n_train: int, train_subjects=None,
               train_to_synthetic_max=None, bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> CopyRates:
    """Dar et al.'s copy and memorization rates at τ, and the training images that are a copy's best match.

    Parameters
    ----------
    synthetic_max : each synthetic image's highest similarity to the training set.
    synthetic_match : position (in the training view) of that best match.
    threshold : from :func:`dar_threshold` or :func:`baseline_threshold`.
    n_train : number of training images searched.
    train_subjects : subject id of each training image (position-aligned), for the per-subject rates.
    train_to_synthetic_max : each training image's highest similarity to any synthetic image
        (position-aligned with the training view), for Dar et al.'s "training images memorized".
        Without it those figures are None.
    bootstrap : resamples for the confidence intervals (0: none); see the module docstring for
        which unit each interval resamples (also in ``CopyRates.resampling``).
    ci : confidence level of the percentile intervals.

    Every comparison is strictly above τ, as in Dar et al.'s code (distance ``< Thr``).  A
    similarity that is not finite (a constant image has no Pearson r) is never above τ.

    Example
    -------
    >>> tau = Threshold(0.9, "fixed", float("nan"), "pixel r", 0, "example")
    >>> rates = copy_rates([0.95, 0.5], [1, 0], tau, n_train=3, train_to_synthetic_max=[0.2, 0.95, 0.93],
    ...                    bootstrap=0)
    >>> rates.train_best_match_copied, rates.train_memorized
    (1, 2)
    """
    sims = _check_similarities(synthetic_max, "synthetic_max")
    match = np.asarray(synthetic_match, dtype=np.int64).reshape(-1)
    if match.shape != sims.shape:
        raise WorkbenchError(f"synthetic_match has {match.size} entries for {sims.size} similarities")
    if isinstance(n_train, bool) or int(n_train) != n_train or n_train < 1:
        raise WorkbenchError(f"n_train must be a whole number >= 1, got {n_train!r}")
    n_train = int(n_train)
    if match.size and (match.min() < 0 or match.max() >= n_train):
        raise WorkbenchError(f"synthetic_match points outside the {n_train} training images")
    subject_codes = n_subjects = None
    if train_subjects is not None:
        subjects = np.asarray(train_subjects, dtype=object).reshape(-1)
        if subjects.shape != (n_train,):
            raise WorkbenchError(f"train_subjects has {subjects.size} entries for {n_train} training images")
        _, subject_codes = np.unique(subjects.astype(str), return_inverse=True)
        subject_codes = subject_codes.reshape(-1)
        n_subjects = int(subject_codes.max()) + 1
    train_sims = None
    if train_to_synthetic_max is not None:
        train_sims = _check_similarities(train_to_synthetic_max, "train_to_synthetic_max")
        if train_sims.shape != (n_train,):
            raise WorkbenchError(f"train_to_synthetic_max has {train_sims.size} entries for {n_train} training "
                                 f"images (one per training image, in the training view's order)")
    tau = threshold.value
    rng = np.random.default_rng(seed)
    bootstrap = int(bootstrap)

    # -- synthetic side: the copy rate, resampling synthetic images ---------------------------------------------
    copy = sims > tau
    point = np.array([copy.mean() if sims.size else 0.0])
    draws = None
    if bootstrap:
        draws = np.array([[copy[rng.integers(0, sims.size, sims.size)].mean()] for _ in range(bootstrap)])
    copy_interval = _percentile_interval(point, draws, ci)[0]
    resampling = {"synthetic_copy_fraction": "synthetic images"}

    # -- training side: best matches and Dar et al.'s memorized images, resampling training subjects -----------
    best_rows = np.unique(match[copy])
    best = np.zeros(n_train, dtype=bool)
    best[best_rows] = True
    memorized = None if train_sims is None else train_sims > tau
    best_intervals = _training_intervals(best, subject_codes, n_subjects, rng, bootstrap, ci)
    memorized_intervals = (None if memorized is None
                           else _training_intervals(memorized, subject_codes, n_subjects, rng, bootstrap, ci))
    unit = "training images" if subject_codes is None else "training subjects (all of a subject's images together)"
    resampling["train_best_match_fraction"] = unit
    if subject_codes is not None:
        resampling["subjects_best_match_fraction"] = "training subjects"
    subjects_memorized = None
    if memorized is not None:
        resampling["train_memorized_fraction"] = unit
        if subject_codes is not None:
            resampling["subjects_memorized_fraction"] = "training subjects"
            subjects_memorized = int(np.unique(subject_codes[memorized]).size)

    return CopyRates(
        threshold=threshold, n_synthetic=int(sims.size), n_train=n_train, n_subjects=n_subjects,
        synthetic_copies=int(copy.sum()), synthetic_copy_fraction=copy_interval,
        train_best_match_copied=int(best_rows.size), train_best_match_fraction=best_intervals[0],
        train_memorized=None if memorized is None else int(memorized.sum()),
        train_memorized_fraction=None if memorized is None else memorized_intervals[0],
        subjects_memorized=subjects_memorized,
        subjects_memorized_fraction=None if subjects_memorized is None else memorized_intervals[1],
        subjects_best_match_copied=None if subject_codes is None else int(np.unique(subject_codes[best_rows]).size),
        subjects_best_match_fraction=None if subject_codes is None else best_intervals[1],
        memorized_train_rows=None if memorized is None else [int(r) for r in np.flatnonzero(memorized)],
        best_match_train_rows=[int(r) for r in best_rows], bootstrap=bootstrap, seed=int(seed), resampling=resampling,
    )
