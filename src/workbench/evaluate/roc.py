"""ROC figures with bootstrap intervals, shared by the utility classifier and membership inference.

The ROC arithmetic is scikit-learn's (``roc_auc_score``, ``roc_curve``); what is written here is
the part the studies need on top of it: the true-positive rate at a fixed low false-positive rate
(the figure membership-inference papers report, Carlini et al. 2022), and percentile-bootstrap
intervals that resample positives and negatives separately (stratified), so each resample keeps
both classes and the interval reflects how few images a small medical split has.

>>> import numpy as np
>>> labels = np.r_[np.ones(50), np.zeros(50)]
>>> scores = labels + np.random.default_rng(0).normal(0, 0.5, 100)
>>> round(auroc(scores, labels), 2)
0.94
>>> fig = roc_figure(scores, labels, n_boot=200, seed=0)
>>> fig.low < fig.value < fig.high
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import WorkbenchError


@dataclass(frozen=True)
class Interval:
    """A figure with its 95 % bootstrap interval (``n_boot`` resamples)."""

    value: float
    low: float
    high: float
    n_boot: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n_boot": self.n_boot}


def _check(scores, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise WorkbenchError(f"{what}: {len(scores)} scores but {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise WorkbenchError(f"{what}: {int((~np.isfinite(scores)).sum())} scores are not finite")
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise WorkbenchError(f"{what}: needs images of both classes, got {n_pos} positive and {n_neg} negative")
    return scores, labels


def auroc(scores, labels) -> float:
    """Area under the ROC curve (0.5: no better than chance; ties count one half).

    The Mann-Whitney form (ranks with ties averaged), equal to scikit-learn's ``roc_auc_score``
    (tested) and fast enough to be called a thousand times in a bootstrap.
    """
    from scipy.stats import rankdata

    scores, labels = _check(scores, labels, "auroc")
    return _auroc(scores, labels, rankdata)


def _auroc(scores: np.ndarray, labels: np.ndarray, rankdata) -> float:
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """The true-positive rate at false-positive rate ``fpr`` (interpolated on the ROC curve).

    With fewer than ``1 / fpr`` negatives the lowest reachable false-positive rate is above
    ``fpr``; the figure is then the rate at zero false positives, which is what a threshold
    above every negative gives.
    """
    from sklearn.metrics import roc_curve

    scores, labels = _check(scores, labels, "tpr_at_fpr")
    f, t, _ = roc_curve(labels, scores)
    return float(np.interp(fpr, f, t, left=0.0))


def _stratified_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    return np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])


def bootstrap(statistic, scores, labels, *, n_boot: int = 1000, seed: int = 0) -> Interval:
    """``statistic(scores, labels)`` with a stratified percentile-bootstrap 95 % interval."""
    scores, labels = _check(scores, labels, "bootstrap")
    value = float(statistic(scores, labels))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(int(n_boot)):
        idx = _stratified_indices(labels, rng)
        draws.append(statistic(scores[idx], labels[idx]))
    if not draws:
        return Interval(value, value, value, 0)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(value, float(low), float(high), int(n_boot))


def roc_figure(scores, labels, *, n_boot: int = 1000, seed: int = 0) -> Interval:
    """AUROC with its stratified bootstrap interval."""
    return bootstrap(auroc, scores, labels, n_boot=n_boot, seed=seed)


def paired_difference(scores_a, scores_b, labels, *, n_boot: int = 1000, seed: int = 0) -> Interval:
    """AUROC(a) − AUROC(b) of two scorings of the same images, resampling images once for both
    (a paired bootstrap: the test images' difficulty is shared, so the interval is narrower and
    right)."""
    a, labels_ = _check(scores_a, labels, "paired_difference")
    b, _ = _check(scores_b, labels, "paired_difference")
    value = auroc(a, labels_) - auroc(b, labels_)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(int(n_boot)):
        idx = _stratified_indices(labels_, rng)
        draws.append(auroc(a[idx], labels_[idx]) - auroc(b[idx], labels_[idx]))
    if not draws:
        return Interval(value, value, value, 0)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(float(value), float(low), float(high), int(n_boot))
