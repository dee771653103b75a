"""The release gate: write only the synthetic images that are not copies, with a report.

``workbench release --synthetic STORE --reference STORE --out DIR`` runs the copy analysis
(:func:`workbench.memorization.analysis.copy_analysis`) with thresholds calibrated on the
reference store's own training and held-out images, and writes to ``DIR``:

    images/            the kept synthetic images (PNG: one 8-bit file per channel; or NIfTI)
    kept.csv           one row per kept image: sample index, seed, model, run, label, similarities
    report.json        counts kept and removed, thresholds and how they were calibrated, copy
                       rates, the model and run, the date
    report.html        the same for people

An image is kept only if it is at or below *both* thresholds: pixel Pearson r and, when a copy
detector is given, its embedding similarity (each by the chosen rule).  The report never shows
a training image unless ``show_training=True``; even then it shows only the matched training
slices of removed images.  The whole folder appears only when complete.
"""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.atomic import atomic_dir
from ..data.store import SliceStore
from ..errors import WorkbenchError
from .analysis import EMBEDDING, PIXEL, CopyAnalysis, copy_analysis

FORMATS = ("png", "nifti")


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.round(image * 255), 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_images(folder: Path, synthetic: SliceStore, keep: np.ndarray, fmt: str) -> list[str]:
    folder.mkdir()
    names = []
    channels = list(synthetic.channels)
    for start in range(0, len(keep), 256):
        positions = keep[start:start + 256]
        block = synthetic.read(positions)
        for pos, image in zip(positions, block):
            stem = f"synthetic_{int(pos):05d}"
            if fmt == "png":
                for c, name in enumerate(channels):
                    (folder / f"{stem}_{name}.png").write_bytes(_png_bytes(image[c]))
            else:
                import nibabel as nib

                # (x, y, 1, channel): one axial slice per file, channels along the 4th axis
                data = np.transpose(image, (2, 1, 0))[:, :, None, :].astype(np.float32)
                img = nib.Nifti1Image(data, np.eye(4))
                img.header["descrip"] = ("synthetic; channels " + ",".join(channels))[:79].encode()
                nib.save(img, folder / f"{stem}.nii.gz")
            names.append(stem)
    return names


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.4f}", escape=True)


