"""Fidelity and diversity of synthetic images, on features of an encoder trained on your own data.

How close are the synthetic images to the real ones as a distribution (fidelity), how much of the
real variety do they cover (diversity), and are they new (authenticity)?  Every figure here is
computed on feature vectors, one row per image, and every run-level figure comes with its
baseline: the held-out real images against the training images, computed the same way
(:func:`fidelity`).

The metrics (pure functions on ``(N, D)`` arrays):

* :func:`frechet_distance` -- the Fréchet distance between Gaussians fitted to the two sets
  (FID's formula, Heusel et al. 2017), computed as pytorch-fid does;
* :func:`kernel_inception_distance` -- the unbiased MMD² with the cubic polynomial kernel
  (KID, Bińkowski et al. 2018), mean and std over random subsets as torch-fidelity reports it;
* :func:`prdc` -- precision, recall, density and coverage (Naeem et al. 2020), computed by the
  authors' own ``prdc`` package (``compute_prdc``), which this module only calls;
* :func:`alpha_beta_authenticity` -- α-precision, β-recall and authenticity (Alaa et al. 2022,
  "How faithful is your synthetic data?");
* :func:`fidelity_metrics` -- all of them at once, as plain floats.

The features.  FID and KID are usually computed on ImageNet InceptionV3 features.  Here the
default encoder is the run's own copy detector (trained on the run's training split, no download;
:mod:`workbench.memorization.detector`), so the figures are comparable between runs that share a
detector and always beside their real-vs-real baseline, *not* to published FIDs.  A TorchScript
file (e.g. ``inception-2015-12-05.pt``, the InceptionV3 that StyleGAN2-ADA and clean-fid use,
if you have it) or any Python callable can be given instead (:func:`feature_extractor`).

Why not torch-fidelity: it needs torchvision, for which no CPU build is installable here, and its
InceptionV3 needs weights downloaded at first use; the workbench downloads nothing.  The formulas
are short and written out below (KID and FD as torch-fidelity / pytorch-fid compute them);
precision / recall / density / coverage come from ``prdc``.

>>> rng = np.random.default_rng(0)
>>> real, fresh = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
>>> m = fidelity_metrics(real, fresh, kid_subsets=10)
>>> m["fd"] < 1 and m["precision"] > 0.8 and m["authenticity"] > 0.5
True
>>> fidelity_metrics(real, real)["authenticity"]            # the training images themselves: all copies
0.0
"""
from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..data import layout
from ..data.store import SliceStore
from ..errors import WorkbenchError, check_int

__all__ = ["FeatureExtractor", "FidelityResult", "METRICS", "alpha_beta_authenticity", "feature_extractor",
           "features", "fidelity", "fidelity_metrics", "frechet_distance", "kernel_inception_distance", "prdc"]

#: every figure :func:`fidelity_metrics` returns, with which direction is better
METRICS: dict[str, str] = {
    "fd": "lower",
    "kid_mean": "lower",
    "kid_std": "(spread over KID subsets)",
    "precision": "higher",
    "recall": "higher",
    "density": "higher (about 1 for real images)",
    "coverage": "higher",
    "alpha_precision": "higher",
    "beta_recall": "higher",
    "authenticity": "higher (far below the baseline: copies)",
    "n_real": "(images)",
    "n_synthetic": "(images)",
}


