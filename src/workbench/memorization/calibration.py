"""Calibrated copy thresholds and copy rates with bootstrap confidence intervals.

A similarity histogram does not say what to do; a threshold calibrated on the user's own data
does.  Two rules, each computed from the similarities of real images only:

* **Dar et al. (2024)**: τ = the 95th percentile, over training images, of each training image's
  similarity to its nearest held-out image.  A synthetic image more similar than τ to a training
  image is more similar than 95 % of training images are to their closest unseen image.
* **test → train baseline** (Akbar et al.'s comparison, made a rule): τ = a chosen quantile of
  each held-out image's highest similarity to any training image.  At quantile q, about 1 − q
  of novel images would be flagged: the rule's false-positive rate by construction.

With τ, :func:`copy_rates` gives Dar et al.'s two figures — the share of synthetic images that
are copies and the share of training images (and of training subjects) with at least one copy —
each with a bootstrap confidence interval over synthetic images.  Every result says which rule,
which similarity and which data produced it.

>>> tau = dar_threshold(train_to_test_max, similarity="pixel r")            # doctest: +SKIP
>>> rates = copy_rates(synth_max, synth_match, tau, train_subjects=subjects)  # doctest: +SKIP
>>> rates.as_dict()["synthetic_copy_fraction"]                                # doctest: +SKIP
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
    """τ by Dar et al.'s rule: the ``quantile`` (0.95) of each training image's similarity to its nearest held-out image."""
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
    """Dar et al.'s figures for one threshold."""

    threshold: Threshold
    n_synthetic: int
    n_train: int
    n_subjects: int | None
    synthetic_copies: int
    synthetic_copy_fraction: Interval
    train_copied: int
    train_copied_fraction: Interval
    subjects_copied: int | None = None
    subjects_copied_fraction: Interval | None = None
    copied_train_rows: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.synthetic_copies} of {self.n_synthetic} synthetic images are copies: {self.synthetic_copy_fraction}",
                 f"{self.train_copied} of {self.n_train} training images have a copy: {self.train_copied_fraction}"]
        if self.subjects_copied is not None:
            parts.append(f"{self.subjects_copied} of {self.n_subjects} training subjects have a copied image: "
                         f"{self.subjects_copied_fraction}")
        return (f"threshold {self.threshold.value:.4f} ({self.threshold.rule}, {self.threshold.similarity}): "
                + "; ".join(parts))


def copy_rates(synthetic_max, synthetic_match, threshold: Threshold, *, n_train: int, train_subjects=None,
               bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> CopyRates:
    """Share of synthetic images that are copies, and of training images / subjects with a copy.

    Parameters
    ----------
    synthetic_max : each synthetic image's highest similarity to the training set.
    synthetic_match : position (in the training view) of that best match.
    threshold : from :func:`dar_threshold` or :func:`baseline_threshold`.
    n_train : number of training images searched.
    train_subjects : subject id of each training image (position-aligned), for the per-subject rate.
    bootstrap : resamples of the synthetic images for the confidence intervals (0: none).
    ci : confidence level of the percentile intervals.

    A synthetic image is a copy when its similarity is strictly above τ.
    """
    sims = _check_similarities(synthetic_max, "synthetic_max")
    match = np.asarray(synthetic_match, dtype=np.int64).reshape(-1)
    if match.shape != sims.shape:
        raise WorkbenchError(f"synthetic_match has {match.size} entries for {sims.size} similarities")
    if n_train < 1:
        raise WorkbenchError("n_train must be >= 1")
    if match.size and (match.min() < 0 or match.max() >= n_train):
        raise WorkbenchError(f"synthetic_match points outside the {n_train} training images")
    subjects = None
    if train_subjects is not None:
        subjects = np.asarray(train_subjects, dtype=object)
        if subjects.shape != (n_train,):
            raise WorkbenchError(f"train_subjects has {subjects.size} entries for {n_train} training images")
        _, subject_codes = np.unique(subjects.astype(str), return_inverse=True)
        n_subjects = int(subject_codes.max()) + 1
    tau = threshold.value

    def figures(idx):
        copy = sims[idx] > tau
        rows = np.unique(match[idx][copy])
        out = [copy.mean() if len(idx) else 0.0, rows.size / n_train]
        if subjects is not None:
            out.append(np.unique(subject_codes[rows]).size / n_subjects)
        return out

    all_idx = np.arange(sims.size)
    point = figures(all_idx)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.array([figures(rng.integers(0, sims.size, sims.size)) for _ in range(int(bootstrap))])
        lo, hi = np.quantile(draws, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    else:
        lo = hi = np.array(point)
    intervals = [Interval(float(p), float(a), float(b)) for p, a, b in zip(point, lo, hi)]
    copy = sims > tau
    copied_rows = np.unique(match[copy])
    return CopyRates(
        threshold=threshold, n_synthetic=int(sims.size), n_train=int(n_train),
        n_subjects=None if subjects is None else n_subjects,
        synthetic_copies=int(copy.sum()), synthetic_copy_fraction=intervals[0],
        train_copied=int(copied_rows.size), train_copied_fraction=intervals[1],
        subjects_copied=None if subjects is None else int(np.unique(subject_codes[copied_rows]).size),
        subjects_copied_fraction=None if subjects is None else intervals[2],
        copied_train_rows=[int(r) for r in copied_rows], bootstrap=int(bootstrap), seed=int(seed),
    )
