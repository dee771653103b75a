"""Dar et al.'s definitions, exactly: τ, "synthetic images that are copies", "training images memorized".

Each test re-computes Dar et al.'s figures the way their notebook does (GitHub
Cardio-AI/memorization-ldm, ``memorization_assessement3D.ipynb``): full matrices of correlation
distances ``1 - r`` (scipy ``cdist(..., "correlation")``), ``Thr = np.percentile(d_min, 5)`` over each
training image's distance to its nearest validation image, and counts of nearest distances
``< Thr`` -- for synthetic images (nearest training image) and for training images (nearest
synthetic image).  Our calibration, copy rates and analysis must give the same numbers.

The planted data are stacks of neighbouring slices: within a subject, slice z and z+d differ by a
rotation by d * 0.25 rad in a plane of two subject-specific fields, so neighbours are nearly
identical and the similarity falls off with |d|.  One synthetic image copies one slice; Dar's
"memorized" count then takes in its neighbouring slices too, the best-match count only that one.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from workbench.data.store import SliceStore, StoreWriter
from workbench.memorization.analysis import PIXEL, run_analysis
from workbench.memorization.calibration import copy_rates, dar_threshold
from workbench.memorization.detector import embedding_topk
from workbench.search import topk_correlation

SIZE = 16
SLICES = 12
COPIED = ((0, 5), (3, 8))  # (training subject, slice) copied by a synthetic image


def _field(rng) -> np.ndarray:
    """A smooth random field, zero mean and unit variance."""
    x = rng.standard_normal((SIZE + 4, SIZE + 4))
    k = np.ones(5) / 5
    x = np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 0, x)
    x = np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 1, x)
    return (x - x.mean()) / x.std()


def _volume(rng, template, *, w_template=np.sqrt(0.5), w_subject=np.sqrt(0.5)) -> np.ndarray:
    a, b = _field(rng), _field(rng)
    z = np.arange(SLICES)[:, None, None] * 0.25
    vol = w_template * template + w_subject * (np.cos(z) * a + np.sin(z) * b)
    vol = vol + 0.02 * rng.standard_normal(vol.shape)
    return vol


def _to_unit(x: np.ndarray) -> np.ndarray:
    """Into [0, 1] by one affine map for all images (Pearson r is unchanged)."""
    return ((x + 6) / 12).clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(7)
    template = _field(rng)
    train = np.concatenate([_volume(rng, template) for _ in range(6)])
    train_subjects = np.repeat([f"T{i}" for i in range(6)], SLICES)
    test = np.concatenate([_volume(rng, template) for _ in range(6)])
    test_subjects = np.repeat([f"V{i}" for i in range(6)], SLICES)
    # novel synthetic images: less of the template, so they stay below τ (checked below, not assumed)
    novel = np.concatenate([_volume(rng, template, w_template=0.5, w_subject=1.0)[::4] for _ in range(10)])
    copies = np.stack([train[s * SLICES + z] + 0.01 * rng.standard_normal((SIZE, SIZE)) for s, z in COPIED])
    synthetic = np.concatenate([copies, novel])
    train, test, synthetic = (_to_unit(x)[:, None] for x in (train, test, synthetic))
    return {"train": train, "test": test, "synthetic": synthetic, "train_subjects": train_subjects,
            "test_subjects": test_subjects}


def dar_reference(train_x, val_x, syn_x, train_subjects):
    """Dar et al.'s notebook, re-written: full correlation-distance matrices, their threshold and counts."""
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)  # noqa: E731
    train_x, val_x, syn_x = flat(train_x), flat(val_x), flat(syn_x)
    real_val = np.sort(cdist(train_x, val_x, "correlation"), axis=-1)  # rows: training images
    thr = np.percentile(real_val[:, 0], 5)  # numpy default (linear) interpolation
    real_syn = cdist(train_x, syn_x, "correlation")
    syn_real = cdist(syn_x, train_x, "correlation")
    train_memorized = np.sort(real_syn, axis=-1)[:, 0] < thr  # "training samples that are copies"
    synthetic_copy = np.sort(syn_real, axis=-1)[:, 0] < thr  # "synthetic samples that are copies"
    best_match_rows = np.unique(np.argmin(syn_real, axis=-1)[synthetic_copy])
    subjects = np.unique(train_subjects)
    memorized_subjects = np.unique(train_subjects[train_memorized])
    return {
        "tau": 1 - thr,
        "train_memorized": int(train_memorized.sum()),
        "train_memorized_percent": train_memorized.sum() / len(train_x) * 100,
        "memorized_rows": np.flatnonzero(train_memorized).tolist(),
        "synthetic_copies": int(synthetic_copy.sum()),
        "synthetic_copy_percent": synthetic_copy.sum() / len(syn_x) * 100,
        "subjects_memorized": len(memorized_subjects),
        "subjects_memorized_fraction": len(memorized_subjects) / len(subjects),
        "best_match_rows": best_match_rows.tolist(),
        "subjects_best_match": len(np.unique(train_subjects[best_match_rows])),
    }


