"""Calibrated thresholds, copy rates with bootstrap intervals, and the patient-level view."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError
from workbench.memorization.calibration import Threshold, baseline_threshold, check_threshold, copy_rates, dar_threshold
from workbench.memorization.patients import copy_matches, patient_table
from workbench.widgets.report import patient_figure


def test_thresholds_are_the_stated_quantiles():
    rng = np.random.default_rng(0)
    train_to_test = rng.uniform(0.5, 0.9, 200)
    test_to_train = rng.uniform(0.6, 0.95, 80)
    dar = dar_threshold(train_to_test, similarity="pixel r")
    assert dar.value == pytest.approx(np.quantile(train_to_test, 0.95))
    assert dar.rule == "dar95" and dar.n_calibration == 200 and "Dar et al." in dar.description
    base = baseline_threshold(test_to_train, quantile=0.99)
    assert base.value == pytest.approx(np.quantile(test_to_train, 0.99))
    assert "1% of novel images" in base.description


def test_bad_calibration_input_is_refused():
    with pytest.raises(WorkbenchError, match="only 5 held-out images"):
        baseline_threshold(np.full(5, 0.5))
    with pytest.raises(WorkbenchError, match=r"\[-1, 1\]"):
        dar_threshold(np.linspace(0, 1.5, 50))
    for bad in (1.2, -3, "0.9", True):
        with pytest.raises(WorkbenchError, match=r"threshold must be a number in \[-1, 1\]"):
            check_threshold(bad)
    assert check_threshold(0.9) == 0.9


def test_copy_rates_count_synthetic_images_training_images_and_subjects():
    tau = dar_threshold(np.linspace(0.0, 0.9, 100))  # 95th percentile = 0.855
    sims = np.array([0.99, 0.5, 0.97, 0.2, 0.95, 0.86])
    match = np.array([0, 1, 0, 2, 3, 4])
    subjects = np.array(["A", "A", "B", "C", "C"])
    # each training image's nearest synthetic image: 0, 3, 4 are best matches (>= their copies' r); 1 is
    # also close to a synthetic image without being its best match; 2 is not memorized
    train_to_synth = np.array([0.99, 0.90, 0.30, 0.95, 0.86])
    rates = copy_rates(sims, match, tau, n_train=5, train_subjects=subjects, train_to_synthetic_max=train_to_synth,
                       bootstrap=500, seed=1)
    assert rates.synthetic_copies == 4  # 0.99, 0.97, 0.95, 0.86 > 0.855
    assert rates.synthetic_copy_fraction.value == pytest.approx(4 / 6)
    assert rates.best_match_train_rows == [0, 3, 4] and rates.train_best_match_fraction.value == pytest.approx(3 / 5)
    assert rates.subjects_best_match_copied == 2 and rates.subjects_best_match_fraction.value == pytest.approx(2 / 3)
    assert rates.memorized_train_rows == [0, 1, 3, 4] and rates.train_memorized == 4
    assert rates.train_memorized_fraction.value == pytest.approx(4 / 5)
    assert rates.subjects_memorized == 2 and rates.subjects_memorized_fraction.value == pytest.approx(2 / 3)  # A, C
    for interval in (rates.synthetic_copy_fraction, rates.train_best_match_fraction, rates.subjects_best_match_fraction,
                     rates.train_memorized_fraction, rates.subjects_memorized_fraction):
        assert 0 <= interval.low <= interval.value <= interval.high <= 1
    assert rates.synthetic_copy_fraction.low < rates.synthetic_copy_fraction.high  # a real interval
    assert rates.resampling["synthetic_copy_fraction"] == "synthetic images"
    assert rates.resampling["train_memorized_fraction"].startswith("training subjects")
    again = copy_rates(sims, match, tau, n_train=5, train_subjects=subjects, train_to_synthetic_max=train_to_synth,
                       bootstrap=500, seed=1)
    assert again.as_dict() == rates.as_dict()
    text = rates.summary()
    assert "4 of 6 synthetic images are copies" in text
    assert "4 of 5 training images memorized" in text and "3 of 5 training images are a copy's best match" in text
    with pytest.raises(WorkbenchError, match="outside the 5 training images"):
        copy_rates(sims, match + 5, tau, n_train=5)
    with pytest.raises(WorkbenchError, match="train_to_synthetic_max has 4 entries for 5 training images"):
        copy_rates(sims, match, tau, n_train=5, train_to_synthetic_max=train_to_synth[:4])
    # without the training images' nearest-synthetic similarities Dar's memorized figures are absent, and say so
    plain = copy_rates(sims, match, tau, n_train=5, bootstrap=0)
    assert plain.train_memorized is None and plain.train_memorized_fraction is None
    assert "not computed" in plain.summary()
    # without subjects the memorized interval resamples training images
    no_subjects = copy_rates(sims, match, tau, n_train=5, train_to_synthetic_max=train_to_synth, bootstrap=200)
    assert no_subjects.resampling["train_memorized_fraction"] == "training images"
    assert no_subjects.subjects_memorized is None and no_subjects.subjects_best_match_fraction is None


def _manifest():
    rows = [{"subject": s, "z": z} for s in ("A", "B") for z in range(5)]
    return pd.DataFrame(rows)


def test_patient_table_finds_copied_subjects_slices_and_adjacent_runner_ups():
    m = _manifest()  # positions: A z0..4 -> 0..4, B z0..4 -> 5..9
    values = np.array([[0.99, 0.97], [0.98, 0.90], [0.40, 0.30], [0.95, 0.94]])
    indices = np.array([[2, 3], [2, 7], [5, 6], [8, 9]])  # A z2 (runner-up A z3), A z2 (runner-up B z2), -, B z3 (B z4)
    matches = copy_matches(values, indices, m, 0.9)
    assert matches["synthetic"].tolist() == [0, 1, 3]
    assert matches["runner_up_adjacent"].tolist() == [True, False, True]
    table = patient_table(values, indices, m, 0.9)
    assert table.loc["A", "copies"] == 2 and table.loc["A", "copied_slices"] == 1 and table.loc["A", "copied_z"] == [2]
    assert table.loc["A", "runner_up_adjacent"] == pytest.approx(0.5)
    assert table.loc["B", "copies"] == 1 and table.loc["B", "copied_z"] == [3]
    assert table.index[0] == "A"  # most copies first
    fig = patient_figure(matches.rename(columns={"subject": "match_subject", "z": "match_z", "similarity": "r"}), 0.9)
    assert len(fig.data) == 1 and sorted(fig.data[0].x.tolist()) == [2, 3]
    # nothing above the threshold: every subject listed with zero copies
    none = patient_table(values, indices, m, 0.999)
    assert none["copies"].sum() == 0 and len(none) == 2


def test_best_match_intervals_hold_their_figure_when_many_training_images_are_matched():
    """A share of *distinct* training images cannot be bootstrapped over synthetic images: a redraw
    with replacement keeps ~63 % of them distinct, so every redraw counts fewer and the percentile
    "interval" lay wholly below the figure (32.9 % in 25.3 %-31.2 % on a real 3D run).  Resampling
    training subjects, as for the memorized share, brackets it."""
    rng = np.random.default_rng(0)
    n_train, n_synthetic = 170, 500
    subjects = np.repeat([f"S{i}" for i in range(8)], [22, 21, 21, 21, 21, 22, 21, 21])
    match = rng.integers(0, n_train, n_synthetic)
    sims = rng.uniform(0.8, 1.0, n_synthetic)
    tau = Threshold(value=0.95, rule="dar95", quantile=0.95, similarity="pixel r", n_calibration=170, description="")
    rates = copy_rates(sims, match, tau, n_train=n_train, train_subjects=subjects,
                       train_to_synthetic_max=rng.uniform(0.8, 1.0, n_train), bootstrap=500, seed=0)
    distinct = np.unique(match[sims > 0.95]).size
    assert rates.train_best_match_fraction.value == pytest.approx(distinct / n_train)
    for interval in (rates.train_best_match_fraction, rates.subjects_best_match_fraction,
                     rates.train_memorized_fraction, rates.synthetic_copy_fraction):
        assert interval.low <= interval.value <= interval.high
    assert rates.train_best_match_fraction.low < rates.train_best_match_fraction.value
    assert rates.resampling["train_best_match_fraction"].startswith("training subjects")
