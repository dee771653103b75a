"""The C_T data-copying test (Meehan et al. 2020): statistics, behaviour on known cases, input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import mannwhitneyu, norm

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.memorization.data_copying import (
    DataCopyingResult,
    _nearest_distance,
    data_copying_test,
    image_features,
    mann_whitney_z,
)

D, K = 8, 5
N_TRAIN, N_TEST, N_GEN = 2000, 1000, 1000


def _scipy_z(test, gen):
    """Z of scipy's U (generated first: pairs with generated > test), tie-corrected normal approximation."""
    test, gen = np.asarray(test, float), np.asarray(gen, float)
    n, m = len(test), len(gen)
    u = mannwhitneyu(gen, test, alternative="two-sided", method="asymptotic", use_continuity=False).statistic
    both = np.concatenate([gen, test])
    _, t = np.unique(both, return_counts=True)
    total = n + m
    sigma = math.sqrt(m * n / 12 * ((total + 1) - np.sum(t**3 - t) / (total * (total - 1))))
    return (u - m * n / 2) / sigma


@pytest.fixture(scope="module")
def mixture():
    """A Gaussian mixture in 8-D: training, held-out test, and a sampler for more draws."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (K, D))

    def draw(n, scale=1.0, seed=None):
        r = np.random.default_rng(seed)
        comp = r.integers(K, size=n)
        return centers[comp] + scale * r.normal(size=(n, D))

    train, test = draw(N_TRAIN, seed=1), draw(N_TEST, seed=2)

    def copies(n, seed):
        r = np.random.default_rng(seed)
        return train[r.choice(N_TRAIN, n, replace=False)] + 0.01 * r.normal(size=(n, D))

    return {"train": train, "test": test, "draw": draw, "copies": copies}


def _run(mx, gen, **kw):
    kw.setdefault("cells", 10)
    return data_copying_test(mx["train"], mx["test"], gen, progress=False, **kw)


# ------------------------------------------------------------------------------------------------
# the Mann-Whitney z-score
# ------------------------------------------------------------------------------------------------
def test_mann_whitney_z_matches_scipy_without_and_with_ties():
    rng = np.random.default_rng(3)
    test, gen = rng.random(37), rng.random(23) * 0.8
    assert mann_whitney_z(test, gen) == pytest.approx(_scipy_z(test, gen), abs=1e-12)
    # ties (rounded values, and ties across the two samples)
    test_t, gen_t = np.round(rng.random(40) * 5), np.round(rng.random(30) * 5 + 0.5)
    z = mann_whitney_z(test_t, gen_t)
    assert z == pytest.approx(_scipy_z(test_t, gen_t), abs=1e-12)
    # scipy's own tie-corrected two-sided p-value agrees with our z
    p = mannwhitneyu(gen_t, test_t, method="asymptotic", use_continuity=False).pvalue
    assert 2 * norm.sf(abs(z)) == pytest.approx(p, rel=1e-9)


def test_mann_whitney_z_sign_and_degenerate_cases():
    near, far = np.arange(10) * 0.1, 5 + np.arange(12) * 0.1
    assert mann_whitney_z(test_distances=far, generated_distances=near) < -3  # generated closer: copying
    assert mann_whitney_z(test_distances=near, generated_distances=far) > 3   # generated farther: underfitting
    assert math.isnan(mann_whitney_z([], [1.0, 2.0]))
    assert math.isnan(mann_whitney_z([1.0, 1.0], [1.0, 1.0, 1.0]))  # every value tied: no variance


def test_per_cell_z_agrees_with_scipy_on_the_result(mixture):
    gen = np.vstack([mixture["copies"](300, seed=5), mixture["draw"](700, seed=6)])
    res = _run(mixture, gen, cells=6, seed=1)
    used = res.cells[res.cells["used"]]
    assert len(used) == res.n_cells_used >= 2
    for row in used.itertuples():
        t = res.test_distance[res.test_cell == row.cell]
        g = res.generated_distance[res.generated_cell == row.cell]
        assert row.z_u == pytest.approx(_scipy_z(t, g), abs=1e-9)
    w = used["test_fraction"].to_numpy()
    assert res.c_t == pytest.approx(np.sum(w * used["z_u"].to_numpy()) / w.sum(), abs=1e-12)


def test_distances_are_exact_nearest_training_neighbour_in_the_cell(mixture):
    gen = mixture["draw"](400, seed=7)
    res = _run(mixture, gen, cells=5, seed=0)
    # training cells are the nearest centroids of the training points: recover them from the test run
    train_cell = np.argmin(cdist(mixture["train"], _centroids(mixture["train"], res)), axis=1)
    for c in range(res.settings["cells_formed"]):
        ref = mixture["train"][train_cell == c]
        for x, cell, dist in ((mixture["test"], res.test_cell, res.test_distance),
                              (gen, res.generated_cell, res.generated_distance)):
            sel = cell == c
            if sel.any():
                np.testing.assert_allclose(dist[sel], cdist(x[sel], ref).min(axis=1), rtol=1e-12, atol=1e-12)


def _centroids(train, res):
    """The result's k-means centroids, refitted with its recorded settings (checked against its counts)."""
    from workbench.memorization.data_copying import _kmeans

    cents, labels = _kmeans(train, res.settings["cells"], seed=res.settings["seed"],
                            max_iter=res.settings["max_iter"], progress=False)
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(cents)), res.cells["n_train"].to_numpy())
    return cents