def _check_against_reference(rates, tau, ref, n_subjects):
    assert tau.value == pytest.approx(ref["tau"], abs=1e-12)
    assert rates.synthetic_copies == ref["synthetic_copies"]
    assert rates.synthetic_copy_fraction.value * 100 == pytest.approx(ref["synthetic_copy_percent"])
    assert rates.train_memorized == ref["train_memorized"]
    assert rates.memorized_train_rows == ref["memorized_rows"]
    assert rates.train_memorized_fraction.value * 100 == pytest.approx(ref["train_memorized_percent"])
    assert rates.subjects_memorized == ref["subjects_memorized"]
    assert rates.subjects_memorized_fraction.value == pytest.approx(ref["subjects_memorized_fraction"])
    assert rates.best_match_train_rows == ref["best_match_rows"]
    assert rates.train_best_match_copied == len(ref["best_match_rows"])
    assert rates.subjects_best_match_copied == ref["subjects_best_match"]
    assert rates.n_subjects == n_subjects


def test_planted_stack_reference_behaves_as_the_definitions_say(planted):
    """The planted data do what the test needs: the reference itself separates the two counts."""
    ref = dar_reference(planted["train"], planted["test"], planted["synthetic"], planted["train_subjects"])
    copied_rows = sorted(s * SLICES + z for s, z in COPIED)
    assert ref["synthetic_copies"] == len(COPIED)  # only the two copies; novel images stay below τ
    assert ref["best_match_rows"] == copied_rows  # best match: one slice per copy
    assert ref["subjects_best_match"] == ref["subjects_memorized"] == 2
    # Dar's count takes in the neighbouring slices of each copied slice
    for s, z in COPIED:
        assert {s * SLICES + z + d for d in (-2, -1, 0, 1, 2)} <= set(ref["memorized_rows"])
    assert ref["train_memorized"] >= 5 * len(COPIED) > len(copied_rows)


def test_threshold_and_rates_equal_dar_et_al_from_full_matrices(planted):
    train, test, synthetic = planted["train"], planted["test"], planted["synthetic"]
    subjects = planted["train_subjects"]
    ref = dar_reference(train, test, synthetic, subjects)
    # our pipeline: nearest neighbours by the exact top-k search, then calibration and rates
    train_to_test = np.asarray(topk_correlation(train, test, k=1, progress=False).values)[:, 0]
    s = topk_correlation(synthetic, train, k=1, progress=False)
    train_to_synthetic = np.asarray(topk_correlation(train, synthetic, k=1, progress=False).values)[:, 0]
    tau = dar_threshold(train_to_test, similarity="pixel r")
    rates = copy_rates(np.asarray(s.values)[:, 0], np.asarray(s.indices)[:, 0], tau, n_train=len(train),
                       train_subjects=subjects, train_to_synthetic_max=train_to_synthetic, bootstrap=200, seed=3)
    _check_against_reference(rates, tau, ref, n_subjects=6)
    assert rates.train_best_match_copied < rates.train_memorized  # the stack: one slice against several
    # intervals: percentile bootstraps that contain the point estimate
    for interval in (rates.synthetic_copy_fraction, rates.train_memorized_fraction, rates.subjects_memorized_fraction,
                     rates.train_best_match_fraction, rates.subjects_best_match_fraction):
        assert 0 <= interval.low <= interval.value <= interval.high <= 1
    assert rates.train_memorized_fraction.low < rates.train_memorized_fraction.high
    assert set(rates.resampling) == {"synthetic_copy_fraction", "train_best_match_fraction",
                                     "subjects_best_match_fraction", "train_memorized_fraction",
                                     "subjects_memorized_fraction"}


