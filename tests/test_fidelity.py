"""Fidelity and diversity: each formula against the papers' definitions, controls, extractors, a run.

The references below are written from the papers' formulas as plainly as possible (loops over
images), independently of the module's vectorised code.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.evaluate.fidelity import (METRICS, FidelityResult, alpha_beta_authenticity, feature_extractor,
                                         features, fidelity, fidelity_metrics, frechet_distance,
                                         kernel_inception_distance, prdc)

# the stand-in extractors are TorchScript, which recent torch deprecates (the Inception .pt files are TorchScript)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _gaussian(rng, n, d, shift=0.0):
    return rng.normal(size=(n, d)) + shift


def _with_exact_moments(rng, n, mean, std):
    """n samples whose sample mean is exactly ``mean`` and sample covariance exactly diag(std²)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance = I
    return z * std + mean


# -- Fréchet distance ----------------------------------------------------------------------------
def test_fd_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 2.0, 1.0])
    x, y = _with_exact_moments(rng, 200, mu1, s1), _with_exact_moments(rng, 300, mu2, s2)
    # Gaussians with diagonal covariances: |mu1 - mu2|² + sum (s1 - s2)²
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    # 1-D, from samples of known distributions: (0 - 1)² + (1 - 3)² = 5
    assert frechet_distance(rng.normal(0, 1, (20000, 1)), rng.normal(1, 3, (20000, 1))) == pytest.approx(5, rel=0.03)


