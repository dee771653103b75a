"""Build a SliceStore of axial slices from a BraTS-layout folder, one subject at a time.

The store is streamed: each subject's volumes are read, sliced and appended, so memory holds
one subject at a time whatever the size of the dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from . import slicing
from .brats import CONTRASTS, LABEL_CONTRASTS, find_subjects, read_subject
from .store import SliceStore, StoreWriter

DEFAULT_CHANNELS = CONTRASTS  # t1, t1ce, t2, flair, seg (the study's five channels)


def split_subjects(subject_ids: Sequence[str], *, test_fraction: float = 0.25,
                   n_test: int | None = None, seed: int = 0) -> dict[str, str]:
    """Assign each subject to ``"train"`` or ``"test"``, seeded; no subject is in both.

    >>> split_subjects(["a", "b", "c", "d"], n_test=1, seed=0)     # doctest: +SKIP
    {'a': 'train', 'b': 'test', 'c': 'train', 'd': 'train'}
    """
    ids = sorted(subject_ids)
    if n_test is None:
        if not 0 <= test_fraction < 1:
            raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
        n_test = int(round(test_fraction * len(ids)))
        if test_fraction > 0 and len(ids) > 1:
            n_test = max(1, n_test)
    if not 0 <= n_test < len(ids):
        raise DataError(f"cannot hold out {n_test} test subjects of {len(ids)}: at least one must stay for training")
    order = np.random.default_rng(seed).permutation(len(ids))
    test = {ids[i] for i in order[:n_test]}
    return {s: ("test" if s in test else "train") for s in ids}


def volume_to_slices(volumes: dict[str, np.ndarray], *, channels: Sequence[str], reference: str,
                     min_foreground: float, pad: int | None, size: int | None,
                     scaling: str, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``(n, C, size, size)`` in [0, 1] and their z indices, for one subject's volumes."""
    frac = slicing.foreground_fraction(volumes[reference])
    zs = np.flatnonzero(frac >= min_foreground)
    chans = []
    for c in channels:
        vol = volumes[c]
        vol = slicing.scale_labels(vol) if c in LABEL_CONTRASTS else slicing.scale_intensity(vol, method=scaling, percentile=percentile)
        sl = slicing.axial_slices(vol, zs)
        if pad:
            sl = slicing.pad_to(sl, pad)
        if size:
            sl = slicing.resize(sl, size, labels=c in LABEL_CONTRASTS)
        chans.append(sl)
    return np.stack(chans, axis=1).astype(np.float32), zs


def prepare_brats_store(source, out, *, channels: Sequence[str] = DEFAULT_CHANNELS, size: int | None = 64,
                        pad: int | None = 256, reference: str = "flair", min_foreground: float = 0.15,
                        scaling: str = "max", percentile: float = 99.5, test_fraction: float = 0.25,
                        n_test: int | None = None, seed: int = 0, max_subjects: int | None = None,
                        overwrite: bool = False, progress: bool = True) -> SliceStore:
    """Slice a BraTS-layout folder into a SliceStore with a seeded train/test split by subject.

    Parameters
    ----------
    source : folder of subject folders (``<ID>/<ID>_<contrast>.nii[.gz]``).
    out : store folder to write.
    channels : contrasts to keep, in order (default t1, t1ce, t2, flair, seg).
    size : final image size (64, 128 or 256) or None to keep the padded size.
    pad : zero-pad slices to this size first (240 -> 256 as in the study) or None.
    reference : contrast whose foreground decides which slices are kept.
    min_foreground : keep slices where at least this fraction of pixels is non-zero.
    scaling : ``"max"`` (divide each volume by its maximum) or ``"percentile"``.
    test_fraction / n_test : how many subjects to hold out (by subject, never by slice).
    seed : seed of the split (written to the store's metadata).

    >>> store = prepare_brats_store("data/BraTS2021", "runs/brats64", size=64)   # doctest: +SKIP
    >>> store.where(split="train")                                              # doctest: +SKIP
    """
    channels = list(channels)
    if size is not None and not 8 <= size <= 1024:
        raise DataError(f"size must be an image size such as 64, 128 or 256, got {size}")
    if not 0 <= min_foreground <= 1:
        raise DataError(f"min_foreground must be in [0, 1], got {min_foreground}")
    if reference not in CONTRASTS or reference in LABEL_CONTRASTS:
        raise DataError(f"reference must be an intensity contrast of {list(CONTRASTS[:4])}, got {reference!r}")
    needed = list(dict.fromkeys(channels + [reference]))
    subjects = find_subjects(source, channels=needed)
    if max_subjects:
        subjects = subjects[:max_subjects]
    splits = split_subjects([s.id for s in subjects], test_fraction=test_fraction, n_test=n_test, seed=seed)
    meta = {
        "source": str(Path(source).resolve()),
        "options": dict(size=size, pad=pad, reference=reference, min_foreground=min_foreground,
                        scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                        n_test=n_test, seed=seed, max_subjects=max_subjects),
        "orientation": "axial slices of RAS+ volumes, anterior up, subject's left on image left",
        "subjects": {"train": sum(v == "train" for v in splits.values()), "test": sum(v == "test" for v in splits.values())},
    }
    first = read_subject(subjects[0], needed)  # read once here to learn the slice size
    h = size or pad or first[reference].shape[1]
    w = size or pad or first[reference].shape[0]
    with StoreWriter(out, channels=channels, height=h, width=w, kind="real", meta=meta, overwrite=overwrite) as writer:
        bar = tqdm(subjects, desc="slicing subjects", unit="subject", disable=not progress)
        for i, subject in enumerate(bar):
            volumes = first if i == 0 else read_subject(subject, needed)
            images, zs = volume_to_slices(volumes, channels=channels, reference=reference, min_foreground=min_foreground,
                                          pad=pad, size=size, scaling=scaling, percentile=percentile)
            if len(zs) == 0:
                continue
            base = len(writer)
            kept = set(zs.tolist())
            row_of = {z: base + j for j, z in enumerate(zs.tolist())}
            has_tumour = (volumes["seg"] > 0).any(axis=(0, 1)) if "seg" in volumes else None
            source_file = str(subject.file(reference))
            rows = [{
                "subject": subject.id, "source": source_file, "z": int(z), "split": splits[subject.id],
                "label": int(has_tumour[z]) if has_tumour is not None else None,
                "prev": row_of[z - 1] if (z - 1) in kept else None,
                "next": row_of[z + 1] if (z + 1) in kept else None,
            } for z in zs.tolist()]
            writer.append(images, rows)
            bar.set_postfix(slices=len(writer))
        if len(writer) == 0:
            raise DataError(f"{source}: no slice has at least {min_foreground:.0%} foreground in {reference}; nothing to store")
    store = SliceStore.open(out)
    if progress:
        counts = store.manifest["split"].value_counts().to_dict()
        print(f"wrote {store.path}: {len(store)} slices {store.image_shape} from {len(subjects)} subjects ({counts})")
    return store