def test_the_analysis_reports_dar_et_al_and_the_best_match_counts(planted, tmp_path):
    stores = {}
    for name, images, rows in (
            ("train", planted["train"],
             [{"subject": s, "z": i % SLICES, "split": "train"} for i, s in enumerate(planted["train_subjects"])]),
            ("test", planted["test"],
             [{"subject": s, "z": i % SLICES, "split": "test"} for i, s in enumerate(planted["test_subjects"])]),
            ("synthetic", planted["synthetic"],
             [{"split": "synthetic", "model": "planted", "seed": i} for i in range(len(planted["synthetic"]))])):
        with StoreWriter(tmp_path / name, channels=["t1"], height=SIZE, width=SIZE,
                         kind="synthetic" if name == "synthetic" else "real") as w:
            w.append(images, rows)
        stores[name] = SliceStore.open(tmp_path / name)
    analysis = run_analysis(stores["synthetic"], stores["train"], stores["test"], k=2, bootstrap=50, per_channel=False,
                            data_copying_cells=None, progress=False)
    ref = dar_reference(planted["train"], planted["test"], planted["synthetic"], planted["train_subjects"])
    rates = analysis.rates[(PIXEL, "dar95")]
    _check_against_reference(rates, analysis.thresholds[(PIXEL, "dar95")], ref, n_subjects=6)
    block = analysis.summary()[PIXEL]["dar95"]
    assert block["train_memorized"] == ref["train_memorized"]
    assert block["train_memorized_fraction"]["value"] * 100 == pytest.approx(ref["train_memorized_percent"])
    assert block["train_best_match_copied"] == len(ref["best_match_rows"])
    assert block["subjects_memorized_fraction"]["value"] == pytest.approx(ref["subjects_memorized_fraction"])
    assert "memorized_train_rows" not in block and "best_match_train_rows" not in block
    table = analysis.rates_table()
    row = table[(table["similarity"] == PIXEL) & (table["rule"] == "dar95")].iloc[0]
    assert row["training images memorized (Dar)"] == str(rates.train_memorized_fraction)
    assert row["training images that are a copy's best match"] == str(rates.train_best_match_fraction)
    record = analysis.record()
    assert record["pixel_train_memorized_fraction"] == pytest.approx(ref["train_memorized_percent"] / 100)
    assert record["pixel_train_best_match_fraction"] == pytest.approx(len(ref["best_match_rows"]) / len(planted["train"]))


def test_correlation_of_embeddings_is_pearson_r_as_np_corrcoef():
    rng = np.random.default_rng(1)
    # embeddings with a non-zero mean over their components: correlation and cosine differ
    q = rng.normal(0.5, 1.0, (7, 32))
    ref = rng.normal(0.5, 1.0, (40, 32)) + rng.normal(0, 1, (40, 1))
    full = np.corrcoef(np.vstack([q, ref]))[:len(q), len(q):]
    values, indices = embedding_topk(q, ref, k=3, metric="correlation")
    order = np.argsort(-full, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(values, np.take_along_axis(full, order, axis=1), atol=1e-12)
    np.testing.assert_allclose(values, 1 - np.take_along_axis(cdist(q, ref, "correlation"), order, axis=1), atol=1e-12)
    cosine, _ = embedding_topk(q, ref, k=3)  # the default is still the cosine
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(cosine, np.sort(unit(q) @ unit(ref).T, axis=1)[:, ::-1][:, :3], atol=1e-12)
    assert not np.allclose(cosine, values, atol=1e-3)
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="metric must be one of"):
        embedding_topk(q, ref, metric="euclidean")
    with pytest.raises(WorkbenchError, match=r"embedding\(s\) \[2\] have all components equal"):
        embedding_topk(q, np.vstack([ref[:2], np.full((1, 32), 0.3)]), metric="correlation")


def test_dar_et_al_on_embeddings_compared_by_correlation():
    """Their whole recipe on embedding vectors: cdist correlation, 5th percentile, counts below it."""
    rng = np.random.default_rng(2)
    centres = rng.normal(0.3, 1.0, (30, 16))
    train = centres + 0.6 * rng.normal(size=(30, 16))
    val = rng.normal(0.3, 1.0, (25, 16))
    syn = np.vstack([train[[3, 4, 9]] + 0.05 * rng.normal(size=(3, 16)), rng.normal(0.3, 1.0, (20, 16))])
    thr = np.percentile(np.sort(cdist(train, val, "correlation"), axis=-1)[:, 0], 5)
    train_memorized = np.sort(cdist(train, syn, "correlation"), axis=-1)[:, 0] < thr
    syn_copies = np.sort(cdist(syn, train, "correlation"), axis=-1)[:, 0] < thr
    tau = dar_threshold(embedding_topk(train, val, metric="correlation")[0][:, 0], similarity="embedding correlation")
    sv, si = embedding_topk(syn, train, metric="correlation")
    tsv, _ = embedding_topk(train, syn, metric="correlation")
    rates = copy_rates(sv[:, 0], si[:, 0], tau, n_train=len(train), train_to_synthetic_max=tsv[:, 0], bootstrap=0)
    assert tau.value == pytest.approx(1 - thr, abs=1e-12)
    assert rates.synthetic_copies == int(syn_copies.sum()) >= 3
    assert rates.memorized_train_rows == np.flatnonzero(train_memorized).tolist()
    assert rates.train_memorized_fraction.value == pytest.approx(train_memorized.mean())