def _fd_reference(x, y):
    """Tr(sqrtm(S1 S2)) = Tr(sqrtm(S1^½ S2 S1^½)), the symmetric form, by eigendecompositions."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    diff = x.mean(0) - y.mean(0)
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()


@pytest.mark.parametrize("n, d", [(100, 6), (20, 32)])  # the second: singular covariances (fewer images than dims)
def test_fd_matches_a_direct_computation(n, d):
    rng = np.random.default_rng(1)
    x, y = _gaussian(rng, n, d), _gaussian(rng, n + 7, d, shift=0.3) * 1.2
    assert frechet_distance(x, y) == pytest.approx(_fd_reference(x, y), rel=1e-6, abs=1e-6)


# -- KID ---------------------------------------------------------------------------------------
def _mmd2_unbiased_loop(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(2)
    x, y = _gaussian(rng, 12, 3), _gaussian(rng, 15, 3, shift=0.5)
    # subsets as large as the smaller set hold all of it: the MMD does not depend on the order
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=100, seed=0)
    assert std == 0
    sub = np.random.default_rng(0)
    xs, ys = x[sub.choice(12, 12, replace=False)], y[sub.choice(15, 12, replace=False)]
    assert mean == pytest.approx(_mmd2_unbiased_loop(xs, ys), rel=1e-10)
    # several subsets of 6: the same draws, mean and (ddof 0) std of the loop's values
    mean, std = kernel_inception_distance(x, y, subsets=4, subset_size=6, seed=3)
    sub, values = np.random.default_rng(3), []
    for _ in range(4):
        values.append(_mmd2_unbiased_loop(x[sub.choice(12, 6, replace=False)], y[sub.choice(15, 6, replace=False)]))
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values)), rel=1e-10)


# -- precision / recall / density / coverage --------------------------------------------------------
def test_prdc_follows_naeem_et_al():
    rng = np.random.default_rng(4)
    real, fake, k = _gaussian(rng, 15, 2), _gaussian(rng, 12, 2, shift=0.7), 3
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    radius_real = [sorted(dist(r, o) for o in real)[k] for r in real]  # k-th neighbour (index 0 is itself)
    radius_fake = [sorted(dist(f, o) for o in fake)[k] for f in fake]
    inside = np.array([[dist(r, f) < radius_real[i] for f in fake] for i, r in enumerate(real)])
    expected = {
        "precision": inside.any(axis=0).mean(),
        "recall": np.mean([any(dist(r, f) < radius_fake[j] for j, f in enumerate(fake)) for r in real]),
        "density": inside.sum(axis=0).mean() / k,
        "coverage": np.mean([min(dist(r, f) for f in fake) < radius_real[i] for i, r in enumerate(real)]),
    }
    assert prdc(real, fake, nearest_k=k) == pytest.approx(expected)


# -- α-precision, β-recall, authenticity ---------------------------------------------------------
def _alpha_beta_loop(real, synthetic, n_alphas):
    """Alaa et al. 2022, image by image."""
    alphas = np.linspace(0, 1, n_alphas)
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    centre = real.mean(axis=0)
    real_radius = [dist(r, centre) for r in real]
    nearest_other_real = [min(dist(r, o) for j, o in enumerate(real) if j != i) for i, r in enumerate(real)]
    alpha_curve = [np.mean([dist(s, centre) <= np.quantile(real_radius, a) for s in synthetic]) for a in alphas]

    synthetic_centre = synthetic.mean(axis=0)
    nearest_synthetic = [min(range(len(synthetic)), key=lambda j: dist(r, synthetic[j])) for r in real]
    their_radius = [dist(synthetic[j], synthetic_centre) for j in nearest_synthetic]
    beta_curve = []
    for b in alphas:
        covered = [dist(r, synthetic[nearest_synthetic[i]]) <= nearest_other_real[i]
                   and their_radius[i] <= np.quantile(their_radius, b) for i, r in enumerate(real)]
        beta_curve.append(np.mean(covered))

    authentic = []
    for s in synthetic:
        i = min(range(len(real)), key=lambda i: dist(s, real[i]))
        authentic.append(not dist(s, real[i]) <= nearest_other_real[i])  # not closer than its own real neighbour
    step = alphas[1] - alphas[0]
    delta = lambda curve: 1 - 2 * sum(abs(c - a) for c, a in zip(curve, alphas)) * step  # noqa: E731
    return delta(alpha_curve), delta(beta_curve), np.mean(authentic), alpha_curve, beta_curve


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_alpha_beta_authenticity_follow_the_definitions(shift):
    rng = np.random.default_rng(5)
    real, synthetic = _gaussian(rng, 25, 3), _gaussian(rng, 20, 3, shift=shift) * 0.8
    synthetic[:3] = real[:3] + 1e-6  # three near-copies: not authentic
    out = alpha_beta_authenticity(real, synthetic, n_alphas=11)
    a, b, auth, a_curve, b_curve = _alpha_beta_loop(real, synthetic, 11)
    assert out["alpha_precision"] == pytest.approx(a)
    assert out["beta_recall"] == pytest.approx(b)
    assert out["authenticity"] == pytest.approx(auth)
    assert out["authenticity"] <= 17 / 20
    np.testing.assert_allclose(out["alpha_precision_curve"], a_curve)
    np.testing.assert_allclose(out["beta_recall_curve"], b_curve)


# -- controls ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(6)
    real, other_real, fresh = (_gaussian(rng, 300, 8) for _ in range(3))
    options = dict(kid_subsets=20, kid_subset_size=200, seed=0)
    return {"real": real, "baseline": fidelity_metrics(real, other_real, **options),
            "fresh": fidelity_metrics(real, fresh, **options),
            "itself": fidelity_metrics(real, real, **options),
            "shifted": fidelity_metrics(real, _gaussian(rng, 300, 8, shift=1.5), **options)}


def test_the_training_images_themselves_are_all_copies(draws):
    m = draws["itself"]
    assert m["authenticity"] == 0
    assert m["precision"] == 1 and m["recall"] == 1 and m["coverage"] == 1
    assert abs(m["fd"]) < 1e-8
    assert m["alpha_precision"] > 0.95 and m["beta_recall"] > 0.95


def test_a_fresh_draw_looks_like_another_real_draw(draws):
    base, fresh, shifted = draws["baseline"], draws["fresh"], draws["shifted"]
    assert abs(fresh["fd"] - base["fd"]) < 0.5 * base["fd"] + 0.05
    assert abs(fresh["kid_mean"] - base["kid_mean"]) < 0.02
    assert abs(fresh["authenticity"] - base["authenticity"]) < 0.1
    assert base["authenticity"] > 0.5
    for name in ("precision", "recall", "alpha_precision", "beta_recall"):
        assert abs(fresh[name] - base[name]) < 0.15, name
    # a shifted distribution is far: FD and KID clearly larger, precision drops
    assert shifted["fd"] > 10 * base["fd"] and shifted["fd"] > 10
    assert shifted["kid_mean"] > 10 * abs(base["kid_mean"])
    assert shifted["precision"] < 0.5 * base["precision"]
    assert shifted["alpha_precision"] < base["alpha_precision"] - 0.2


def test_fidelity_metrics_returns_plain_named_floats(draws):
    m = draws["fresh"]
    assert list(m) == list(METRICS)
    assert all(type(v) in (float, int) for v in m.values())
    assert (m["n_real"], m["n_synthetic"]) == (300, 300)
    json.dumps(m)


# -- too few images and bad features -------------------------------------------------------------
def test_too_few_images_or_bad_features_are_clear_errors():
    rng = np.random.default_rng(7)
    x = _gaussian(rng, 30, 4)
    with pytest.raises(WorkbenchError, match=r"prdc: needs at least 7 synthetic images .*got 6"):
        fidelity_metrics(x, x[:6], nearest_k=5)
    with pytest.raises(WorkbenchError, match=r"prdc: needs at least 12 real images .*got 11"):
        prdc(x[:11], x, nearest_k=10)
    with pytest.raises(WorkbenchError, match=r"frechet_distance: needs at least 2 synthetic images .*got 1"):
        frechet_distance(x, x[:1])
    with pytest.raises(WorkbenchError, match=r"kernel_inception_distance: needs at least 2 real images .*got 1"):
        kernel_inception_distance(x[:1], x)
    with pytest.raises(WorkbenchError, match=r"alpha_beta_authenticity: needs at least 2 real images .*got 1"):
        alpha_beta_authenticity(x[:1], x)
    with pytest.raises(WorkbenchError, match=r"real features have 4 dimensions but synthetic ones 3"):
        fidelity_metrics(x, x[:, :3])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(WorkbenchError, match=r"frechet_distance: synthetic features of 1 image\(s\) are not finite "
                                              r"\(rows \[3\]\)"):
        frechet_distance(x, bad)
    with pytest.raises(WorkbenchError, match=r"must be an array \(N, D\).*x\[:, None\]"):
        frechet_distance(x[:, 0], x[:, 0])


# -- feature extractors --------------------------------------------------------------------------
class Pooled(torch.nn.Module):
    """A stand-in for the Inception TorchScript: channel means of the 3-channel [0, 255] input, repeated to 16."""

    def forward(self, x, return_features: bool = False):
        pooled = x.mean(dim=(2, 3))
        return torch.cat([pooled, pooled, pooled, pooled, pooled, pooled], dim=1)[:, :16]


class FourD(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return x


def test_a_torchscript_extractor_gets_3_channels_in_0_255(tmp_path):
    path = tmp_path / "pooled.pt"
    torch.jit.save(torch.jit.script(Pooled()), str(path))
    rng = np.random.default_rng(8)
    one = rng.random((5, 1, 8, 8)).astype(np.float32)  # one channel: repeated
    f = features(one, path, batch_size=2, device="cpu")
    assert f.shape == (5, 16) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :3], np.repeat(one.mean(axis=(2, 3)) * 255, 3, axis=1), rtol=1e-5)
    five = rng.random((4, 5, 8, 8)).astype(np.float32)  # five channels: the first three
    np.testing.assert_allclose(features(five, path, device="cpu")[:, :3], five[:, :3].mean(axis=(2, 3)) * 255,
                               rtol=1e-5)
    ex = feature_extractor(path, device="cpu")
    features(one, ex)
    assert ex.describe() == {"name": "pooled.pt", "kind": "torchscript", "path": str(path), "dim": 16}


def test_a_file_that_is_no_feature_extractor_is_named(tmp_path):
    junk = tmp_path / "inception-2015-12-05.pt"
    junk.write_bytes(np.random.default_rng(9).bytes(2000))
    images = np.random.default_rng(9).random((6, 1, 8, 8))
    with pytest.raises(WorkbenchError, match=r"inception-2015-12-05\.pt: not a TorchScript file"):
        features(images, junk)
    four = tmp_path / "four_d.pt"
    torch.jit.save(torch.jit.script(FourD()), str(four))
    with pytest.raises(WorkbenchError, match=r"four_d\.pt: gives an output of shape \(2, 3, 8, 8\) for 2 images.*"
                                              r"wrong architecture"):
        features(images, four, device="cpu")
    with pytest.raises(WorkbenchError, match=r"nowhere\.pt: no such feature extractor"):
        features(images, tmp_path / "nowhere.pt")


def test_a_callable_is_probed_on_two_images_before_everything():
    calls = []

    def bad(x):
        calls.append(len(x))
        return x  # 4-D: not features

    with pytest.raises(WorkbenchError, match=r"bad: gives an output of shape"):
        features(np.zeros((50, 1, 4, 4)), bad, batch_size=16)
    assert calls == [2]

    def pixels(x):
        return x.reshape(len(x), -1)

    pixels.name = "pixels"
    ex = feature_extractor(pixels)
    assert features(np.ones((3, 4, 4)), ex).shape == (3, 16)
    assert ex.describe() == {"name": "pixels", "kind": "callable", "path": None, "dim": 16}


# -- the run-level figures -----------------------------------------------------------------------
CHANNELS = ["t1", "flair"]


def _smooth_images(rng, n, size=16):
    coarse = rng.random((n, len(CHANNELS), 4, 4)).astype(np.float32)
    images = np.kron(coarse, np.ones((1, 1, size // 4, size // 4), dtype=np.float32))
    return np.clip(images + 0.05 * rng.random(images.shape, dtype=np.float32), 0, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with a store (train / test), a synthetic store and an untrained copy detector."""
    from workbench.memorization.detector import DetectorConfig, Encoder, save_detector
    from workbench.runs.run import open_run, record_stage

    root = tmp_path_factory.mktemp("fidelity")
    rng = np.random.default_rng(10)
    with StoreWriter(root / "store", channels=CHANNELS, height=16, width=16) as w:
        rows = [{"subject": f"P{i // 10}", "z": i % 10, "split": "train" if i < 30 else "test"} for i in range(60)]
        w.append(_smooth_images(rng, 60), rows)
    run = root / "run"
    with StoreWriter(run / "synthetic", channels=CHANNELS, height=16, width=16, kind="synthetic") as w:
        w.append(_smooth_images(rng, 20), [{"split": "synthetic", "model": "test", "seed": i} for i in range(20)])
    record_stage(run, "01_prepare_data", {"store": str(root / "store")})
    torch.manual_seed(0)
    config = DetectorConfig.preset("tiny", image_size=16, channels=CHANNELS, widths=(8, 16), embedding_dim=16,
                                   head_dim=32, groups=4)
    save_detector(run / "detector", Encoder(config))
    store = SliceStore.open(root / "store")
    return {"run": open_run(run), "train": store.where(split="train"), "test": store.where(split="test")}