# -- input checks --------------------------------------------------------------------------------
def _as_features(x, metric: str, which: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        pass
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        hint = " (for one-dimensional features use x[:, None])" if x.ndim == 1 else ""
        raise WorkbenchError(f"{metric}: {which} features must be an array (N, D), one row per image; "
                             f"got shape {x.shape}{hint}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise WorkbenchError(f"{metric}: {which} features of {int(bad.sum())} image(s) are not finite "
                             f"(rows {np.flatnonzero(bad)[:10].tolist()}); check the feature extractor")
    return x


def _pair(real, synthetic, metric: str, *, need_real: int, need_synthetic: int, why: str):
    """Both feature sets as float64 (N, D), of the same D and at least the sizes ``metric`` needs."""
    real = _as_features(real, metric, "real")
    synthetic = _as_features(synthetic, metric, "synthetic")
    if real.shape[1] != synthetic.shape[1]:
        raise WorkbenchError(f"{metric}: real features have {real.shape[1]} dimensions but synthetic ones "
                             f"{synthetic.shape[1]}; extract both with the same encoder")
    for name, x, need in (("real", real, need_real), ("synthetic", synthetic, need_synthetic)):
        if len(x) < need:
            raise WorkbenchError(f"{metric}: needs at least {need} {name} images ({why}), got {len(x)}")
    return real, synthetic


# -- the metrics ---------------------------------------------------------------------------------
def frechet_distance(real, synthetic, *, eps: float = 1e-6) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    ``||mu_r - mu_s||² + Tr(S_r + S_s - 2 sqrtm(S_r S_s))`` with the sample means and (N - 1)
    covariances.  As pytorch-fid (``calculate_frechet_distance``) does: the matrix square root is
    ``scipy.linalg.sqrtm``; if it is not finite (singular covariances, e.g. fewer images than
    dimensions) it is taken again with ``eps`` added to both diagonals; a complex result whose
    diagonal's imaginary parts are below 1e-3 (rounding) keeps its real part.  Needs at least 2
    images in each set; comparable only between figures computed with the same encoder.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(5000, 1))
    >>> round(frechet_distance(x, 2 * x + 1), 1)     # (0 - 1)² + (1 - 2)²
    2.0
    """
    from scipy import linalg

    real, synthetic = _pair(real, synthetic, "frechet_distance", need_real=2, need_synthetic=2,
                            why="a covariance needs two")
    mu1, mu2 = real.mean(axis=0), synthetic.mean(axis=0)
    s1 = np.atleast_2d(np.cov(real, rowvar=False))
    s2 = np.atleast_2d(np.cov(synthetic, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about singular matrices; handled below
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise WorkbenchError(f"frechet_distance: the covariances' matrix square root has an imaginary part of "
                                 f"{imaginary:.3g} (numerically unstable; with {len(real)} and {len(synthetic)} "
                                 f"images of {real.shape[1]} dimensions): use more images or fewer dimensions")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_inception_distance(real, synthetic, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD² between the two sets with the kernel ``k(x, y) = (x·y / D + 1)³``.

    As Bińkowski et al. (2018) define it and torch-fidelity computes it: ``subsets`` times, draw
    ``m`` real and ``m`` synthetic rows without replacement and take
    ``sum_{i≠j} k(x_i, x_j) / (m(m-1)) + sum_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m²``.
    ``m`` is ``subset_size``, capped at the smaller set.  Returns ``(mean, std)`` over the
    subsets (std with ddof 0, as torch-fidelity).  Unbiased, so it can be slightly negative when
    the two sets come from one distribution, and clearly negative for a set against itself (the
    cross term then pairs images with themselves).  Needs at least 2 images in each set.

    >>> rng = np.random.default_rng(0)
    >>> mean, std = kernel_inception_distance(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), subsets=20)
    >>> abs(mean) < 0.05
    True
    """
    subsets = check_int("kernel_inception_distance: subsets", subsets, low=1)
    subset_size = check_int("kernel_inception_distance: subset_size", subset_size, low=2)
    real, synthetic = _pair(real, synthetic, "kernel_inception_distance", need_real=2, need_synthetic=2,
                            why="the unbiased MMD² leaves out each image's kernel with itself")
    m = min(subset_size, len(real), len(synthetic))
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = synthetic[rng.choice(len(synthetic), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2 * kxy.sum() / (m * m))
    return float(values.mean()), float(values.std())


def prdc(real, synthetic, *, nearest_k: int = 5) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020), by the authors' ``prdc`` package.

    Each real image gets a ball reaching its ``nearest_k``-th nearest real neighbour (and each
    synthetic image one reaching its ``nearest_k``-th nearest synthetic neighbour).  Precision:
    the fraction of synthetic images inside some real ball; recall: the fraction of real images
    inside some synthetic ball; density: how many real balls a synthetic image is in, on average,
    divided by ``nearest_k`` (about 1 when both sets come from one distribution; above 1 when the
    synthetic images crowd where the real ones are dense); coverage: the fraction of real balls
    holding at least one synthetic image.  The arithmetic is ``prdc.compute_prdc``'s (its printout is
    silenced).  Needs ``nearest_k + 2`` images in each set: the image, its ``nearest_k``
    neighbours, and one more for the package's partial sort.

    >>> rng = np.random.default_rng(0)
    >>> prdc(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 5)["precision"]
    0.0
    """
    from prdc import compute_prdc

    nearest_k = check_int("prdc: nearest_k", nearest_k, low=1)
    real, synthetic = _pair(real, synthetic, "prdc", need_real=nearest_k + 2, need_synthetic=nearest_k + 2,
                            why=f"nearest_k + 2 for nearest_k={nearest_k}")
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        out = compute_prdc(real, synthetic, nearest_k)
    return {name: float(out[name]) for name in ("precision", "recall", "density", "coverage")}


def alpha_beta_authenticity(real, synthetic, *, n_alphas: int = 30) -> dict:
    """α-precision, β-recall and authenticity of Alaa et al. (2022), "How faithful is your synthetic data?".

    The features are used as given (the paper first trains a one-class embedding; here the
    encoder already is one trained on the real data).  With the centre ``c`` = the mean of the
    real features and ``r_α`` = the α-quantile of the real images' distances to ``c`` (the ball
    holding a fraction α of the real images, their "α-support"):

    * α-precision curve: the fraction of synthetic images within ``r_α`` of ``c``, for α on a grid
      of ``n_alphas`` points in [0, 1];
    * β-recall curve: the fraction of real images whose nearest synthetic image is no farther
      than the real image's own nearest other real image, *and* lies in the β-support of the
      synthetic images (within the β-quantile of those nearest synthetic images' distances to the
      mean of the synthetic features);
    * ``alpha_precision`` and ``beta_recall`` are the integrated Δ-figures,
      ``1 - 2 × (area between the curve and the diagonal)``: 1 when the curves follow the
      diagonal (synthetic images as typical as real ones), lower otherwise;
    * ``authenticity``: the fraction of synthetic images that are *not* closer to their nearest
      real image than that real image is to its own nearest other real image.  A copy of a
      training image has distance 0 and is not authentic, so the training images against
      themselves give 0.

    Followed: the authors' reference code (``compute_alpha_precision`` in
    ahmedmalaa/evaluating-generative-models, ``metrics/evaluation.py``, for the curves and
    authenticity; synthcity's ``AlphaPrecision.metrics`` in ``eval_statistical.py`` for the
    Δ-figures, ``1 - 2 × sum|curve - α| × Δα`` on ``np.linspace(0, 1, n_alphas)``, so the values are
    comparable with synthcity's).  Authenticity follows the reference code, which indexes the
    real nearest-neighbour distances by each synthetic image's nearest real image, as the
    paper defines it.  Needs 2 real images (a nearest other real image) and 1 synthetic image.

    Returns a dict: ``alpha_precision``, ``beta_recall``, ``authenticity`` (floats) and the
    curves ``alphas``, ``alpha_precision_curve``, ``beta_recall_curve`` (arrays).

    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(500, 4))
    >>> out = alpha_beta_authenticity(real, real)
    >>> round(out["alpha_precision"], 2), round(out["beta_recall"], 2), out["authenticity"]
    (1.0, 1.0, 0.0)
    """
    from sklearn.neighbors import NearestNeighbors

    n_alphas = check_int("alpha_beta_authenticity: n_alphas", n_alphas, low=2)
    real, synthetic = _pair(real, synthetic, "alpha_beta_authenticity", need_real=2, need_synthetic=1,
                            why="each real image needs a nearest other real image")
    alphas = np.linspace(0, 1, n_alphas)

    # α-precision: synthetic images inside the real α-support
    centre = real.mean(axis=0)
    radii = np.quantile(np.linalg.norm(real - centre, axis=1), alphas)
    synthetic_to_centre = np.linalg.norm(synthetic - centre, axis=1)
    alpha_curve = (synthetic_to_centre[None, :] <= radii[:, None]).mean(axis=1)

    # β-recall: real images whose nearest synthetic image is as near as their nearest real neighbour
    # and lies in the synthetic β-support
    real_nn = NearestNeighbors(n_neighbors=1).fit(real)
    real_to_real = real_nn.kneighbors()[0][:, 0]  # without X: each point's nearest *other* point
    real_to_synthetic, nearest_synthetic = NearestNeighbors(n_neighbors=1).fit(synthetic).kneighbors(real)
    real_to_synthetic, nearest_synthetic = real_to_synthetic[:, 0], nearest_synthetic[:, 0]
    closest_to_synthetic_centre = np.linalg.norm(synthetic[nearest_synthetic] - synthetic.mean(axis=0), axis=1)
    beta_radii = np.quantile(closest_to_synthetic_centre, alphas)
    near = real_to_synthetic <= real_to_real
    beta_curve = (near[None, :] & (closest_to_synthetic_centre[None, :] <= beta_radii[:, None])).mean(axis=1)

    # authenticity: a synthetic image nearer its nearest real image than that image's own nearest real neighbour
    synthetic_to_real, nearest_real = real_nn.kneighbors(synthetic)
    authentic = real_to_real[nearest_real[:, 0]] < synthetic_to_real[:, 0]

    step = alphas[1] - alphas[0]
    return {
        "alpha_precision": float(1 - 2 * np.abs(alpha_curve - alphas).sum() * step),
        "beta_recall": float(1 - 2 * np.abs(beta_curve - alphas).sum() * step),
        "authenticity": float(authentic.mean()),
        "alphas": alphas,
        "alpha_precision_curve": alpha_curve,
        "beta_recall_curve": beta_curve,
    }


def fidelity_metrics(real, synthetic, *, nearest_k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000,
                     n_alphas: int = 30, seed: int = 0) -> dict:
    """Every figure of this module for one pair of feature sets, as plain floats (and the sizes).

    Keys: ``fd``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage``,
    ``alpha_precision``, ``beta_recall``, ``authenticity``, ``n_real``, ``n_synthetic``
    (:data:`METRICS` says which direction is better).  ``seed`` seeds the KID subsets.  Needs
    ``nearest_k + 2`` images in each set.

    >>> rng = np.random.default_rng(0)
    >>> sorted(fidelity_metrics(rng.normal(size=(50, 3)), rng.normal(size=(40, 3)), kid_subsets=5))[:3]
    ['alpha_precision', 'authenticity', 'beta_recall']
    """
    real = _as_features(real, "fidelity_metrics", "real")
    synthetic = _as_features(synthetic, "fidelity_metrics", "synthetic")
    figures = prdc(real, synthetic, nearest_k=nearest_k)  # checks sizes and dimensions first
    kid_mean, kid_std = kernel_inception_distance(real, synthetic, subsets=kid_subsets, subset_size=kid_subset_size,
                                                  seed=seed)
    abc = alpha_beta_authenticity(real, synthetic, n_alphas=n_alphas)
    out = {"fd": frechet_distance(real, synthetic), "kid_mean": kid_mean, "kid_std": kid_std, **figures,
           "alpha_precision": abc["alpha_precision"], "beta_recall": abc["beta_recall"],
           "authenticity": abc["authenticity"], "n_real": int(len(real)), "n_synthetic": int(len(synthetic))}
    return {name: out[name] for name in METRICS}


# -- feature extractors --------------------------------------------------------------------------
@dataclass
class FeatureExtractor:
    """What turns images into feature vectors, and how it is described beside the figures.

    Made by :func:`feature_extractor`; ``kind`` is ``"detector"``, ``"torchscript"`` or
    ``"callable"``; ``module`` the loaded encoder / TorchScript module / callable.
    """

    name: str
    kind: str
    module: object = field(repr=False)
    path: str | None = None
    dim: int | None = None
    #: a TorchScript module's device, and whether it takes ``return_features`` (found by the probe)
    call: dict = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        """JSON-safe: name, kind, path, feature dimension (known after the first extraction)."""
        return {"name": self.name, "kind": self.kind, "path": self.path, "dim": self.dim}


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    return line.split(". ")[0].rstrip(".")


def _load_torchscript(path: Path, device) -> FeatureExtractor:
    import torch

    try:
        with warnings.catch_warnings():  # recent torch deprecates TorchScript; Inception .pt files are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch raises RuntimeError / ValueError / zip errors for a file that is not one
        raise WorkbenchError(f"{path}: not a TorchScript file ({_first_sentence(err)}); a feature extractor "
                             f"file must be saved with torch.jit.save (torch.jit.script / trace), e.g. the "
                             f"inception-2015-12-05.pt of StyleGAN2-ADA / clean-fid; a torch.save checkpoint or "
                             f"state_dict is not one") from None
    module.eval()
    return FeatureExtractor(name=path.name, kind="torchscript", module=module, path=str(path),
                            call={"device": str(device)})


def feature_extractor(extractor="detector", *, run=None, device="auto") -> FeatureExtractor:
    """Resolve what :func:`features` and :func:`fidelity` extract features with.

    ``extractor``:

    * ``"detector"``: the run's copy detector, ``run.path / "detector"`` (trained by
      ``workbench.analyze(run, detector="train")``); its embedding (128 numbers by default);
    * a detector folder (written by ``train_detector``) or a loaded detector ``Encoder``;
    * a path to a TorchScript file: called as ``model(x, return_features=True)`` (or ``model(x)``
      if it takes no such argument) on ``x`` = float32 NCHW images with 3 channels in [0, 255]:
      the first three channels, or the first one repeated when there are fewer (pick others with
      ``store.with_channels([...])``).  That is what the InceptionV3 TorchScript of StyleGAN2-ADA
      / clean-fid (``inception-2015-12-05.pt``, 2048 features) expects; it resizes internally;
    * a Python callable ``images (N, C, H, W) float32 numpy in [0, 1] -> (N, D)`` (array or tensor);
      its ``.name`` attribute, if any, names it.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; for the detector and
    TorchScript.
    """
    from ..device import resolve_device
    from ..memorization.detector import Encoder, load_detector

    if isinstance(extractor, FeatureExtractor):
        return extractor
    if isinstance(extractor, Encoder):
        return FeatureExtractor(name="copy detector", kind="detector", module=extractor,
                                dim=int(extractor.config.embedding_dim))
    if isinstance(extractor, str) and extractor == "detector":
        if run is None:
            raise WorkbenchError("extractor='detector' is a run's copy detector: give the run (fidelity(run)) or "
                                 "the detector folder")
        folder = Path(run.path) / layout.DETECTOR
        if not folder.is_dir():
            raise WorkbenchError(f"{folder}: this run has no copy detector; train one with "
                                 f"workbench.analyze(run, detector=\"train\") (notebooks/04_memorization.ipynb), or "
                                 f"give extractor= a TorchScript file or a callable")
        extractor = folder
    if isinstance(extractor, (str, os.PathLike)):
        path = Path(extractor)
        dev = resolve_device(device)
        if path.is_dir():
            encoder, config, _ = load_detector(path, device=str(dev))
            return FeatureExtractor(name="copy detector", kind="detector", module=encoder, path=str(path),
                                    dim=int(config.embedding_dim))
        if not path.is_file():
            raise WorkbenchError(f"{path}: no such feature extractor (give 'detector', a detector folder, a "
                                 f"TorchScript file or a callable)")
        return _load_torchscript(path, dev)
    if callable(extractor):
        name = getattr(extractor, "name", None) or getattr(extractor, "__name__", None) or type(extractor).__name__
        return FeatureExtractor(name=str(name), kind="callable", module=extractor)
    raise WorkbenchError(f"extractor: expected 'detector', a detector folder, a TorchScript file or a callable, "
                         f"got {type(extractor).__name__}")


def _to_rgb255(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, 3, H, W) in [0, 255]: the first three channels, or the first repeated."""
    rgb = np.repeat(images[:, :1], 3, axis=1) if images.shape[1] < 3 else images[:, :3]
    return np.ascontiguousarray(rgb * 255.0, dtype=np.float32)


