"""Patient-level findings: which training subjects were copied, at which slices, and whether
matches run along adjacent slices of one volume (the figure: :func:`workbench.widgets.report.patient_figure`).

Akbar et al.'s point about 2D slices from 3D volumes: neighbouring slices of one patient are
nearly the same image, so a model that memorized slice z of a patient also "matches" z−1 and
z+1.  For each synthetic copy (best similarity above τ) this module asks whether its next-best
matches are the z±1 slices of the same subject, and sums up per training subject.

>>> table = patient_table(values, indices, train.manifest, tau)     # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import WorkbenchError


def copy_matches(values, indices, train_manifest: pd.DataFrame, tau: float) -> pd.DataFrame:
    """One row per synthetic copy: its best training match (subject, z) and whether the runner-up
    matches are adjacent slices (z±1) of the same subject.

    ``values`` / ``indices``: the top-k similarities and training-view positions of each synthetic
    image (k >= 1; adjacency needs k >= 2).
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    if values.shape != indices.shape:
        raise WorkbenchError(f"values {values.shape} and indices {indices.shape} must have the same shape")
    m = train_manifest.reset_index(drop=True)
    if len(indices) and indices.max() >= len(m):
        raise WorkbenchError(f"indices point beyond the {len(m)} training images of the manifest")
    subject = m["subject"].astype("string").to_numpy(dtype=object)
    z = m["z"].astype("Int64")
    rows = []
    for i in np.flatnonzero(values[:, 0] > tau):
        best = int(indices[i, 0])
        zb = z.iloc[best]
        adjacent = []
        for j in range(1, values.shape[1]):
            other = int(indices[i, j])
            zo = z.iloc[other]
            adjacent.append(bool(subject[other] == subject[best] and not pd.isna(zb) and not pd.isna(zo)
                                 and abs(int(zo) - int(zb)) == 1))
        rows.append({"synthetic": int(i), "similarity": float(values[i, 0]), "train_position": best,
                     "subject": subject[best], "z": None if pd.isna(zb) else int(zb),
                     "runner_up_adjacent": bool(adjacent[0]) if adjacent else None,
                     "adjacent_among_next": int(sum(adjacent))})
    return pd.DataFrame(rows, columns=["synthetic", "similarity", "train_position", "subject", "z",
                                       "runner_up_adjacent", "adjacent_among_next"])


def patient_table(values, indices, train_manifest: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Per training subject: slices, synthetic copies, copied slices and their z, adjacency.

    Columns: ``train_slices``, ``copies`` (synthetic images whose best match is one of the
    subject's slices above τ), ``copied_slices`` (distinct slices copied), ``copied_z`` (sorted),
    ``runner_up_adjacent`` (share of the subject's copies whose second-best match is the z±1
    slice of the same subject), ``max_similarity``.  Sorted by copies, most first.
    """
    m = train_manifest.reset_index(drop=True)
    matches = copy_matches(values, indices, m, tau)
    slices = m.groupby(m["subject"].astype("string")).size().rename("train_slices")
    out = pd.DataFrame(slices)
    out.index.name = "subject"
    if len(matches):
        g = matches.groupby("subject")
        out["copies"] = g.size()
        out["copied_slices"] = g["train_position"].nunique()
        out["copied_z"] = g["z"].apply(lambda s: sorted({int(v) for v in s.dropna()}))
        adj = matches.dropna(subset=["runner_up_adjacent"])
        out["runner_up_adjacent"] = adj.groupby("subject")["runner_up_adjacent"].mean() if len(adj) else np.nan
        out["max_similarity"] = g["similarity"].max()
    else:
        out["copies"], out["copied_slices"], out["runner_up_adjacent"], out["max_similarity"] = 0, 0, np.nan, np.nan
        out["copied_z"] = [[] for _ in range(len(out))]
    out["copies"] = out["copies"].fillna(0).astype(int)
    out["copied_slices"] = out["copied_slices"].fillna(0).astype(int)
    out["copied_z"] = out["copied_z"].apply(lambda v: v if isinstance(v, list) else [])
    return out.sort_values(["copies", "max_similarity"], ascending=False)
