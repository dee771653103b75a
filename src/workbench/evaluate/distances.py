"""Distance to the closest record (DCR) and the nearest-neighbour distance ratio (NNDR).

Privacy figures that need no copy to exist: how far each synthetic image lies from its closest
training image, and how much closer that one is than the second closest.  They are read off the
similarities the memorization analysis already computed (pixel r, and the copy detector's
embedding similarity), so they cost one extra search: the held-out images' two nearest training
images, the baseline every figure is compared with.

* ``DCR = 1 − s`` with ``s`` the highest similarity (Pearson r, or the embedding's cosine): 0 for
  an exact copy.  For Pearson r, ``2·(1 − r)`` is the squared Euclidean distance between the two
  images once each is standardised to zero mean and unit norm, so DCR orders pairs as that
  distance does.
* ``NNDR = sqrt((1 − s₁) / (1 − s₂))``: the ratio of those Euclidean distances to the nearest and
  second-nearest training image; near 0 when an image sits on one training image, near 1 when it
  is as close to several (a typical image of the distribution).  Two identical training images
  make both distances zero; NNDR is then 1 (no single record is singled out).

A synthetic set that copies lies closer to the training images than held-out images of the same
distribution do: the table gives both distributions and the fraction of synthetic images closer
than the held-out images' 5th percentile (5 % when the synthetic images are as new as held-out
images).

>>> import numpy as np
>>> dcr, nndr = dcr_nndr(np.array([[1.0, 0.9], [0.8, 0.8]]))
>>> dcr.round(3).tolist(), nndr.round(3).tolist()
([0.0, 0.2], [0.0, 1.0])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import WorkbenchError

#: the baseline percentile a synthetic image's DCR is compared with
BASELINE_PERCENTILE = 5.0


def dcr_nndr(similarities) -> tuple[np.ndarray, np.ndarray]:
    """DCR and NNDR of each row of ``similarities`` ``(n, k >= 2)``, highest first."""
    s = np.asarray(similarities, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise WorkbenchError(f"dcr_nndr: needs each image's two highest similarities, an array (n, k >= 2); "
                             f"got shape {s.shape}")
    d1 = np.clip(1.0 - s[:, 0], 0.0, None)
    d2 = np.clip(1.0 - s[:, 1], 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        nndr = np.where(d2 > 0, np.sqrt(d1 / np.where(d2 > 0, d2, 1.0)), 1.0)
    return d1, np.clip(nndr, 0.0, 1.0)


@dataclass
class Distances:
    """Per-image DCR / NNDR of synthetic and held-out images, for each similarity of the analysis."""

    #: one row per (similarity, set, image): similarity, set ("synthetic" / "held-out"), position, dcr, nndr
    per_image: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per similarity: medians and 5th percentiles of both sets, and the fraction of
        synthetic images closer than the held-out 5th percentile."""
        rows = []
        for name, group in self.per_image.groupby("similarity", sort=False):
            syn, held = group[group["set"] == "synthetic"], group[group["set"] == "held-out"]
            p5 = float(np.percentile(held["dcr"], BASELINE_PERCENTILE))
            rows.append({"similarity": name,
                         "synthetic DCR median": float(syn["dcr"].median()),
                         "held-out DCR median": float(held["dcr"].median()),
                         "synthetic DCR p5": float(np.percentile(syn["dcr"], BASELINE_PERCENTILE)),
                         "held-out DCR p5": p5,
                         "synthetic closer than held-out p5": float((syn["dcr"] < p5).mean()),
                         "synthetic exact copies (DCR < 1e-6)": float((syn["dcr"] < 1e-6).mean()),
                         "synthetic NNDR median": float(syn["nndr"].median()),
                         "held-out NNDR median": float(held["nndr"].median()),
                         "n synthetic": int(len(syn)), "n held-out": int(len(held))})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return {"table": self.table().to_dict(orient="records"), "settings": self.settings,
                "baseline_percentile": BASELINE_PERCENTILE}


def distances(analysis, train, test, *, detector=None, device="auto", progress: bool = False) -> Distances:
    """DCR / NNDR of an analysis's synthetic images (its saved top-k) and of ``test``: the analysis's
    own best and second-best matches of the held-out images where it kept them for these same
    images (the same store and rows), else searched here (a whole pass over the training images).

    Parameters
    ----------
    analysis : a :class:`~workbench.memorization.analysis.Analysis` (``load_analysis(run folder)``).
    train, test : the training images it searched and the held-out images (SliceStores).
    detector : the copy detector folder, needed when the analysis has embedding similarities
        (default: the one its settings name).
    """
    from ..memorization.analysis import EMBEDDING, PIXEL
    from ..search import topk_correlation

    if len(train) < 2:
        raise WorkbenchError(f"{train.path}: DCR / NNDR need at least 2 training images, got {len(train)}")
    if len(test) < 1:
        raise WorkbenchError(f"{test.path}: no held-out images to compare with")
    settings = analysis.settings
    same_test = (settings.get("test_store") == str(test.path) and "test_rows" in settings
                 and np.array_equal(np.asarray(settings["test_rows"], dtype=np.int64), np.asarray(test.rows)))
    frames = []
    for name, sim in analysis.similarities.items():
        if sim.synthetic_values.shape[1] < 2:
            raise WorkbenchError(f"the analysis kept only k={sim.synthetic_values.shape[1]} match per synthetic image; "
                                 f"NNDR needs 2: analyse again with k >= 2 (the default is 5)")
        if sim.test_to_train_second is not None and same_test:  # kept by the analysis's own search
            held = np.stack([sim.test_to_train, sim.test_to_train_second], axis=1)
        elif name == PIXEL:  # an analysis saved before it kept the second best
            held = np.asarray(topk_correlation(test, train, k=2, device=device, progress=progress).values)
        elif name == EMBEDDING:
            from ..memorization.detector import embed, embedding_topk, load_detector

            folder = detector or analysis.settings.get("detector")
            if not folder or not Path(folder).is_dir():
                raise WorkbenchError(f"the analysis has embedding similarities but its detector ({folder}) is gone; "
                                     f"give detector= or analyse again")
            encoder, _, _ = load_detector(folder)
            metric = analysis.settings.get("embedding_metric", "cosine")
            held, _ = embedding_topk(embed(encoder, test), embed(encoder, train), k=2, metric=metric)
        else:
            continue
        for which, values in (("synthetic", sim.synthetic_values), ("held-out", held)):
            dcr, nndr = dcr_nndr(values)
            frames.append(pd.DataFrame({"similarity": name, "set": which, "position": np.arange(len(dcr)),
                                        "dcr": dcr, "nndr": nndr}))
    settings = {"n_train": int(len(train)), "n_test": int(len(test)), "train_store": str(train.path),
                "test_store": str(test.path), "dcr": "1 - highest similarity",
                "nndr": "sqrt((1 - s1) / (1 - s2))"}
    return Distances(pd.concat(frames, ignore_index=True), settings)
