"""The whole copy analysis of one run: baselines, calibrated thresholds, copy rates, patients, C_T.

For pixel Pearson r, and for the learned copy detector's embedding similarity when a detector is
given, :func:`copy_analysis` searches

* every synthetic image against the training images (top k: the runner-ups show whether matches
  run along adjacent slices of one patient),
* every held-out image against the training images (the study's baseline),
* every training image against the held-out images (Dar et al.'s calibration),
* every synthetic image against the held-out images (a model that generalises makes images as
  close to unseen patients as to training ones),

and per channel the first two.  From these: thresholds by both rules, Dar et al.'s copy rates
with bootstrap intervals, the patient table, and Meehan et al.'s C_T over cells of the training
data.  A synthetic image is flagged as a copy when it is above the chosen rule's threshold in
either similarity.

>>> res = copy_analysis(synthetic, train, test, detector=encoder)     # doctest: +SKIP
>>> res.summary()["pixel r"]["dar95"]["synthetic_copy_fraction"]      # doctest: +SKIP
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.atomic import atomic_file
from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from ..search import topk_correlation
from .calibration import (MIN_CALIBRATION_IMAGES, CopyRates, Threshold, baseline_threshold, check_threshold, copy_rates,
                          dar_threshold)
from .patients import patient_table

PIXEL = "pixel r"
EMBEDDING = "embedding similarity"
RULES = ("dar95", "test_quantile")


@dataclass
class Similarity:
    """Nearest-neighbour similarities of one kind (pixel r or embedding similarity)."""

    name: str
    synthetic_values: np.ndarray  # (n_synthetic, k) vs training, descending
    synthetic_indices: np.ndarray  # (n_synthetic, k) training positions
    test_to_train: np.ndarray  # (n_test,)
    train_to_test: np.ndarray  # (n_train,)
    synthetic_to_test: np.ndarray  # (n_synthetic,)

    @property
    def synthetic_max(self) -> np.ndarray:
        return self.synthetic_values[:, 0]


@dataclass
class CopyAnalysis:
    """Everything :func:`copy_analysis` found; :meth:`summary` is JSON-able, :meth:`save` writes it."""

    similarities: dict[str, Similarity]
    thresholds: dict[tuple[str, str], Threshold]
    rates: dict[tuple[str, str], CopyRates]
    rule: str
    flags: pd.DataFrame
    per_channel: pd.DataFrame
    patients: pd.DataFrame
    data_copying: object | None
    settings: dict = field(default_factory=dict)
    #: the rule that flags copies, per similarity ("fixed" where the user gave the threshold)
    flag_rules: dict = field(default_factory=dict)

    def threshold(self, similarity: str = PIXEL, rule: str | None = None) -> Threshold:
        return self.thresholds[(similarity, rule or self.flag_rules.get(similarity, self.rule))]

    def rules(self, similarity: str) -> list[str]:
        return [r for (name, r) in self.thresholds if name == similarity]

    def series(self, similarity: str = PIXEL) -> dict[str, np.ndarray]:
        """The three distributions of highest similarity, for histograms and ECDFs."""
        sim = self.similarities[similarity]
        return {"synthetic → train": sim.synthetic_max, "test → train (baseline)": sim.test_to_train,
                "synthetic → test": sim.synthetic_to_test}

    def rates_table(self) -> pd.DataFrame:
        """One row per (similarity, rule): threshold, how it was calibrated, and the copy rates."""
        rows = []
        for (name, rule), r in self.rates.items():
            t = self.thresholds[(name, rule)]
            rows.append({"similarity": name, "rule": rule, "flags copies": rule == self.flag_rules.get(name, self.rule),
                         "threshold": t.value,
                         "synthetic copies": str(r.synthetic_copy_fraction),
                         "training images copied": str(r.train_copied_fraction),
                         "training subjects copied": "—" if r.subjects_copied_fraction is None
                         else str(r.subjects_copied_fraction),
                         "calibrated on": t.description})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        out: dict = {"settings": self.settings, "rule": self.rule}
        for name, sim in self.similarities.items():
            block = {
                "synthetic_to_train_median": float(np.median(sim.synthetic_max)),
                "test_to_train_median": float(np.median(sim.test_to_train)),
                "test_to_train_max": float(np.max(sim.test_to_train)),
                "synthetic_to_test_median": float(np.median(sim.synthetic_to_test)),
            }
            block["flag_rule"] = self.flag_rules.get(name, self.rule)
            for rule in self.rules(name):
                t, r = self.thresholds[(name, rule)], self.rates[(name, rule)]
                block[rule] = {
                    "threshold": t.as_dict(),
                    "synthetic_copies": r.synthetic_copies,
                    "synthetic_copy_fraction": vars(r.synthetic_copy_fraction),
                    "train_copied": r.train_copied,
                    "train_copied_fraction": vars(r.train_copied_fraction),
                    "subjects_copied": r.subjects_copied,
                    "subjects_copied_fraction": None if r.subjects_copied_fraction is None
                    else vars(r.subjects_copied_fraction),
                }
            out[name] = block
        out["flagged"] = int(self.flags["copy"].sum())
        out["kept"] = int((~self.flags["copy"]).sum())
        if self.data_copying is not None:
            out["data_copying"] = self.data_copying.summary()
        return out

    def save(self, folder) -> list[Path]:
        """Write ``copy_analysis.json``, ``copy_flags.parquet``, ``patients.csv``, ``per_channel.csv``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, write in (("copy_analysis.json", lambda p: p.write_text(json.dumps(self.summary(), indent=2,
                                                                                      default=_json))),
                            ("copy_flags.parquet", lambda p: self.flags.to_parquet(p, index=False)),
                            ("patients.csv", lambda p: self.patients.to_csv(p)),
                            ("per_channel.csv", lambda p: self.per_channel.to_csv(p, index=False))):
            with atomic_file(folder / name) as tmp:
                write(tmp)
            written.append(folder / name)
        return written


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def check_compatible(synthetic: SliceStore, train: SliceStore, what: str = "synthetic images") -> SliceStore:
    """``synthetic`` with the training images' channels, matched by name (reordered if needed), and size.

    Returns the view to use (channels in the training store's order); other channels or another
    image size are a clear error.
    """
    synthetic = align_channels(synthetic, train, what=what)
    if tuple(synthetic.image_shape) != tuple(train.image_shape):
        raise WorkbenchError(f"{synthetic.path}: images are {tuple(synthetic.image_shape)} but the training images in "
                             f"{train.path} are {tuple(train.image_shape)}")
    return synthetic