def _run_torchscript(ex: FeatureExtractor, images: np.ndarray):
    import torch

    x = torch.from_numpy(_to_rgb255(images)).to(ex.call.get("device", "cpu"))
    with torch.no_grad():
        if "return_features" not in ex.call:  # the probe: which call does the module take?
            try:
                out = ex.module(x, return_features=True)
                ex.call["return_features"] = True
                return out
            except Exception as first:  # a module without the argument raises RuntimeError: try without
                try:
                    out = ex.module(x)
                except Exception:
                    raise first from None
                ex.call["return_features"] = False
                return out
        return ex.module(x, return_features=True) if ex.call["return_features"] else ex.module(x)


def _apply(ex: FeatureExtractor, images: np.ndarray) -> np.ndarray:
    """Features of one block of images, checked to be (n, D)."""
    from ..memorization.detector import embed

    who = f"{ex.path or ex.name}"
    try:
        if ex.kind == "detector":
            out = embed(ex.module, images, batch_size=len(images))
        elif ex.kind == "torchscript":
            out = _run_torchscript(ex, images)
        else:
            out = ex.module(images)
    except WorkbenchError:
        raise
    except Exception as err:
        raise WorkbenchError(f"{who}: fails on images of shape {tuple(images.shape)} ({type(err).__name__}: "
                             f"{_first_sentence(err)}); is it a feature extractor for these images?") from None
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or len(out) != len(images):
        raise WorkbenchError(f"{who}: gives an output of shape {out.shape} for {len(images)} images; a feature "
                             f"extractor must give (N, D) features (a weights file of the wrong architecture, or "
                             f"not a feature layer?)")
    if ex.dim is not None and out.shape[1] != ex.dim:
        raise WorkbenchError(f"{who}: gave {out.shape[1]} features, earlier {ex.dim}")
    ex.dim = int(out.shape[1])
    return out