def _html_report(report: dict, analysis: CopyAnalysis, training_panels: list[tuple[int, bytes, bytes]]) -> str:
    rows = []
    for name in analysis.similarities:
        for rule in analysis.rules(name):
            t, r = analysis.thresholds[(name, rule)], analysis.rates[(name, rule)]
            rows.append({"similarity": name, "rule": rule, "threshold": t.value,
                         "flags copies": rule == analysis.flag_rules.get(name, analysis.rule),
                         "synthetic copies": str(r.synthetic_copy_fraction),
                         "training images copied": str(r.train_copied_fraction),
                         "training subjects copied": str(r.subjects_copied_fraction) if r.subjects_copied_fraction else "—",
                         "calibration": t.description})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Release gate report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 8px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}.big{font-size:1.4em}</style></head><body>",
        "<h1>Release gate report</h1>",
        f"<p class='big'><b>{report['kept']}</b> synthetic images kept, <b>{report['removed']}</b> removed as copies "
        f"(of {report['n_synthetic']}).</p>",
        f"<p>Model: {html.escape(str(report['model']))} · run: {html.escape(str(report['run']))} · "
        f"synthetic store: {html.escape(report['synthetic_store'])} · date: {report['date']}</p>",
        f"<p>An image is kept when its similarity to every training image is at or below the flagging threshold "
        f"(rule {html.escape(', '.join(f'{n}: {r}' for n, r in analysis.flag_rules.items()))}) for every similarity "
        f"measured. "
        f"Thresholds are calibrated on {report['n_train']} training and {report['n_test']} held-out images of "
        f"{html.escape(report['reference_store'])}.</p>",
        "<h2>Thresholds and copy rates (95 % bootstrap intervals)</h2>",
        _table_html(pd.DataFrame(rows)),
    ]
    dc = report.get("data_copying")
    if dc:
        parts.append("<h2>Data-copying test (Meehan et al. 2020)</h2><p>" + html.escape(
            str(dc.get("interpretation", dc.get("skipped", "")))) + "</p>")
    if training_panels:
        parts.append("<h2>Removed images beside their matched training slices (shown on request)</h2>")
        for pos, syn, trn in training_panels:
            parts.append(f"<div>synthetic #{pos}: <img src='data:image/png;base64,{base64.b64encode(syn).decode()}' "
                         f"width=128> training match: <img src='data:image/png;base64,{base64.b64encode(trn).decode()}' "
                         "width=128></div>")
    else:
        parts.append("<p>No training image is shown in this report (pass <code>show_training=True</code> / "
                     "<code>--show-training</code> to include the matched training slices of removed images).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def release_gate(synthetic, reference, out, *, train=None, test=None, detector=None, rule: str = "dar95",
                 quantile: float = 0.95, pixel_threshold: float | None = None, embedding_threshold: float | None = None,
                 fmt: str = "png", show_training: bool = False, bootstrap: int = 1000,
                 seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the synthetic images that are not copies, and a report; returns the report dict.

    Parameters
    ----------
    synthetic : SliceStore (or path) of synthetic images.
    reference : SliceStore (or path) with ``train`` and ``test`` splits; thresholds are calibrated on it.
    out : folder to write (appears only when complete).
    train, test : views to use instead of the reference's splits (e.g. the exact images a model saw,
        :func:`workbench.train.training_view`).
    detector : a copy-detector encoder, or the path of a trained detector, or None (pixel r only).
    rule : ``"dar95"`` or ``"test_quantile"`` (with ``quantile``).
    pixel_threshold, embedding_threshold : fixed thresholds in [-1, 1] instead of the calibrated rule.
    fmt : ``"png"`` or ``"nifti"``.
    show_training : include the matched training slices of removed images in the HTML report.
    """
    if fmt not in FORMATS:
        raise WorkbenchError(f"release: format must be one of {FORMATS}, got {fmt!r}")
    synthetic = synthetic if isinstance(synthetic, SliceStore) else SliceStore.open(synthetic)
    reference = reference if isinstance(reference, SliceStore) else SliceStore.open(reference)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True to replace it)")
    train = reference.where(split="train") if train is None else train
    test = reference.where(split="test") if test is None else test
    if isinstance(detector, (str, Path)):
        from .detector import load_detector

        detector = load_detector(detector)[0]
    analysis = copy_analysis(synthetic, train, test, detector=detector, rule=rule, quantile=quantile,
                             pixel_threshold=pixel_threshold, embedding_threshold=embedding_threshold,
                             bootstrap=bootstrap, seed=seed, progress=progress)
    flags = analysis.flags
    keep = np.flatnonzero(~flags["copy"].to_numpy())
    removed = np.flatnonzero(flags["copy"].to_numpy())
    meta = synthetic.meta
    summary = analysis.summary()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_synthetic": int(len(synthetic)), "kept": int(len(keep)), "removed": int(len(removed)),
        "rule": rule, "flag_rules": analysis.flag_rules, "similarities": list(analysis.similarities),
        "thresholds": {f"{name} / {r}": t.as_dict() for (name, r), t in analysis.thresholds.items()},
        "model": meta.get("model"), "run": meta.get("run"), "checkpoint": meta.get("checkpoint"),
        "sampler": meta.get("sampler"), "synthetic_seed": meta.get("seed"),
        "synthetic_store": str(synthetic.path), "reference_store": str(reference.path),
        "n_train": int(len(train)), "n_test": int(len(test)), "format": fmt,
        "copy_rates": {k: v for k, v in summary.items() if k in (PIXEL, EMBEDDING)},
        "data_copying": summary.get("data_copying"),
        "shows_training_images": bool(show_training),
    }
    panels = []
    if show_training and len(removed):
        c = 0
        for pos in removed[:24]:
            match = int(flags.loc[pos, "pixel_match"])
            panels.append((int(pos), _png_bytes(synthetic.read([pos])[0, c]), _png_bytes(train.read([match])[0, c])))
    kept_cols = [col for col in ("synthetic", "seed", "sample_index", "label", "model", "run", "pixel_max",
                                 "embedding_max") if col in flags.columns]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        names = _write_images(tmp / "images", synthetic, keep, fmt)
        kept = flags.iloc[keep][kept_cols].copy()
        kept.insert(0, "file", names)
        kept.to_csv(tmp / "kept.csv", index=False)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (tmp / "report.html").write_text(_html_report(report, analysis, panels))
    if progress:
        print(f"release gate: kept {len(keep)} of {len(synthetic)} synthetic images, removed {len(removed)} as copies "
              f"({rule}, {', '.join(analysis.similarities)}); wrote {out}")
    return report