def _pixel_similarity(synthetic, train, test, *, k, device, progress) -> Similarity:
    s = topk_correlation(synthetic, train, k=k, device=device, progress=progress)
    t = topk_correlation(test, train, k=1, device=device, progress=progress)
    tr = topk_correlation(train, test, k=1, device=device, progress=progress)
    st = topk_correlation(synthetic, test, k=1, device=device, progress=progress)
    return Similarity(PIXEL, np.asarray(s.values), np.asarray(s.indices), np.asarray(t.values)[:, 0],
                      np.asarray(tr.values)[:, 0], np.asarray(st.values)[:, 0])


def _embedding_similarity(encoder, synthetic, train, test, *, k, progress) -> Similarity:
    from .detector import embed, embedding_topk

    zs, ztr, zte = (embed(encoder, x, progress=progress) for x in (synthetic, train, test))
    sv, si = embedding_topk(zs, ztr, k=k)
    tv, _ = embedding_topk(zte, ztr, k=1)
    rv, _ = embedding_topk(ztr, zte, k=1)
    stv, _ = embedding_topk(zs, zte, k=1)
    return Similarity(EMBEDDING, sv, si, tv[:, 0], rv[:, 0], stv[:, 0])


def _per_channel(synthetic, train, test, *, device, progress) -> pd.DataFrame:
    rows = []
    channels = list(train.channels)
    for c in channels if len(channels) > 1 else []:
        for comparison, queries in (("synthetic → train", synthetic), ("test → train", test)):
            with warnings.catch_warnings():
                # one channel alone is often constant (a segmentation without tumour): r is undefined
                # there, and the table's n counts the images where it is defined
                warnings.simplefilter("ignore", UserWarning)
                res = topk_correlation(queries, train, k=1, channels=[c], device=device, progress=progress)
            v = np.asarray(res.values)[:, 0]
            v = v[np.isfinite(v)]
            rows.append({"channel": c, "comparison": comparison, "n": int(v.size),
                         "median": float(np.median(v)) if v.size else np.nan,
                         "p90": float(np.percentile(v, 90)) if v.size else np.nan,
                         "max": float(v.max()) if v.size else np.nan, "values": v})
    return pd.DataFrame(rows, columns=["channel", "comparison", "n", "median", "p90", "max", "values"])