def features(store_or_images, extractor, *, batch_size: int = 64, progress: bool = False, device="auto",
             desc: str = "features") -> np.ndarray:
    """Feature vectors ``(N, D)`` float64 of a SliceStore (view, or its folder) or an image array.

    ``extractor`` is anything :func:`feature_extractor` takes (a detector folder or Encoder, a
    TorchScript file, a callable) or a :class:`FeatureExtractor`.  Images are ``(N, C, H, W)``
    (``(N, H, W)`` for one channel) in [0, 1].  The extractor is first tried on 2 images, so a
    file that is not a feature extractor fails at once with its name, before the whole store is
    read.  A detector reads a store's channels by name (reordered where the store holds them in
    another order).

    >>> f = features(np.random.rand(10, 1, 8, 8), lambda x: x.reshape(len(x), -1))
    >>> f.shape
    (10, 64)
    """
    from ..progress import tqdm

    batch_size = check_int("features: batch_size", batch_size, low=1)
    ex = feature_extractor(extractor, device=device)
    if isinstance(store_or_images, (str, os.PathLike)):
        store_or_images = SliceStore.open(store_or_images)
    if isinstance(store_or_images, SliceStore):
        images = store_or_images
        where = str(images.path)
        if ex.kind == "detector":  # channels matched by name, as the detector's embed does
            config = ex.module.config
            channels, size = list(config.channels), config.image_size
            if sorted(images.channels) != sorted(channels) or images.image_shape[1:] != (size, size):
                raise WorkbenchError(f"{where}: images of {images.image_shape[1]}x{images.image_shape[2]} with "
                                     f"channels {images.channels}, but the copy detector ({ex.path or ex.name}) "
                                     f"embeds {size}x{size} images with channels {channels}")
            images = images.with_channels(channels)
        n = len(images)
        read = images.read
        blocks = lambda: images.blocks(batch_size)  # noqa: E731
    else:
        arr = np.asarray(store_or_images, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim != 4:
            raise WorkbenchError(f"features: expected images (N, C, H, W) or (N, H, W), got shape {arr.shape}")
        where, n = "images", len(arr)
        read = lambda positions: arr[positions]  # noqa: E731
        blocks = lambda: ((a, arr[a:a + batch_size]) for a in range(0, n, batch_size))  # noqa: E731
    if n == 0:
        raise WorkbenchError(f"{where}: holds no images to extract features from")
    probe = _apply(ex, read(np.arange(min(2, n))))  # fail early, naming the extractor
    out = np.empty((n, probe.shape[1]), dtype=np.float64)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start, block in blocks():
            out[start:start + len(block)] = _apply(ex, np.asarray(block, dtype=np.float32))
            bar.update(len(block))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise WorkbenchError(f"{ex.path or ex.name}: gave non-finite features for {int(bad.sum())} image(s) of {where}")
    return out


# -- the run-level figures -----------------------------------------------------------------------
@dataclass
class FidelityResult:
    """The figures of the synthetic images against the training images, beside the held-out baseline."""

    #: metrics of the synthetic images against the images the model saw
    synthetic: dict
    #: the same metrics of the held-out real images against the training images
    baseline: dict
    #: the feature extractor: name, kind, path, feature dimension
    extractor: dict
    #: nearest_k, KID subsets, seed, ... and the image sets compared
    parameters: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """JSON-safe: ``{"extractor", "synthetic", "baseline", "parameters", "seconds"}``."""
        return asdict(self)

    def table(self) -> pd.DataFrame:
        """One row per metric: the synthetic figure, the held-out baseline, and which direction is better."""
        return pd.DataFrame({"synthetic": [self.synthetic[m] for m in METRICS],
                             "held-out baseline": [self.baseline[m] for m in METRICS],
                             "better": list(METRICS.values())},
                            index=pd.Index(list(METRICS), name="metric"))

    def __repr__(self) -> str:
        return (f"FidelityResult(extractor={self.extractor['name']!r}, "
                f"fd={self.synthetic['fd']:.4g} (baseline {self.baseline['fd']:.4g}), "
                f"authenticity={self.synthetic['authenticity']:.3f} (baseline {self.baseline['authenticity']:.3f}))")


def _images(value, run, name: str, attribute: str):
    if value is None:
        if run is None:
            raise WorkbenchError(f"fidelity: give a run, or the {name} images ({name}=a SliceStore)")
        return getattr(run, attribute)
    if isinstance(value, (str, os.PathLike)):
        return SliceStore.open(value)
    return value


def _subsample(images, max_images: int | None, rng: np.random.Generator):
    if max_images is None or len(images) <= max_images:
        return images
    keep = np.sort(rng.choice(len(images), max_images, replace=False))
    return images.take(keep) if isinstance(images, SliceStore) else np.asarray(images)[keep]


def fidelity(run=None, *, extractor="detector", nearest_k: int = 5, kid_subsets: int = 100,
             kid_subset_size: int = 1000, n_alphas: int = 30, max_images: int | None = None, seed: int = 0,
             batch_size: int = 64, device="auto", progress: bool = True, synthetic=None, reference=None,
             baseline=None) -> FidelityResult:
    """Fidelity, diversity and authenticity of a run's synthetic images, beside the real-vs-real baseline.

    The synthetic images (``run.synthetic``) are compared with the images the model saw
    (``run.train``); the held-out real images (``run.test``) are compared with the training
    images the same way, so each figure has beside it what real images the model never saw give.
    All images are used (KID's subsets are capped at the smaller set); prdc and authenticity
    compare every pair, so memory grows with the square of the set sizes: ``max_images`` draws at
    most that many images of each set (seeded by ``seed``).

    Parameters
    ----------
    run : a :class:`~workbench.runs.run.Run` (``workbench.open_run(path)``); may be None when the
        three image sets are given and ``extractor`` is not ``"detector"``.
    extractor : ``"detector"`` (the run's copy detector, ``run/detector``), a detector folder, a
        TorchScript file or a callable: see :func:`feature_extractor`.
    nearest_k, kid_subsets, kid_subset_size, n_alphas : see :func:`fidelity_metrics`.
    seed : seeds KID's subsets and ``max_images``' draw; written with the result.
    synthetic, reference, baseline : SliceStores (or folders, or image arrays) that replace
        ``run.synthetic``, ``run.train`` and ``run.test``.

    >>> result = fidelity(workbench.open_run("runs/demo"))          # doctest: +SKIP
    >>> result.table()                                              # doctest: +SKIP
    """
    start = time.perf_counter()
    if run is not None and not hasattr(run, "path"):
        raise WorkbenchError(f"fidelity: expected a Run (workbench.open_run(path)), got {type(run).__name__}")
    ex = feature_extractor(extractor, run=run, device=device)
    sets = {"reference": _images(reference, run, "reference", "train"),
            "synthetic": _images(synthetic, run, "synthetic", "synthetic"),
            "baseline": _images(baseline, run, "baseline", "test")}
    if max_images is not None:
        max_images = check_int("fidelity: max_images", max_images, low=nearest_k + 2)
        rng = np.random.default_rng(seed)
        sets = {name: _subsample(images, max_images, rng) for name, images in sets.items()}
    labels = {"reference": "training images", "synthetic": "synthetic images", "baseline": "held-out images"}
    feats = {name: features(images, ex, batch_size=batch_size, progress=progress, desc=f"features: {labels[name]}")
             for name, images in sets.items()}
    options = dict(nearest_k=nearest_k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, n_alphas=n_alphas,
                   seed=seed)
    figures = {}
    for name in ("synthetic", "baseline"):
        try:
            figures[name] = fidelity_metrics(feats["reference"], feats[name], **options)
        except WorkbenchError as err:
            raise WorkbenchError(f"{labels[name]} against the training images: {err}") from None
    where = {name: str(images.path) if isinstance(images, SliceStore) else "array" for name, images in sets.items()}
    parameters = {**options, "max_images": max_images, "images": where}
    return FidelityResult(synthetic=figures["synthetic"], baseline=figures["baseline"], extractor=ex.describe(),
                          parameters=parameters, seconds=round(time.perf_counter() - start, 3))
