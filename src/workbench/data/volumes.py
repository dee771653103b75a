"""Stores of 3D volumes: one row per subject, ``(N, C, D, H, W)``, and their axial slices.

A volume store is a :class:`~workbench.data.store.SliceStore` whose images have one more
spatial axis (see that module for how the two cases share one type).  It is built from the same
BraTS-layout folders as a slice store (the built-in brain phantom is one), one subject at a time:

1. each subject's contrasts are read (RAS+, as for slices) and turned so that every axial plane
   ``volume[z]`` is the 2D slice :func:`workbench.data.slicing.axial_slices` would give
   (anterior up, the subject's left on the left): a volume's planes and a slice store's images
   line up;
2. cropped to the brain's bounding box (non-zero voxels of any intensity contrast; BraTS is
   skull-stripped), grown to a cube around its centre plus ``margin`` voxels, so the voxels stay
   isotropic (1 mm in BraTS);
3. resampled to ``size``³ (area averaging when shrinking, trilinear when growing; label maps by
   nearest neighbour) and scaled to [0, 1] per contrast, as slices are.

The crop box and the resulting voxel size are recorded per subject in the manifest (``crop``,
``voxel_mm``).  With ``size=None`` volumes are stored whole, and every subject must then have the
same shape: volumes of different shapes without resampling are refused, naming the files.

:func:`axial_slice_store` cuts a volume store (real or synthetic) into a slice store with ``z``
and ``prev`` / ``next`` links, so a 2D model can be trained on the same subjects at the same
resolution, and every axial slice of a synthetic volume can be searched against training slices
(Akbar et al.'s "2D slices from 3D volumes" comparison).

>>> store = prepare_volume_store("data/phantom", "runs/vol/store", size=48)          # doctest: +SKIP
>>> store.image_shape                                                                # doctest: +SKIP
(5, 48, 48, 48)
>>> slices = axial_slice_store(store, "runs/vol/slices")                             # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..progress import tqdm
from . import slicing
from .brats import CONTRASTS, LABEL_CONTRASTS, read_subject, scan_subjects
from .prepare import DEFAULT_CHANNELS, held_out_count, split_subjects
from .store import SliceStore, StoreWriter

#: voxels added around the brain's bounding box on every side before resampling
DEFAULT_MARGIN = 4


def to_planes(volume: np.ndarray) -> np.ndarray:
    """A RAS+ volume ``(X, Y, Z)`` as axial planes ``(Z, Y, X)`` in display orientation:
    ``to_planes(v)[z] == slicing.axial_slices(v, [z])[0]``."""
    return np.ascontiguousarray(np.rot90(volume, axes=(0, 1)).transpose(2, 0, 1))


def brain_box(planes: Sequence[np.ndarray], *, margin: int = DEFAULT_MARGIN) -> tuple[slice, slice, slice] | None:
    """The cube (three slices over D, H, W) around the non-zero voxels of any of ``planes``,
    centred on their bounding box, ``margin`` voxels wider on each side; None if all are zero.
    The cube may reach outside the volume: :func:`crop_cube` pads with zeros there."""
    nonzero = np.zeros(planes[0].shape, dtype=bool)
    for p in planes:
        nonzero |= p > 0
    if not nonzero.any():
        return None
    lo = [int(np.flatnonzero(nonzero.any(axis=tuple(j for j in range(3) if j != a))).min()) for a in range(3)]
    hi = [int(np.flatnonzero(nonzero.any(axis=tuple(j for j in range(3) if j != a))).max()) + 1 for a in range(3)]
    side = max(h - l for l, h in zip(lo, hi)) + 2 * margin
    starts = [(l + h) // 2 - side // 2 for l, h in zip(lo, hi)]
    return tuple(slice(s, s + side) for s in starts)


def crop_cube(planes: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """``planes[box]``, zero-padded where the box reaches outside the volume."""
    side = box[0].stop - box[0].start
    out = np.zeros((side, side, side), dtype=np.float32)
    src, dst = [], []
    for sl, size in zip(box, planes.shape):
        a, b = max(sl.start, 0), min(sl.stop, size)
        src.append(slice(a, b))
        dst.append(slice(a - sl.start, b - sl.start))
    out[tuple(dst)] = planes[tuple(src)]
    return out


def resample_cube(cube: np.ndarray, size: int, *, labels: bool = False) -> np.ndarray:
    """A cube ``(s, s, s)`` resampled to ``(size, size, size)``: nearest neighbour for label maps,
    area averaging when shrinking (anti-aliased), trilinear when growing."""
    if cube.shape == (size, size, size):
        return cube.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(cube, dtype=np.float32))[None, None]
    if labels:
        y = F.interpolate(x, size=(size,) * 3, mode="nearest-exact")
    elif size < cube.shape[0]:
        y = F.interpolate(x, size=(size,) * 3, mode="area")
    else:
        y = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False).clamp_(0, 1)
    return y[0, 0].numpy()


def subject_volume(volumes: dict[str, np.ndarray], *, channels: Sequence[str], size: int | None,
                   margin: int = DEFAULT_MARGIN, scaling: str = "max", percentile: float = 99.5
                   ) -> tuple[np.ndarray, dict]:
    """One subject's contrasts as a volume ``(C, D, H, W)`` in [0, 1], and what was done to it
    (``crop``: the box in the subject's planes, ``voxel_mm``: the stored voxel size in source voxels)."""
    planes = {}
    for c in channels:
        vol = volumes[c]
        scaled = slicing.scale_labels(vol) if c in LABEL_CONTRASTS else slicing.scale_intensity(
            vol, method=scaling, percentile=percentile)
        planes[c] = to_planes(scaled)
    if size is None:
        return np.stack([planes[c] for c in channels]), {"crop": None, "voxel_mm": 1.0}
    intensity = [to_planes(volumes[c]) for c in volumes if c not in LABEL_CONTRASTS]
    box = brain_box(intensity, margin=margin)
    if box is None:
        raise DataError("every voxel of every contrast is zero")
    out = np.stack([resample_cube(crop_cube(planes[c], box), size, labels=c in LABEL_CONTRASTS) for c in channels])
    side = box[0].stop - box[0].start
    return out, {"crop": ",".join(f"{s.start}:{s.stop}" for s in box), "voxel_mm": round(side / size, 4)}


def _checked_subjects(source, *, channels, size, margin, test_fraction, n_test, seed, max_subjects):
    """The subjects of ``source`` and their seeded split, every option checked before any volume is read."""
    if not channels:
        raise DataError("channels: choose at least one contrast")
    unknown = [c for c in channels if c not in CONTRASTS]
    if unknown:
        raise DataError(f"unknown contrast(s) {unknown}; BraTS folders have {list(CONTRASTS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 512):
        raise DataError(f"size must be a volume edge such as 32, 48, 64 or 96 (8 to 512), got {size!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise DataError(f"margin must be a whole number of voxels >= 0, got {margin!r}")
    if n_test is None:
        held_out_count(2, test_fraction=test_fraction)
    elif n_test < 0:
        raise DataError(f"n_test must be 0 or more, got {n_test}")
    subjects, skipped = scan_subjects(source, channels=channels)
    if max_subjects:
        subjects = subjects[:max_subjects]
    if not subjects:
        raise DataError(f"{source}: no subject folder with the contrasts {channels}")
    n_hold = held_out_count(len(subjects), test_fraction=test_fraction, n_test=n_test)
    if not 0 <= n_hold < len(subjects):
        raise DataError(f"{source}: cannot hold out {n_hold} test subject(s) of {len(subjects)}: at least one must "
                        f"stay for training")
    return subjects, skipped, split_subjects([s.id for s in subjects], n_test=n_hold, seed=seed)


def _each_volume(subjects, *, channels, size, margin, scaling, percentile, progress):
    """``(subject, volume (C, D, H, W), what was done)`` for each subject, one in memory at a time."""
    shape_of = None  # (first file, its shape): with size=None every volume must match it
    for subject in tqdm(subjects, desc="volumes", unit="subject", disable=not progress):
        volumes = read_subject(subject, channels)
        if size is None:
            first = subject.file(channels[0])
            shape = volumes[channels[0]].shape
            if shape_of is None:
                shape_of = (first, shape)
            elif shape != shape_of[1]:
                raise DataError(f"{first}: volume of shape {shape} but {shape_of[0]} is {shape_of[1]}; a store of "
                                f"whole volumes needs one shape: pass size= (e.g. 64) to crop and resample")
        try:
            image, done = subject_volume(volumes, channels=channels, size=size, margin=margin, scaling=scaling,
                                         percentile=percentile)
        except DataError as err:
            raise DataError(f"{subject.file(channels[0]).parent}: {err}") from None
        if not np.isfinite(image).all():
            raise DataError(f"{subject.file(channels[0]).parent}: non-finite voxels after scaling")
        done["label"] = int((volumes["seg"] > 0).any()) if "seg" in volumes else None
        yield subject, image, done


def _meta(source, *, size, margin, scaling, percentile, test_fraction, n_test, seed, max_subjects, splits, skipped):
    return {
        "source": str(Path(source).resolve()),
        "options": dict(size=size, margin=margin, scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                        n_test=n_test, seed=seed, max_subjects=max_subjects),
        "orientation": "volumes (C, D, H, W): D axial planes inferior to superior, each plane as an axial slice "
                       "(anterior up, the subject's left on the image's left)",
        "crop_rule": None if size is None else f"cube around the brain's bounding box plus {margin} voxels, "
                                               f"resampled to {size}^3",
        "split_rule": "by subject, seeded",
        "subjects": {"train": sum(v == "train" for v in splits.values()), "test": sum(v == "test" for v in splits.values())},
        "skipped_folders": skipped,
    }


def prepare_volume_store(source, out, *, channels: Sequence[str] = DEFAULT_CHANNELS, size: int | None = 64,
                         margin: int = DEFAULT_MARGIN, scaling: str = "max", percentile: float = 99.5,
                         test_fraction: float = 0.25, n_test: int | None = None, seed: int = 0,
                         max_subjects: int | None = None, overwrite: bool = False, progress: bool = True) -> SliceStore:
    """A store of 3D volumes ``(N, C, size, size, size)``, one per subject of a BraTS-layout folder,
    with a seeded train/test split by subject (the same rule and seed as
    :func:`~workbench.data.prepare.prepare_brats_store`, so the same ``seed`` holds out the same
    subjects as a slice store of the same folder).

    Parameters
    ----------
    source : folder of subject folders (``<ID>/<ID>_<contrast>.nii[.gz]``).
    out : store folder to write (atomically: a killed run leaves no store that looks finished).
    channels : contrasts, in order (default t1, t1ce, t2, flair, seg).
    size : edge of the stored cube (e.g. 32, 48, 64, 96), or None to store the volumes whole
        (then all must have one shape).
    margin : voxels around the brain's bounding box.
    scaling, percentile : intensity scaling per contrast, as for slices.
    test_fraction / n_test, seed : the held-out subjects.
    max_subjects : the first this many subjects (by id) only.

    >>> store = prepare_volume_store("data/BraTS2021", "runs/brats-vol64", size=64)     # doctest: +SKIP
    """
    channels = list(channels)
    subjects, skipped, splits = _checked_subjects(source, channels=channels, size=size, margin=margin,
                                                  test_fraction=test_fraction, n_test=n_test, seed=seed,
                                                  max_subjects=max_subjects)
    meta = _meta(source, size=size, margin=margin, scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                 n_test=n_test, seed=seed, max_subjects=max_subjects, splits=splits, skipped=skipped)
    with _LazyWriter(out, channels, overwrite=overwrite, meta=meta) as writer:
        for subject, image, done in _each_volume(subjects, channels=channels, size=size, margin=margin,
                                                 scaling=scaling, percentile=percentile, progress=progress):
            writer.append(image, [{"subject": subject.id, "source": str(subject.file(channels[0]).parent),
                                   "split": splits[subject.id], **done}])
    store = SliceStore.open(out)
    if progress:
        counts = store.manifest["split"].value_counts().to_dict()
        print(f"wrote {store.path}: {len(store)} volumes {store.image_shape} ({counts})")
    return store


def prepare_volume_slices(source, out, *, channels: Sequence[str] = DEFAULT_CHANNELS, size: int = 64,
                          margin: int = DEFAULT_MARGIN, reference: str = "flair", min_foreground: float = 0.15,
                          scaling: str = "max", percentile: float = 99.5, test_fraction: float = 0.25,
                          n_test: int | None = None, seed: int = 0, max_subjects: int | None = None,
                          overwrite: bool = False, progress: bool = True) -> SliceStore:
    """The axial slices ``(n, C, size, size)`` of the volumes :func:`prepare_volume_store` would
    write with the same options: the same subjects, split and voxels, as a slice store (with
    ``z`` and ``prev`` / ``next``), for a 2D model to set beside a 3D one.  Slices with less than
    ``min_foreground`` of non-zero pixels in ``reference`` are left out, as in a slice store.

    >>> slices = prepare_volume_slices("data/phantom", "runs/vs/store", size=32)      # doctest: +SKIP
    """
    channels = list(channels)
    if size is None:
        raise DataError("size: the slices of volumes need a cube edge (e.g. 64)")
    if reference not in channels or reference in LABEL_CONTRASTS:
        raise DataError(f"reference must be one of the intensity channels {[c for c in channels if c not in LABEL_CONTRASTS]}, "
                        f"got {reference!r}")
    if not 0 <= min_foreground <= 1:
        raise DataError(f"min_foreground must be in [0, 1], got {min_foreground}")
    subjects, skipped, splits = _checked_subjects(source, channels=channels, size=size, margin=margin,
                                                  test_fraction=test_fraction, n_test=n_test, seed=seed,
                                                  max_subjects=max_subjects)
    meta = _meta(source, size=size, margin=margin, scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                 n_test=n_test, seed=seed, max_subjects=max_subjects, splits=splits, skipped=skipped)
    meta["slice_rule"] = (f"axial planes of each volume with at least {min_foreground} non-zero pixels in {reference}")
    meta["options"].update(reference=reference, min_foreground=min_foreground)
    ref = channels.index(reference)
    seg = channels.index("seg") if "seg" in channels else None
    with StoreWriter(out, channels=channels, height=size, width=size, kind="real", meta=meta,
                     overwrite=overwrite) as writer:
        for subject, image, done in _each_volume(subjects, channels=channels, size=size, margin=margin,
                                                 scaling=scaling, percentile=percentile, progress=progress):
            zs = np.flatnonzero((image[ref] > 0).mean(axis=(1, 2)) >= min_foreground)
            base, kept = len(writer), set(zs.tolist())
            row_of = {z: base + j for j, z in enumerate(zs.tolist())}
            writer.append(np.ascontiguousarray(image[:, zs].transpose(1, 0, 2, 3)), [{
                "subject": subject.id, "source": str(subject.file(channels[0]).parent), "split": splits[subject.id],
                "z": int(z), "label": int((image[seg, z] > 0).any()) if seg is not None else None,
                "prev": row_of.get(z - 1) if (z - 1) in kept else None,
                "next": row_of.get(z + 1) if (z + 1) in kept else None,
                "crop": done["crop"], "voxel_mm": done["voxel_mm"]} for z in zs.tolist()])
    store = SliceStore.open(out)
    if progress:
        counts = store.manifest["split"].value_counts().to_dict()
        print(f"wrote {store.path}: {len(store)} axial slices {store.image_shape} of {len(subjects)} cropped, "
              f"resampled volumes ({counts})")
    return store


class _LazyWriter:
    """A :class:`StoreWriter` opened at the first volume, when the volume shape is known."""

    def __init__(self, out, channels, *, overwrite, meta, kind="real"):
        self.args = dict(channels=channels, kind=kind, meta=meta, overwrite=overwrite)
        self.out = out
        self.writer: StoreWriter | None = None

    def __enter__(self):
        return self

    def append(self, image: np.ndarray, rows):
        if self.writer is None:
            _, d, h, w = image.shape
            self.writer = StoreWriter(self.out, height=h, width=w, depth=d, **self.args).__enter__()
        return self.writer.append(image, rows)

    def __exit__(self, exc_type, exc, tb):
        if self.writer is None:
            if exc_type is None:
                raise DataError(f"{self.out}: no volumes to write")
            return False
        return self.writer.__exit__(exc_type, exc, tb)


def axial_slice_store(volumes: SliceStore, out, *, reference: str | None = None, min_foreground: float = 0.15,
                      overwrite: bool = False, progress: bool = True) -> SliceStore:
    """Every axial plane of every volume of ``volumes`` with at least ``min_foreground`` non-zero
    pixels in the ``reference`` channel (default: flair if present, else the first intensity
    channel), as a slice store ``(n, C, H, W)`` with ``z`` and ``prev`` / ``next`` links.

    Real volumes keep subject, source and split on every slice; synthetic volumes keep model,
    run and seed, plus ``volume`` (the volume's row) on each slice, so a slice's match can be
    traced back to its volume.  The store's kind is the volumes' kind.

    >>> slices = axial_slice_store(open_store("runs/vol/store"), "runs/vol/slices")   # doctest: +SKIP
    """
    if not isinstance(volumes, SliceStore) or not volumes.is_volume:
        what = f"a store of 2D images {volumes.image_shape}" if isinstance(volumes, SliceStore) else type(volumes).__name__
        raise DataError(f"{getattr(volumes, 'path', volumes)}: axial_slice_store needs a store of 3D volumes, got {what}")
    if not 0 <= min_foreground <= 1:
        raise DataError(f"min_foreground must be in [0, 1], got {min_foreground}")
    labels = set(volumes.label_channels)
    intensity = [c for c in volumes.channels if c not in labels]
    if reference is None:
        reference = "flair" if "flair" in intensity else (intensity[0] if intensity else volumes.channels[0])
    ref = volumes.channel_index(reference)
    c, d, h, w = volumes.image_shape
    manifest = volumes.manifest
    keep_cols = [k for k in ("subject", "source", "split", "model", "run", "seed") if k in manifest.columns]
    meta = {"volumes": str(Path(volumes.path).resolve()), "volume_store_id": volumes.meta.get("id"),
            "options": {"reference": reference, "min_foreground": min_foreground},
            "slice_rule": "axial planes of each volume with enough foreground in the reference channel"}
    for key in ("subjects", "orientation", "model", "run"):
        if key in volumes.meta:
            meta[key] = volumes.meta[key]
    seg = volumes.channels.index("seg") if "seg" in volumes.channels else None
    with StoreWriter(out, channels=volumes.channels, label_channels=volumes.label_channels, height=h, width=w,
                     kind=volumes.kind, meta=meta, overwrite=overwrite) as writer:
        for pos in tqdm(range(len(volumes)), desc="slicing volumes", unit="volume", disable=not progress):
            vol = volumes[pos]
            frac = (vol[ref] > 0).mean(axis=(1, 2))
            zs = np.flatnonzero(frac >= min_foreground)
            if not len(zs):
                continue
            row = manifest.iloc[pos]
            base = len(writer)
            kept = set(zs.tolist())
            row_of = {z: base + j for j, z in enumerate(zs.tolist())}
            common = {k: (None if _missing(row[k]) else row[k]) for k in keep_cols}
            rows = [{**common, "volume": int(volumes.rows[pos]), "z": int(z),
                     "label": int((vol[seg, z] > 0).any()) if seg is not None else None,
                     "prev": row_of.get(z - 1) if (z - 1) in kept else None,
                     "next": row_of.get(z + 1) if (z + 1) in kept else None} for z in zs.tolist()]
            writer.append(np.ascontiguousarray(vol[:, zs].transpose(1, 0, 2, 3)), rows)
    store = SliceStore.open(out)
    if progress:
        print(f"wrote {store.path}: {len(store)} axial slices {store.image_shape} of {len(volumes)} volumes")
    return store


def _missing(value) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


#: how a brain data set is laid out in a store: the study's padded axial slices, cubes of the
#: brain (3D), or the axial slices of those cubes (2D on the same voxels as 3D)
LAYOUTS = ("slices", "volumes", "volume_slices")


def prepare_brain(source, out, *, layout: str = "slices", channels: Sequence[str] = DEFAULT_CHANNELS,
                  size: int = 64, reference: str = "flair", min_foreground: float = 0.15, scaling: str = "max",
                  percentile: float = 99.5, margin: int = DEFAULT_MARGIN, test_fraction: float = 0.25,
                  n_test: int | None = None, seed: int = 0, max_subjects: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> SliceStore:
    """A store of a BraTS-layout folder in one of :data:`LAYOUTS` (the one switch of the prepare
    notebook and ``workbench data prepare --layout``):

    - ``"slices"``: axial slices padded to 256 and resized to ``size`` (Akbar et al.'s setting;
      :func:`~workbench.data.prepare.prepare_brats_store`);
    - ``"volumes"``: one ``size``³ cube of the brain per subject (:func:`prepare_volume_store`),
      for a 3D model (``model="ldm3d"``);
    - ``"volume_slices"``: the axial slices of those cubes (:func:`prepare_volume_slices`), for a
      2D model on the same subjects and voxels as a 3D one.

    Every layout holds out the same subjects for the same ``seed``.
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    common = dict(channels=channels, size=size, scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                  n_test=n_test, seed=seed, max_subjects=max_subjects, overwrite=overwrite, progress=progress)
    if layout == "slices":
        from .prepare import prepare_brats_store

        return prepare_brats_store(source, out, reference=reference, min_foreground=min_foreground, **common)
    if layout == "volumes":
        return prepare_volume_store(source, out, margin=margin, **common)
    return prepare_volume_slices(source, out, margin=margin, reference=reference, min_foreground=min_foreground,
                                 **common)