def test_fidelity_of_the_training_images_themselves_beside_the_baseline(tiny_run):
    train, test = tiny_run["train"], tiny_run["test"]
    result = fidelity(tiny_run["run"], synthetic=train, reference=train, baseline=test, kid_subsets=5,
                      progress=False, device="cpu")
    assert isinstance(result, FidelityResult)
    assert result.synthetic["authenticity"] == 0 and result.synthetic["precision"] == 1
    assert abs(result.synthetic["fd"]) < 1e-8
    assert result.baseline["n_synthetic"] == 30 and result.baseline["authenticity"] > 0
    doc = json.loads(json.dumps(result.as_dict()))
    assert set(doc) >= {"extractor", "synthetic", "baseline", "seconds", "parameters"}
    assert doc["extractor"] == {"name": "copy detector", "kind": "detector",
                                "path": str(tiny_run["run"].path / "detector"), "dim": 16}
    assert doc["parameters"]["seed"] == 0 and doc["parameters"]["images"]["baseline"] == str(test.path)
    table = result.table()
    assert list(table.columns) == ["synthetic", "held-out baseline", "better"]
    assert list(table.index) == list(METRICS) and table.loc["fd", "better"] == "lower"


def test_fidelity_reads_the_runs_synthetic_images_and_takes_a_callable(tiny_run):
    def pixels(x):
        return x.reshape(len(x), -1)[:, ::8]

    result = fidelity(tiny_run["run"], extractor=pixels, reference=tiny_run["train"], baseline=tiny_run["test"],
                      kid_subsets=3, max_images=25, progress=False)
    assert result.synthetic["n_synthetic"] == 20 and result.synthetic["n_real"] == 25
    assert result.extractor["name"] == "pixels" and result.extractor["dim"] == 64
    assert result.parameters["max_images"] == 25


def test_a_run_without_a_detector_says_how_to_make_one(tmp_path, tiny_run):
    from workbench.runs.run import open_run, record_stage

    record_stage(tmp_path, "01_prepare_data", {"store": str(tiny_run["train"].path)})
    with pytest.raises(WorkbenchError, match=r"no copy detector.*workbench\.analyze\(run, detector=\"train\"\)"):
        fidelity(open_run(tmp_path), synthetic=tiny_run["train"], reference=tiny_run["train"],
                 baseline=tiny_run["test"])
    with pytest.raises(WorkbenchError, match=r"held-out images against the training images: prdc: needs at least 7"):
        fidelity(tiny_run["run"], synthetic=tiny_run["train"], reference=tiny_run["train"],
                 baseline=tiny_run["test"].take(np.arange(4)), progress=False, device="cpu")
