"""The whole copy analysis of one synthetic set: every search once, baselines, calibrated thresholds,
copy rates, patients, C_T.

For pixel Pearson r, and for the learned copy detector's embedding similarity when a detector is
given, :func:`run_analysis` searches, each once,

* every synthetic image against the training images (top k: the runner-ups show whether matches
  run along adjacent slices of one patient; and, for the match browser, the best match from each
  of the k most similar training subjects),
* every held-out image against the training images (the study's baseline, Akbar et al.),
* every training image against the held-out images (Dar et al.'s calibration),
* every synthetic image against the held-out images (a model that generalises makes images as
  close to unseen patients as to training ones),
* every training image against the synthetic images (Dar et al.'s "training images memorized"),

and per channel the first two.  From these: thresholds by both rules, Dar et al.'s copy rates
with bootstrap intervals, the patient table, Meehan et al.'s C_T over cells of the training data,
and Akbar et al.'s summary.  A synthetic image is flagged as a copy when it is above the chosen
rule's threshold in either similarity.  :meth:`Analysis.save` writes it into a run folder and
:func:`load_analysis` reads it back (thresholds and rates are recomputed from the saved
similarities, so a loaded analysis is the analysis, not a picture of it).

The one entry point for a run is :func:`workbench.analyze`, which calls :func:`run_analysis`.

>>> res = run_analysis(synthetic, train, test, detector=encoder)     # doctest: +SKIP
>>> res.summary()["pixel r"]["dar95"]["synthetic_copy_fraction"]     # doctest: +SKIP
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import layout
from ..data.atomic import atomic_file
from ..data.store import SliceStore, align_channels
from ..errors import TooFewReferenceImages, WorkbenchError
from ..search import ReferenceSearch, SearchResult
from .calibration import (MIN_CALIBRATION_IMAGES, CopyRates, Threshold, baseline_threshold, check_threshold, copy_rates,
                          dar_threshold)
from .nearest import matches_frame, summarize
from .patients import patient_table

PIXEL = "pixel r"
EMBEDDING = "embedding similarity"
RULES = ("dar95", "test_quantile")
EMBEDDING_METRICS = ("cosine", "correlation")
#: the short name of each similarity in flag columns and recorded values
KEYS = {PIXEL: "pixel", EMBEDDING: "embedding"}
#: the arrays of a Similarity, saved in the run's similarities file
ARRAYS = ("synthetic_values", "synthetic_indices", "test_to_train", "train_to_test", "synthetic_to_test",
          "train_to_synthetic")
#: ... and, where the analysis kept it (analyses saved before it are read without)
OPTIONAL_ARRAYS = ("test_to_train_second",)


@dataclass
class Similarity:
    """Nearest-neighbour similarities of one kind (pixel r or embedding similarity)."""

    name: str
    synthetic_values: np.ndarray  # (n_synthetic, k) vs training, descending
    synthetic_indices: np.ndarray  # (n_synthetic, k) training positions
    test_to_train: np.ndarray  # (n_test,)
    train_to_test: np.ndarray  # (n_train,)
    synthetic_to_test: np.ndarray  # (n_synthetic,)
    train_to_synthetic: np.ndarray  # (n_train,): each training image's nearest synthetic image
    #: (n_test,): each held-out image's second-best training image, from the same search as
    #: test_to_train (DCR / NNDR need both: :mod:`workbench.evaluate.distances` searched again for
    #: it, a whole pass over the training images); None with one training image, or as loaded
    #: from an analysis saved before it
    test_to_train_second: np.ndarray | None = None

    @property
    def synthetic_max(self) -> np.ndarray:
        return self.synthetic_values[:, 0]


@dataclass
class Analysis:
    """Everything :func:`run_analysis` found; :meth:`summary` and :meth:`record` are JSON, :meth:`save` writes it."""

    similarities: dict[str, Similarity]
    thresholds: dict[tuple[str, str], Threshold]
    rates: dict[tuple[str, str], CopyRates]
    rule: str
    flags: pd.DataFrame
    per_channel: pd.DataFrame
    patients: pd.DataFrame
    #: Meehan et al.'s C_T test: its summary (or why it was skipped), None when not run
    data_copying: dict | None
    #: top-k training matches of every synthetic image (pixel r), one row per (query, rank)
    matches: pd.DataFrame
    #: the best match from each of the k most similar training subjects (None: no subjects)
    subject_matches: pd.DataFrame | None = None
    settings: dict = field(default_factory=dict)
    #: the rule that flags copies, per similarity ("fixed" where the user gave the threshold)
    flag_rules: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.settings
        return (f"Analysis({s.get('n_synthetic')} synthetic vs {s.get('n_train')} training and {s.get('n_test')} "
                f"held-out images; {', '.join(self.similarities)}; {int(self.flags['copy'].sum())} flagged)")

    def threshold(self, similarity: str = PIXEL, rule: str | None = None) -> Threshold:
        return self.thresholds[(similarity, rule or self.flag_rules.get(similarity, self.rule))]

    def rules(self, similarity: str) -> list[str]:
        return [r for (name, r) in self.thresholds if name == similarity]

    def series(self, similarity: str = PIXEL) -> dict[str, np.ndarray]:
        """The three distributions of highest similarity, for histograms and ECDFs."""
        sim = self.similarities[similarity]
        return {"synthetic → train": sim.synthetic_max, "test → train (baseline)": sim.test_to_train,
                "synthetic → test": sim.synthetic_to_test}

    def best(self) -> pd.DataFrame:
        """Each synthetic image's best training match (pixel r), strongest first."""
        m = self.matches
        return m[m["rank"] == 1].sort_values("r", ascending=False).reset_index(drop=True)

    def rates_table(self) -> pd.DataFrame:
        """One row per (similarity, rule): threshold, how it was calibrated, and the copy rates."""
        rows = []
        for (name, rule), r in self.rates.items():
            t = self.thresholds[(name, rule)]
            rows.append({"similarity": name, "rule": rule, "flags copies": rule == self.flag_rules.get(name, self.rule),
                         "threshold": t.value,
                         "synthetic copies": str(r.synthetic_copy_fraction),
                         **_train_rates_columns(r),
                         "calibrated on": t.description})
        return pd.DataFrame(rows)

    def memorization(self) -> dict:
        """Akbar et al.'s summary: the highest pixel r of synthetic and of held-out images."""
        pixel = self.similarities[PIXEL]
        out = summarize(pixel.synthetic_max, pixel.test_to_train)
        out.update({"n_train": int(self.settings.get("n_train", len(pixel.train_to_test))),
                    "k": int(self.settings.get("k", pixel.synthetic_values.shape[1])),
                    "synthetic_store": self.settings.get("synthetic_store"),
                    "train_store": self.settings.get("train_store")})
        return out

    def summary(self) -> dict:
        """Every figure of the analysis, as plain JSON values."""
        out: dict = {"settings": self.settings, "rule": self.rule, "memorization": self.memorization()}
        for name, sim in self.similarities.items():
            block = {
                "synthetic_to_train_median": float(np.median(sim.synthetic_max)),
                "test_to_train_median": float(np.median(sim.test_to_train)),
                "test_to_train_max": float(np.max(sim.test_to_train)),
                "synthetic_to_test_median": float(np.median(sim.synthetic_to_test)),
                "flag_rule": self.flag_rules.get(name, self.rule),
            }
            for rule in self.rules(name):
                block[rule] = {"threshold": self.thresholds[(name, rule)].as_dict(),
                               **_rates_dict(self.rates[(name, rule)])}
            out[name] = block
        out["flagged"] = int(self.flags["copy"].sum())
        out["kept"] = int((~self.flags["copy"]).sum())
        if self.data_copying is not None:
            out["data_copying"] = self.data_copying
        return json.loads(json.dumps(out, default=_json))

    def record(self) -> dict:
        """The key figures as flat name -> number pairs (what a notebook records with scrapbook)."""
        summary = self.summary()
        out = {key: summary["memorization"][key] for key in
               ("synthetic_max_r_median", "test_max_r_median", "test_max_r_max", "synthetic_above_test_max",
                "synthetic_above_test_p99") if key in summary["memorization"]}
        for name in self.similarities:
            key, block = KEYS[name], summary[name][self.flag_rules.get(name, self.rule)]
            out[f"{key}_threshold"] = block["threshold"]["value"]
            for figure, value in block.items():
                if isinstance(value, dict) and "value" in value and figure.endswith("fraction"):
                    out[f"{key}_{figure}"] = value["value"]
        out["flagged_copies"] = summary["flagged"]
        dc = summary.get("data_copying") or {}
        if dc.get("c_t") is not None:
            out["data_copying_c_t"] = dc["c_t"]
        return out

    def save(self, folder) -> list[Path]:
        """Write the analysis into a run folder (names in :mod:`workbench.data.layout`), the
        key-figures file last: its presence means the rest is complete."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{KEYS[name]}__{a}": np.asarray(getattr(sim, a)) for name, sim in self.similarities.items()
                  for a in ARRAYS + OPTIONAL_ARRAYS if getattr(sim, a) is not None}
        arrays.update({f"per_channel__{i}": np.asarray(v, dtype=np.float64)
                       for i, v in enumerate(self.per_channel.get("values", []))})
        summary = self.summary()
        writers = [
            (layout.SIMILARITIES, lambda p: np.savez(p, **arrays)),
            (layout.COPY_ANALYSIS, lambda p: p.write_text(json.dumps({**summary, "flag_rules": self.flag_rules},
                                                                     indent=2))),
            (layout.COPY_FLAGS, lambda p: self.flags.to_parquet(p, index=False)),
            (layout.MATCHES, lambda p: self.matches.to_parquet(p, index=False)),
            (layout.PATIENTS, lambda p: self.patients.to_csv(p)),
            (layout.PER_CHANNEL, lambda p: self.per_channel.drop(columns="values", errors="ignore")
             .to_csv(p, index=False)),
        ]
        if self.subject_matches is not None:
            writers.append((layout.SUBJECT_MATCHES, lambda p: self.subject_matches.to_parquet(p, index=False)))
        elif (folder / layout.SUBJECT_MATCHES).exists():
            (folder / layout.SUBJECT_MATCHES).unlink()  # an older analysis' table must not be read as this one's
        writers.append((layout.MEMORIZATION, lambda p: p.write_text(json.dumps(summary["memorization"], indent=2))))
        written = []
        for name, write in writers:
            with atomic_file(folder / name) as tmp:
                write(tmp)
            written.append(folder / name)
        return written


def _train_rates_columns(r: CopyRates) -> dict:
    """The training-side rates of one threshold, as table columns (Dar et al.'s and the best-match ones)."""
    out = {}
    for attr, label in (("train_memorized_fraction", "training images memorized (Dar)"),
                        ("subjects_memorized_fraction", "training subjects memorized (Dar)"),
                        ("train_best_match_fraction", "training images that are a copy's best match"),
                        ("subjects_best_match_fraction", "training subjects with a copy's best match")):
        if hasattr(r, attr):
            value = getattr(r, attr)
            out[label] = "—" if value is None else str(value)
    return out


def _rates_dict(r: CopyRates) -> dict:
    """A CopyRates as JSON: counts as numbers, intervals as {value, low, high}."""
    out = {}
    for key, value in vars(r).items():
        if key in ("threshold", "best_match_train_rows", "memorized_train_rows"):  # row lists: too long for JSON
            continue
        out[key] = vars(value) if hasattr(value, "low") else value
    return out


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


def _pixel_similarity(synthetic, train, test, *, k, device, progress) -> tuple[Similarity, SearchResult | None]:
    """The pixel-r searches, and the best match of each of the k most similar training subjects
    (None where the training images have no subjects or k < 2: the match browser's candidates).

    Each reference is searched through one :class:`~workbench.search.ReferenceSearch`: one index
    for all its searches where one of them would build it, and the synthetic images' top k and
    their subjects' best matches from one search of the training images."""
    subjects = train.manifest["subject"] if "subject" in train.manifest.columns else None
    k_subjects = None if subjects is None or subjects.isna().any() or k < 2 else int(min(k, subjects.nunique()))
    by_train = ReferenceSearch(train, (len(synthetic), len(test)), device=device, progress=progress)
    if k_subjects is None:
        s, by_subject = by_train.topk(synthetic, k), None
    else:
        s, by_subject = by_train.topk(synthetic, k, distinct="subject", k_distinct=k_subjects)
    try:
        t = by_train.topk(test, min(2, len(train)))  # the second best too: DCR / NNDR's
    except TooFewReferenceImages:  # one non-constant training image: it has no second best
        t = by_train.topk(test, 1)
    by_test = ReferenceSearch(test, (len(train), len(synthetic)), device=device, progress=progress)
    tr = by_test.topk(train, 1)
    st = by_test.topk(synthetic, 1)
    ts = ReferenceSearch(synthetic, (len(train),), device=device, progress=progress).topk(train, 1)
    tv = np.asarray(t.values)
    pixel = Similarity(PIXEL, np.asarray(s.values), np.asarray(s.indices), tv[:, 0], np.asarray(tr.values)[:, 0],
                       np.asarray(st.values)[:, 0], np.asarray(ts.values)[:, 0], tv[:, 1] if tv.shape[1] > 1 else None)
    return pixel, by_subject


def _embedding_similarity(encoder, synthetic, train, test, *, k, metric, progress) -> Similarity:
    from .detector import embed, embedding_topk

    zs, ztr, zte = (embed(encoder, x, progress=progress) for x in (synthetic, train, test))
    sv, si = embedding_topk(zs, ztr, k=k, metric=metric)
    tv, _ = embedding_topk(zte, ztr, k=min(2, len(ztr)), metric=metric)  # the second best too: DCR / NNDR's
    rv, _ = embedding_topk(ztr, zte, k=1, metric=metric)
    stv, _ = embedding_topk(zs, zte, k=1, metric=metric)
    tsv, _ = embedding_topk(ztr, zs, k=1, metric=metric)
    return Similarity(EMBEDDING, sv, si, tv[:, 0], rv[:, 0], stv[:, 0], tsv[:, 0], tv[:, 1] if tv.shape[1] > 1 else None)


def _per_channel(synthetic, train, test, *, device, progress) -> pd.DataFrame:
    rows = []
    channels = list(train.channels)
    for c in channels if len(channels) > 1 else []:
        by_train = ReferenceSearch(train, (len(synthetic), len(test)), channels=[c], device=device,
                                   progress=progress)
        for comparison, queries in (("synthetic → train", synthetic), ("test → train", test)):
            with warnings.catch_warnings():
                # one channel alone is often constant (a segmentation without tumour): r is undefined
                # there, and the table's n counts the images where it is defined
                warnings.simplefilter("ignore", UserWarning)
                res = by_train.topk(queries, 1)
            v = np.asarray(res.values)[:, 0]
            v = v[np.isfinite(v)]
            rows.append({"channel": c, "comparison": comparison, "n": int(v.size),
                         "median": float(np.median(v)) if v.size else np.nan,
                         "p90": float(np.percentile(v, 90)) if v.size else np.nan,
                         "max": float(v.max()) if v.size else np.nan, "values": v})
    return pd.DataFrame(rows, columns=["channel", "comparison", "n", "median", "p90", "max", "values"])


def calibrate(similarities: dict[str, Similarity], *, rule: str, quantile: float, fixed: dict, train_subjects,
              n_train: int, n_test: int, bootstrap: int, seed: int):
    """Thresholds by both rules (and fixed ones) and the copy rates at each, from the similarities alone."""
    thresholds, rates = {}, {}
    for name, sim in similarities.items():
        thresholds[(name, "dar95")] = dar_threshold(sim.train_to_test, similarity=name,
                                                    data=f"{n_train} training vs {n_test} held-out images")
        thresholds[(name, "test_quantile")] = baseline_threshold(sim.test_to_train, quantile=quantile, similarity=name,
                                                                 data=f"{n_test} held-out vs {n_train} training images")
        if name in fixed:
            thresholds[(name, "fixed")] = Threshold(fixed[name], "fixed", float("nan"), name, 0,
                                                    "given by the user (not calibrated)")
        for r in [r for (n, r) in thresholds if n == name]:
            rates[(name, r)] = copy_rates(sim.synthetic_max, sim.synthetic_indices[:, 0], thresholds[(name, r)],
                                          n_train=n_train, train_subjects=train_subjects,
                                          train_to_synthetic_max=sim.train_to_synthetic,
                                          bootstrap=bootstrap, seed=seed)
    return thresholds, rates


def _flags(synthetic: SliceStore, train_rows: np.ndarray, similarities, thresholds, flag_rules) -> pd.DataFrame:
    sm = synthetic.manifest.reset_index(drop=True)
    flags = pd.DataFrame({"synthetic": np.arange(len(sm)), "row": synthetic.rows})
    for col in ("seed", "sample_index", "label", "model", "run"):
        if col in sm.columns:
            flags[col] = sm[col].to_numpy()
    flag = np.zeros(len(sm), dtype=bool)
    for name, sim in similarities.items():
        key = KEYS[name]
        tau = thresholds[(name, flag_rules[name])].value
        flags[f"{key}_max"] = sim.synthetic_max
        flags[f"{key}_match"] = sim.synthetic_indices[:, 0]
        flags[f"{key}_match_row"] = train_rows[sim.synthetic_indices[:, 0]]  # store row, for viewers
        flags[f"{key}_copy"] = sim.synthetic_max > tau
        flag |= flags[f"{key}_copy"].to_numpy()
    flags["copy"] = flag
    return flags


def run_analysis(synthetic: SliceStore, train: SliceStore, test: SliceStore, *, detector=None, k: int = 5,
                 rule: str = "dar95", quantile: float = 0.95, pixel_threshold: float | None = None,
                 embedding_threshold: float | None = None, bootstrap: int = 1000, seed: int = 0,
                 per_channel: bool = True, data_copying_cells: int | None = 10, embedding_metric: str = "cosine",
                 device: str = "auto", progress: bool = True) -> Analysis:
    """Run every search of the copy analysis once, and every figure from them.

    Parameters
    ----------
    synthetic, train, test : SliceStores (views, or their folders) of the synthetic images, the
        images the model was trained on (e.g. ``run.train``) and held-out images.
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
    embedding_metric : how embeddings are compared: ``"cosine"`` (what the detector is trained
        for) or ``"correlation"`` (Pearson r of the embedding vectors, as Dar et al.'s code does).
    """
    if embedding_metric not in EMBEDDING_METRICS:
        raise WorkbenchError(f"embedding_metric must be one of {EMBEDDING_METRICS}, got {embedding_metric!r}")
    synthetic, train, test = (x if isinstance(x, SliceStore) else SliceStore.open(x) for x in (synthetic, train, test))
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
    pixel, by_subject = _pixel_similarity(synthetic, train, test, k=k, device=device, progress=progress)
    sims = {PIXEL: pixel}
    if detector is not None:
        sims[EMBEDDING] = _embedding_similarity(detector, synthetic, train, test, k=k, metric=embedding_metric,
                                                progress=progress)
    matches = matches_frame(synthetic, train, pixel.synthetic_values, pixel.synthetic_indices)
    subject_matches = None if by_subject is None else \
        matches_frame(synthetic, train, np.asarray(by_subject.values), np.asarray(by_subject.indices))
    chans = _per_channel(synthetic, train, test, device=device, progress=progress) if per_channel else \
        pd.DataFrame(columns=["channel", "comparison", "n", "median", "p90", "max", "values"])
    data_copying = None
    if data_copying_cells:
        from .data_copying import data_copying_test, image_features

        cells = int(min(data_copying_cells, max(2, len(train) // 4)))
        try:
            data_copying = data_copying_test(image_features(train), image_features(test), image_features(synthetic),
                                             cells=cells, seed=seed, progress=False).summary()
        except WorkbenchError as err:  # too few images for the cells: report why instead of failing the analysis
            data_copying = {"skipped": str(err)}
    settings = {"k": k, "rule": rule, "quantile": quantile, "bootstrap": bootstrap, "seed": seed,
                "n_synthetic": len(synthetic), "n_train": len(train), "n_test": len(test),
                "synthetic_store": str(synthetic.path), "train_store": str(train.path), "test_store": str(test.path),
                "train_rows": [int(r) for r in train.rows], "synthetic_rows": [int(r) for r in synthetic.rows],
                "test_rows": [int(r) for r in test.rows],
                "similarities": list(sims), "embedding_metric": embedding_metric if detector is not None else None,
                "fixed_thresholds": {name: value for name, value in fixed.items()}}
    return _assemble(sims, settings, train_manifest=train.manifest, train_rows=train.rows, synthetic=synthetic,
                     per_channel=chans, data_copying=data_copying, matches=matches, subject_matches=subject_matches)


def _assemble(sims, settings, *, train_manifest, train_rows, synthetic, per_channel, data_copying, matches,
              subject_matches) -> Analysis:
    """Thresholds, rates, flags and the patient table from the similarities (shared by run and load)."""
    fixed = dict(settings.get("fixed_thresholds") or {})
    subjects = train_manifest["subject"].astype("string").fillna("?").to_numpy(dtype=object)
    thresholds, rates = calibrate(sims, rule=settings["rule"], quantile=settings["quantile"], fixed=fixed,
                                  train_subjects=subjects, n_train=settings["n_train"], n_test=settings["n_test"],
                                  bootstrap=settings["bootstrap"], seed=settings["seed"])
    flag_rules = {name: ("fixed" if name in fixed else settings["rule"]) for name in sims}
    flags = _flags(synthetic, np.asarray(train_rows), sims, thresholds, flag_rules)
    pixel = sims[PIXEL]
    patients = patient_table(pixel.synthetic_values, pixel.synthetic_indices, train_manifest,
                             thresholds[(PIXEL, flag_rules[PIXEL])].value)
    return Analysis(sims, thresholds, rates, settings["rule"], flags, per_channel, patients, data_copying, matches,
                    subject_matches, settings, flag_rules)


def load_analysis(folder) -> Analysis:
    """The analysis a run folder holds (written by :meth:`Analysis.save`), with what is missing named."""
    folder = Path(folder)
    how = f"make it with {layout.HOW_TO_MAKE['analysis']}"
    missing = [name for name in (layout.MEMORIZATION, layout.COPY_ANALYSIS, layout.SIMILARITIES, layout.MATCHES)
               if not (folder / name).is_file()]
    if missing:
        raise WorkbenchError(f"{folder}: no complete analysis here (missing {', '.join(missing)}); {how}")
    try:
        saved = json.loads((folder / layout.COPY_ANALYSIS).read_text())
        settings = saved["settings"]
        with np.load(folder / layout.SIMILARITIES, allow_pickle=False) as arrays:
            sims = {}
            for name in settings["similarities"]:
                sims[name] = Similarity(name, *(arrays[f"{KEYS[name]}__{a}"] for a in ARRAYS),
                                        *(arrays[key] if (key := f"{KEYS[name]}__{a}") in arrays.files else None
                                          for a in OPTIONAL_ARRAYS))
            per_channel_values = [arrays[k] for k in sorted((k for k in arrays.files if k.startswith("per_channel__")),
                                                            key=lambda k: int(k.split("__")[1]))]
        matches = pd.read_parquet(folder / layout.MATCHES)
        subject_matches = (pd.read_parquet(folder / layout.SUBJECT_MATCHES)
                           if (folder / layout.SUBJECT_MATCHES).is_file() else None)
        per_channel = pd.read_csv(folder / layout.PER_CHANNEL) if (folder / layout.PER_CHANNEL).is_file() else \
            pd.DataFrame(columns=["channel", "comparison", "n", "median", "p90", "max"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WorkbenchError(f"{folder}: the saved analysis is unreadable or from another version ({err!r}); "
                             f"{how} again") from None
    if len(per_channel_values) == len(per_channel):
        per_channel["values"] = per_channel_values
    synthetic = SliceStore.open(settings["synthetic_store"]).take(np.asarray(settings["synthetic_rows"], dtype=np.int64))
    store = SliceStore.open(settings["train_store"])
    train = store.take(np.asarray(settings["train_rows"], dtype=np.int64))
    return _assemble(sims, settings, train_manifest=train.manifest, train_rows=train.rows, synthetic=synthetic,
                     per_channel=per_channel, data_copying=saved.get("data_copying"), matches=matches,
                     subject_matches=subject_matches)


def load_slice_view(run) -> Analysis | None:
    """The slice view a 3D run holds (``<run>/slice_view/``, written by
    :func:`workbench.runs.slice_view.slice_view`), or None when it has none."""
    folder = Path(run) / layout.SLICE_VIEW
    return load_analysis(folder) if (folder / layout.MEMORIZATION).is_file() else None