def test_high_dimensional_nearest_distance_is_exact():
    rng = np.random.default_rng(8)
    ref = rng.random((300, 40)) + 10.0  # far from the origin: a careless |a|^2+|b|^2-2ab loses digits
    q = np.vstack([ref[:50] + 1e-6 * rng.normal(size=(50, 40)), rng.random((80, 40)) + 10.0])
    got = _nearest_distance(q, ref)
    want = np.sqrt(((q[:, None, :] - ref[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13)
    assert got[:50].max() < 1e-4


# ------------------------------------------------------------------------------------------------
# C_T on known cases
# ------------------------------------------------------------------------------------------------
def test_copies_give_strongly_negative_c_t(mixture):
    res = _run(mixture, mixture["copies"](N_GEN, seed=11))
    assert isinstance(res, DataCopyingResult)
    assert res.c_t < -3
    assert "evidence of data copying" in res.interpretation and "no evidence" not in res.interpretation
    assert res.cells.loc[res.cells["used"], "copying"].all()


def test_fresh_draws_give_small_c_t(mixture):
    res = _run(mixture, mixture["draw"](N_GEN, seed=12))
    assert abs(res.c_t) < 2
    assert "no evidence of data copying" in res.interpretation


def test_inflated_variance_gives_positive_c_t(mixture):
    res = _run(mixture, mixture["draw"](N_GEN, scale=1.6, seed=13))
    assert res.c_t > 3
    assert "underfits" in res.interpretation
    assert not res.cells["copying"].any()


def test_partial_copier_lies_between_the_extremes(mixture):
    copies = mixture["copies"](N_GEN, seed=14)
    fresh = mixture["draw"](N_GEN, seed=15)
    half = np.vstack([copies[: N_GEN // 2], fresh[N_GEN // 2:]])
    c_copy, c_half, c_fresh = (_run(mixture, g, seed=0).c_t for g in (copies, half, fresh))
    assert c_copy < c_half < c_fresh
    assert c_half < -3  # half of the samples copied is still clearly detected


def test_table_counts_settings_and_determinism(mixture):
    gen = mixture["draw"](N_GEN, seed=16)
    a = _run(mixture, gen, cells=8, seed=3)
    b = _run(mixture, gen, cells=8, seed=3)
    t = a.cells
    assert len(t) == a.settings["cells_formed"] == 8
    assert t["n_train"].sum() == N_TRAIN and t["n_test"].sum() == N_TEST and t["n_generated"].sum() == N_GEN
    assert t["test_fraction"].sum() == pytest.approx(1) and t["generated_fraction"].sum() == pytest.approx(1)
    assert a.n_cells_used == int(t["used"].sum())
    assert a.settings["seed"] == 3 and a.settings["min_generated"] == 20
    assert a.c_t == b.c_t
    assert a.cells.equals(b.cells)
    np.testing.assert_array_equal(a.generated_cell, b.generated_cell)
    s = a.summary()
    assert s["c_t"] == a.c_t and s["n_cells_used"] == a.n_cells_used and s["seed"] == 3
    # a different seed may partition differently but reads the same way
    assert abs(_run(mixture, gen, cells=8, seed=4).c_t) < 2


def test_cells_with_too_few_generated_samples_are_skipped(mixture):
    # all generated samples in one mixture component: most cells get none
    rng = np.random.default_rng(17)
    center = mixture["train"][0]
    gen = center + rng.normal(size=(200, D)) * 0.5
    res = _run(mixture, gen, cells=10, tau=0.2)  # a cell needs >= 40 generated samples
    assert res.settings["min_generated"] == 40
    skipped = res.cells[~res.cells["used"]]
    assert len(skipped) >= 1
    assert (skipped["n_generated"] < 40).all()
    assert skipped["skipped"].str.contains("fewer than 40 generated").all()
    assert skipped["z_u"].isna().all()
    assert (res.cells.loc[res.cells["used"], "n_generated"] >= 40).all()


# ------------------------------------------------------------------------------------------------
# image features
# ------------------------------------------------------------------------------------------------
def test_image_features_block_average():
    img = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    f = image_features(img, size=2)
    assert f.shape == (1, 4) and f.dtype == np.float32
    np.testing.assert_allclose(f[0], [np.mean([0, 1, 4, 5]), np.mean([2, 3, 6, 7]),
                                      np.mean([8, 9, 12, 13]), np.mean([10, 11, 14, 15])])
    # channel-major layout, (N, H, W) accepted as one channel, size=None keeps everything
    two = np.stack([np.zeros((4, 4)), np.ones((4, 4))])[None].astype(np.float32)
    np.testing.assert_allclose(image_features(two, size=2)[0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(image_features(img[:, 0], size=2), f)
    np.testing.assert_allclose(image_features(img, size=None)[0], np.arange(16))


def test_image_features_non_divisible_size_is_area_weighted():
    rng = np.random.default_rng(18)
    imgs = rng.random((3, 2, 6, 6)).astype(np.float32)
    f = image_features(imgs, size=4)
    assert f.shape == (3, 2 * 16)
    # area averaging keeps each channel's mean, and a constant image stays constant
    np.testing.assert_allclose(f.reshape(3, 2, 16).mean(-1), imgs.mean((2, 3)), rtol=1e-5)
    np.testing.assert_allclose(image_features(np.full((1, 1, 6, 6), 0.3, np.float32), size=4), 0.3, rtol=1e-6)
    # output pixel (0, 0) covers input rows/cols [0, 1.5): weights 1 and 0.5
    w = np.array([1.0, 0.5]) / 1.5
    want = w @ imgs[0, 0, :2, :2] @ w
    assert f[0, 0] == pytest.approx(want, rel=1e-5)


def test_image_features_from_a_slice_store(tmp_path):
    rng = np.random.default_rng(19)
    imgs = rng.random((5, 2, 8, 8)).astype(np.float32)
    with StoreWriter(tmp_path / "s", channels=["a", "b"], height=8, width=8) as w:
        w.append(imgs, [{"subject": f"s{i}", "z": i, "split": "train"} for i in range(5)])
    store = SliceStore.open(tmp_path / "s")
    np.testing.assert_allclose(image_features(store, size=4, block_size=2), image_features(imgs, size=4))


def test_images_to_c_t_end_to_end():
    rng = np.random.default_rng(20)
    train = rng.random((300, 1, 16, 16)).astype(np.float32)
    test = rng.random((200, 1, 16, 16)).astype(np.float32)
    copies = np.clip(train[:200] + 0.005 * rng.normal(size=(200, 1, 16, 16)), 0, 1).astype(np.float32)
    feats = [image_features(x, size=8) for x in (train, test, copies)]
    assert feats[0].shape == (300, 64)  # > 16 dimensions: the brute-force path
    res = data_copying_test(*feats, cells=4, seed=0, progress=False)
    assert res.c_t < -3


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(mixture):
    tr, te = mixture["train"], mixture["test"]
    gen = mixture["draw"](200, seed=21)
    with pytest.raises(WorkbenchError, match="feature dimensions differ.*generated_features has 7"):
        data_copying_test(tr, te, gen[:, :7], progress=False)
    with pytest.raises(WorkbenchError, match="cells must be an integer >= 2"):
        data_copying_test(tr, te, gen, cells=1, progress=False)
    with pytest.raises(WorkbenchError, match="only 5 test samples for 10 cells"):
        data_copying_test(tr, te[:5], gen, cells=10, progress=False)
    with pytest.raises(WorkbenchError, match="only 8 generated samples for 10 cells"):
        data_copying_test(tr, te, gen[:8], cells=10, progress=False)
    with pytest.raises(WorkbenchError, match="only 15 generated samples, but a cell needs 20"):
        data_copying_test(tr, te, gen[:15], cells=3, progress=False)
    bad = gen.copy()
    bad[4, 2] = np.nan
    with pytest.raises(WorkbenchError, match=r"generated_features: 1 rows contain NaN or infinite values \(rows 4\)"):
        data_copying_test(tr, te, bad, progress=False)
    with pytest.raises(WorkbenchError, match="image_features"):
        data_copying_test(tr, te, np.zeros((20, 1, 4, 4)), progress=False)
    with pytest.raises(WorkbenchError, match="tau must be a fraction"):
        data_copying_test(tr, te, gen, tau=1.5, progress=False)
    with pytest.raises(WorkbenchError, match="no cell has at least 150 generated samples"):
        data_copying_test(tr, te, gen, cells=10, tau=0.75, progress=False)
    with pytest.raises(WorkbenchError, match="larger than the images"):
        image_features(np.zeros((2, 1, 8, 8)), size=16)
    with pytest.raises(WorkbenchError, match=r"expected an array \(N, C, H, W\)"):
        image_features(np.zeros((8, 8)))
    with pytest.raises(WorkbenchError, match="non-finite"):
        image_features(np.full((1, 1, 4, 4), np.inf), size=2)
