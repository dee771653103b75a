"""Build a SliceStore of axial slices from a BraTS-layout folder, one subject at a time.

The store is streamed: each subject's volumes are read, sliced and appended, so memory holds
one subject at a time whatever the size of the dataset.

Subjects without a usable slice are dropped *before* the train/test split is drawn: a first
pass reads each subject's reference contrast (``flair`` by default) and drops the subjects where
no axial slice has ``min_foreground`` of non-zero pixels; the seeded split is then drawn among
the subjects that have slices, so ``n_test`` held-out subjects are ``n_test`` subjects with
images.  Every dropped subject and every skipped folder is printed and recorded in the store's
``store.json`` (``dropped``, ``skipped_folders``); the subject counts there count the subjects
stored.  A split that would be empty is an error, and nothing is written.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from ..progress import tqdm

from ..errors import DataError, option_hint
from . import slicing
from .brats import CONTRASTS, LABEL_CONTRASTS, Subject, read_subject, read_volume, scan_subjects
from .store import SliceStore, StoreWriter

DEFAULT_CHANNELS = CONTRASTS  # t1, t1ce, t2, flair, seg (the study's five channels)
# At most this many dropped subjects / skipped folders are printed one per line; store.json lists all.
_REPORT_LINES = 20


def held_out_count(n: int, *, test_fraction: float = 0.25, n_test: int | None = None) -> int:
    """How many of ``n`` subjects to hold out: ``n_test``, or ``round(test_fraction * n)``.

    With a fraction, at least one subject is held out when ``test_fraction > 0`` and ``n > 1``.

    >>> held_out_count(10, test_fraction=0.25), held_out_count(2, test_fraction=0.1), held_out_count(1)
    (2, 1, 0)
    """
    if n_test is not None:
        return n_test
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    count = int(round(test_fraction * n))
    if test_fraction > 0 and n > 1:
        count = max(1, count)
    return count


def split_subjects(subject_ids: Sequence[str], *, test_fraction: float = 0.25,
                   n_test: int | None = None, seed: int = 0) -> dict[str, str]:
    """Assign each subject to ``"train"`` or ``"test"``, seeded; no subject is in both.

    >>> split_subjects(["a", "b", "c", "d"], n_test=1, seed=0)     # doctest: +SKIP
    {'a': 'train', 'b': 'test', 'c': 'train', 'd': 'train'}
    """
    ids = sorted(subject_ids)
    n_test = held_out_count(len(ids), test_fraction=test_fraction, n_test=n_test)
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


def _pct(x: float) -> str:
    """A fraction as a percentage with up to three significant digits: 0.15 -> '15%', 0.004 -> '0.4%'."""
    return f"{100 * x:.3g}%"


def _report(lines: list[str], what: str) -> None:
    """Print a report line per dropped subject / skipped folder (at most _REPORT_LINES of them)."""
    for line in lines[:_REPORT_LINES]:
        print(f"warning: {line}")
    if len(lines) > _REPORT_LINES:
        print(f"warning: ... and {len(lines) - _REPORT_LINES} more {what} (all listed in the store's store.json)")


def _in_plane(path: Path, shape, *, pad: int | None, size: int | None, first: tuple[Path, tuple] | None) -> None:
    """Check that the axial slices of a volume fit the store: not larger than ``pad``, or all one size."""
    x, y = int(shape[0]), int(shape[1])
    if pad and (x > pad or y > pad):
        larger = 16 * math.ceil(max(x, y) / 16)
        raise DataError(f"{path.name}: axial slices are {x}x{y} voxels, larger than the {pad}x{pad} padding "
                        f"(BraTS slices are 240x240); resample the volume in-plane to at most {pad}x{pad}, "
                        f"or pad further with {option_hint('pad', larger)}")
    if not pad and not size and first is not None and (x, y) != tuple(first[1][:2]):
        raise DataError(f"{path.name}: axial slices are {x}x{y} voxels but those of {first[0].name} are "
                        f"{first[1][0]}x{first[1][1]}; a store holds one image size: pad or resize with "
                        f"{option_hint('pad', 256)} or {option_hint('size', 64)}")


def _too_few_subjects(source, kept: list[str], dropped: list[dict], n_found: int, n_hold: int, *,
                      reference: str, min_foreground: float, n_test: int | None, test_fraction: float) -> DataError:
    """The error for a split that dropping subjects without slices would leave empty."""
    rule = (f"a slice with at least {_pct(min_foreground)} foreground in its {reference} "
            f"({option_hint('min_foreground', min_foreground)}, {option_hint('reference', reference)})")
    names = ", ".join(f"{d['subject']} (max {_pct(d['max_foreground'])})" for d in dropped[:8])
    names += f" ... ({len(dropped)} in all)" if len(dropped) > 8 else ""
    fixes = []
    best = max(d["max_foreground"] for d in dropped)
    if best > 0:
        digits = 2 if best >= 0.01 else 4
        fixes.append(f"lower {option_hint('min_foreground', math.floor(best * 10**digits) / 10**digits)}")
    other = next(c for c in CONTRASTS if c != reference and c not in LABEL_CONTRASTS)
    fixes.append(f"use another reference contrast ({option_hint('reference', other)})")
    if any(d["max_foreground"] == 0 for d in dropped):
        fixes.append(f"remove the subjects whose {reference} is blank from {source}")
    if kept:
        fixes.append(f"hold out no subject ({option_hint('n_test' if n_test is not None else 'test_fraction', 0)})")
    fix = ", ".join(fixes[:-1]) + f" or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
    if not kept:
        return DataError(f"{source}: the train split would be empty: none of the {n_found} subjects has {rule}; "
                         f"dropped {names}; {fix}")
    asked = option_hint("n_test", n_test) if n_test is not None else option_hint("test_fraction", test_fraction)
    side = "train" if n_hold >= len(kept) else "test"
    has = "has" if len(kept) == 1 else "have"
    return DataError(f"{source}: {asked} would leave the {side} split empty: only {len(kept)} of {n_found} subjects "
                     f"({', '.join(kept[:8])}) {has} {rule}; dropped {names}; {fix}")


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
    min_foreground : keep slices where at least this fraction of pixels is non-zero.  A subject
        with no such slice is dropped (printed, and listed under ``dropped`` in ``store.json``).
    scaling : ``"max"`` (divide each volume by its maximum) or ``"percentile"``.
    test_fraction / n_test : how many subjects to hold out (by subject, never by slice).  The
        split is drawn among the subjects that have slices, after dropping the others; a split
        left empty (every subject dropped, or too few left to hold ``n_test`` out and keep one
        for training) is a :class:`DataError` and nothing is written.
    seed : seed of the split (written to the store's metadata).
    max_subjects : use only the first this many subjects (by id) that have slices.

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
    if n_test is None:
        held_out_count(2, test_fraction=test_fraction)  # checks test_fraction before any file is read
    elif n_test < 0:
        raise DataError(f"n_test must be 0 or more, got {n_test}")
    needed = list(dict.fromkeys(channels + [reference]))
    subjects, skipped = scan_subjects(source, channels=needed)
    _report([f"{Path(source) / f['folder']}: {f['reason']}" for f in skipped], "skipped folders")

    # First pass: the reference contrast of each subject decides its slices; subjects without one are dropped.
    kept: list[tuple[Subject, np.ndarray]] = []
    dropped: list[dict] = []
    first = None
    bar = tqdm(subjects, desc=f"checking {reference} foreground", unit="subject", disable=not progress)
    for subject in bar:
        if max_subjects and len(kept) >= max_subjects:
            break
        path = subject.file(reference)
        volume = read_volume(path)
        frac = slicing.foreground_fraction(volume)
        zs = np.flatnonzero(frac >= min_foreground)
        if len(zs) == 0:
            dropped.append({"subject": subject.id, "max_foreground": round(float(frac.max()), 4),
                            "reason": f"no slice of its {reference} has at least {_pct(min_foreground)} "
                                      f"foreground (max {_pct(float(frac.max()))})"})
            continue
        _in_plane(path, volume.shape, pad=pad, size=size, first=first)
        first = first or (path, volume.shape)
        kept.append((subject, zs))
    bar.close()
    _report([f"dropped {d['subject']}: {d['reason']}" for d in dropped], "dropped subjects")

    # The split is drawn among the subjects that have slices.
    ids = [subject.id for subject, _ in kept]
    n_found = len(kept) + len(dropped)
    asked = held_out_count(n_found, test_fraction=test_fraction, n_test=n_test)
    n_hold = held_out_count(len(ids), test_fraction=test_fraction, n_test=n_test)
    if not ids or (asked > 0 and not 0 < n_hold < len(ids)):
        if dropped:
            raise _too_few_subjects(source, ids, dropped, n_found, n_hold, reference=reference,
                                    min_foreground=min_foreground, n_test=n_test, test_fraction=test_fraction)
        raise DataError(f"{source}: cannot hold out {n_hold} test subject(s) of {len(ids)}: at least one must stay "
                        f"for training; set {option_hint('n_test', max(len(ids) - 1, 0))}")
    splits = split_subjects(ids, n_test=n_hold, seed=seed)
    meta = {
        "source": str(Path(source).resolve()),
        "options": dict(size=size, pad=pad, reference=reference, min_foreground=min_foreground,
                        scaling=scaling, percentile=percentile, test_fraction=test_fraction,
                        n_test=n_test, seed=seed, max_subjects=max_subjects),
        "orientation": "axial slices of RAS+ volumes, anterior up, subject's left on image left",
        "split_rule": "by subject, seeded, drawn among the subjects that have slices (after dropping the others)",
        "subjects": {"train": sum(v == "train" for v in splits.values()), "test": sum(v == "test" for v in splits.values())},
        "subjects_found": len(subjects),
        "dropped": dropped,
        "skipped_folders": skipped,
    }
    h = size or pad or int(first[1][1])  # axial slices are rotated: height is the volume's y, width its x
    w = size or pad or int(first[1][0])
    with StoreWriter(out, channels=channels, height=h, width=w, kind="real", meta=meta, overwrite=overwrite) as writer:
        bar = tqdm(kept, desc="slicing subjects", unit="subject", disable=not progress)
        for subject, _ in bar:
            volumes = read_subject(subject, needed)
            images, zs = volume_to_slices(volumes, channels=channels, reference=reference, min_foreground=min_foreground,
                                          pad=pad, size=size, scaling=scaling, percentile=percentile)
            if len(zs) == 0:  # the first pass read the same file; only a file changed meanwhile gets here
                raise DataError(f"{subject.file(reference).name}: no slice has at least {_pct(min_foreground)} "
                                f"foreground any more; did the file change while the store was written?")
            _check_finite(images, zs, subject, channels)
            base = len(writer)
            kept_z = set(zs.tolist())
            row_of = {z: base + j for j, z in enumerate(zs.tolist())}
            has_tumour = (volumes["seg"] > 0).any(axis=(0, 1)) if "seg" in volumes else None
            source_file = str(subject.file(reference))
            rows = [{
                "subject": subject.id, "source": source_file, "z": int(z), "split": splits[subject.id],
                "label": int(has_tumour[z]) if has_tumour is not None else None,
                "prev": row_of[z - 1] if (z - 1) in kept_z else None,
                "next": row_of[z + 1] if (z + 1) in kept_z else None,
            } for z in zs.tolist()]
            writer.append(images, rows)
            bar.set_postfix(slices=len(writer))
        bar.close()
    store = SliceStore.open(out)
    if progress:
        counts = store.manifest["split"].value_counts().to_dict()
        gone = f"; {len(dropped)} dropped" if dropped else ""
        print(f"wrote {store.path}: {len(store)} slices {store.image_shape} from {len(kept)} subject(s) ({counts}){gone}")
    return store


def _check_finite(images: np.ndarray, zs: np.ndarray, subject: Subject, channels: Sequence[str]) -> None:
    """Refuse non-finite slices with the file they come from (the store would only name itself)."""
    finite = np.isfinite(images)
    if finite.all():
        return
    n, c = np.argwhere(~finite)[0][:2]
    channel = channels[int(c)]
    count = int(np.size(finite) - np.count_nonzero(finite))
    raise DataError(f"{subject.file(channel).name}: slice z={int(zs[n])} has non-finite pixels after scaling "
                    f"({count} in this subject); the volume may hold extreme values")
