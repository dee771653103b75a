"""The release gate: write only the synthetic images that are not copies, with a report.

``workbench release --synthetic STORE --reference STORE --out DIR`` runs the copy analysis
(:func:`workbench.memorization.analysis.run_analysis`) with thresholds calibrated on the
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

Before anything is searched or written, the gate checks that what it is asked to release is a
synthetic store (:func:`check_synthetic_store`): ``store.json`` says ``kind: synthetic``, no row
names a patient (``subject``) or a source file, and it is not the reference store itself.  A
store of patient images given by mistake as ``--synthetic`` is refused, and nothing is written.
As a last line of defence, an image that is the same as a held-out image (pixel r of at least
:data:`IDENTICAL_R`) is removed too: no model that never saw that patient makes it.  The report
lists every check and its result.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data.atomic import atomic_dir
from ..data.store import SliceStore
from ..errors import WorkbenchError, option_hint
from ..memorization.analysis import EMBEDDING, PIXEL, run_analysis
from ..memorization.release import IDENTICAL_R, check_synthetic_store
from ..widgets.release_report import release_html

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
    checks = check_synthetic_store(synthetic, reference)  # before any search or write
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass {option_hint('overwrite')} to replace it)")
    train = reference.where(split="train") if train is None else train
    test = reference.where(split="test") if test is None else test
    if isinstance(detector, (str, Path)):
        from ..memorization.detector import load_detector

        detector = load_detector(detector)[0]
    analysis = run_analysis(synthetic, train, test, detector=detector, rule=rule, quantile=quantile,
                            pixel_threshold=pixel_threshold, embedding_threshold=embedding_threshold,
                            bootstrap=bootstrap, seed=seed, progress=progress)
    flags = analysis.flags
    to_test = analysis.similarities[PIXEL].synthetic_to_test
    identical = to_test >= IDENTICAL_R
    checks.append({"check": "not identical to a held-out image", "passed": not identical.any(),
                   "detail": f"{int(identical.sum())} synthetic image(s) have pixel r >= {IDENTICAL_R} with a held-out "
                             f"image and are removed" if identical.any() else
                             f"no synthetic image has pixel r >= {IDENTICAL_R} with any of the {len(test)} held-out images"})
    removed_mask = flags["copy"].to_numpy() | identical
    keep = np.flatnonzero(~removed_mask)
    removed = np.flatnonzero(removed_mask)
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
        "removed_identical_to_held_out": int(identical.sum()),
        "checks": checks,
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
        (tmp / "report.html").write_text(release_html(report, analysis, panels))
    if progress:
        print(f"release gate: kept {len(keep)} of {len(synthetic)} synthetic images, removed {len(removed)} as copies "
              f"({rule}, {', '.join(analysis.similarities)}); wrote {out}")
    return report