def copy_analysis(synthetic: SliceStore, train: SliceStore, test: SliceStore, *, detector=None, k: int = 5,
                  rule: str = "dar95", quantile: float = 0.95, pixel_threshold: float | None = None,
                  embedding_threshold: float | None = None, bootstrap: int = 1000, seed: int = 0,
                  per_channel: bool = True, data_copying_cells: int | None = 10, device: str = "auto",
                  progress: bool = True) -> CopyAnalysis:
    """Run every search and figure of the copy analysis for one synthetic set.

    Parameters
    ----------
    synthetic, train, test : SliceStores (views) of the synthetic images, the images the model
        was trained on (e.g. :func:`workbench.train.training_view`) and held-out images.
    detector : a copy-detector encoder (:func:`workbench.memorization.detector.load_detector`), or
        None for pixel r only.
    k : matches per synthetic image kept (the patient view looks at the runner-ups).
    rule : which threshold flags copies: ``"dar95"`` (Dar et al.) or ``"test_quantile"``.
    quantile : the quantile of the test-quantile rule (Dar's rule is always the 95th percentile).
    pixel_threshold, embedding_threshold : fixed thresholds in [-1, 1] that flag copies instead of
        the calibrated rule (both rules are still reported beside them).
    bootstrap, seed : resamples for the copy-rate confidence intervals.
    per_channel : also search each channel alone (synthetic → train, test → train).
    data_copying_cells : cells of Meehan et al.'s C_T test (None: skip it).
    """
    if rule not in RULES:
        raise WorkbenchError(f"rule must be one of {RULES}, got {rule!r}")
    fixed = {}
    if pixel_threshold is not None:
        fixed[PIXEL] = check_threshold(pixel_threshold)
    if embedding_threshold is not None:
        if detector is None:
            raise WorkbenchError("embedding_threshold needs a copy detector (detector=...)")
        fixed[EMBEDDING] = check_threshold(embedding_threshold)
    synthetic = check_compatible(synthetic, train)
    test = check_compatible(test, train, what="held-out images")
    for view, what in ((synthetic, "synthetic images"), (train, "training images")):
        if len(view) == 0:
            raise WorkbenchError(f"{view.path}: no {what} to analyse")
    if len(test) < MIN_CALIBRATION_IMAGES:
        raise WorkbenchError(f"{test.path}: only {len(test)} held-out images; at least {MIN_CALIBRATION_IMAGES} are "
                             f"needed to calibrate a copy threshold (hold out more subjects)")
    k = int(min(k, len(train)))
    sims = {PIXEL: _pixel_similarity(synthetic, train, test, k=k, device=device, progress=progress)}
    if detector is not None:
        sims[EMBEDDING] = _embedding_similarity(detector, synthetic, train, test, k=k, progress=progress)
    subjects = train.manifest["subject"].astype("string").fillna("?").to_numpy(dtype=object)
    thresholds, rates = {}, {}
    for name, sim in sims.items():
        thresholds[(name, "dar95")] = dar_threshold(sim.train_to_test, similarity=name,
                                                    data=f"{len(train)} training vs {len(test)} held-out images")
        thresholds[(name, "test_quantile")] = baseline_threshold(sim.test_to_train, quantile=quantile, similarity=name,
                                                                 data=f"{len(test)} held-out vs {len(train)} training images")
        if name in fixed:
            thresholds[(name, "fixed")] = Threshold(fixed[name], "fixed", float("nan"), name, 0,
                                                    "given by the user (not calibrated)")
        for r in [r for (n, r) in thresholds if n == name]:
            rates[(name, r)] = copy_rates(sim.synthetic_max, sim.synthetic_indices[:, 0], thresholds[(name, r)],
                                          n_train=len(train), train_subjects=subjects, bootstrap=bootstrap, seed=seed)
    sm = synthetic.manifest.reset_index(drop=True)
    flags = pd.DataFrame({"synthetic": np.arange(len(synthetic)), "row": synthetic.rows})
    for col in ("seed", "sample_index", "label", "model", "run"):
        if col in sm.columns:
            flags[col] = sm[col].to_numpy()
    flag = np.zeros(len(synthetic), dtype=bool)
    for name, sim in sims.items():
        key = "pixel" if name == PIXEL else "embedding"
        tau = thresholds[(name, "fixed" if name in fixed else rule)].value
        flags[f"{key}_max"] = sim.synthetic_max
        flags[f"{key}_match"] = sim.synthetic_indices[:, 0]
        flags[f"{key}_match_row"] = train.rows[sim.synthetic_indices[:, 0]]  # store row, for viewers
        flags[f"{key}_copy"] = sim.synthetic_max > tau
        flag |= flags[f"{key}_copy"].to_numpy()
    flags["copy"] = flag
    pixel = sims[PIXEL]
    patients = patient_table(pixel.synthetic_values, pixel.synthetic_indices, train.manifest,
                             thresholds[(PIXEL, "fixed" if PIXEL in fixed else rule)].value)
    chans = _per_channel(synthetic, train, test, device=device, progress=progress) if per_channel else pd.DataFrame()
    data_copying = None
    if data_copying_cells:
        from .data_copying import data_copying_test, image_features

        cells = int(min(data_copying_cells, max(2, len(train) // 4)))
        try:
            data_copying = data_copying_test(image_features(train), image_features(test), image_features(synthetic),
                                             cells=cells, seed=seed, progress=False)
        except WorkbenchError as err:  # too few images for the cells: report why instead of failing the analysis
            data_copying = _Skipped(str(err))
    settings = {"k": k, "rule": rule, "quantile": quantile, "bootstrap": bootstrap, "seed": seed,
                "n_synthetic": len(synthetic), "n_train": len(train), "n_test": len(test),
                "synthetic_store": str(synthetic.path), "train_store": str(train.path), "test_store": str(test.path),
                "similarities": list(sims)}
    flag_rules = {name: ("fixed" if name in fixed else rule) for name in sims}
    return CopyAnalysis(sims, thresholds, rates, rule, flags, chans, patients, data_copying, settings, flag_rules)


@dataclass
class _Skipped:
    reason: str

    def summary(self) -> dict:
        return {"skipped": self.reason}


def load_run_flags(folder) -> pd.DataFrame:
    """The per-image flags a saved analysis wrote (``copy_flags.parquet``), to overlay runs."""
    path = Path(folder) / "copy_flags.parquet"
    if not path.is_file():
        raise WorkbenchError(f"{path}: missing; run the 04_memorization notebook for that run first")
    return pd.read_parquet(path)
