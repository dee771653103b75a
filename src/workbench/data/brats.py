"""Read BraTS-layout folders: one folder per subject, ``<ID>/<ID>_<contrast>.nii[.gz]``.

Both BraTS 2020 (``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``) and BraTS 2021
(``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz``) use this naming, as does the built-in phantom
(``Phantom_001/Phantom_001_flair.nii.gz``).  Volumes are reoriented to RAS+ with
``nibabel.as_closest_canonical`` so that axial slices are ``volume[:, :, z]`` whatever the
affine of the file.

Every problem with an input file is a :class:`~workbench.errors.DataError` that names the file.
A folder that holds NIfTI files but none named ``<folder>_<contrast>.nii[.gz]`` is not a subject;
:func:`scan_subjects` lists such folders with the reason, and :func:`find_subjects` warns about
them.
"""
from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from .store import LABEL_CHANNEL_NAMES

CONTRASTS = ("t1", "t1ce", "t2", "flair", "seg")
#: the contrasts that are label maps (read and resized as labels); the rule lives with the store
LABEL_CONTRASTS = tuple(c for c in CONTRASTS if c in LABEL_CHANNEL_NAMES)
BRATS_LABELS = (0, 1, 2, 4)
_SUFFIXES = (".nii.gz", ".nii")
# Contrast names of other releases, for the "expected <folder>_<contrast>" hint only (BraTS 2023
# names files <ID>-t1n / -t1c / -t2w / -t2f / -seg).
_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t1gd": "t1ce", "t2w": "t2", "t2f": "flair", "flair": "flair",
            "t1ce": "t1ce", "t1": "t1", "t2": "t2", "seg": "seg"}
_CONTRAST_TAIL = re.compile(r"(?:^|[_\-. ])(" + "|".join(sorted(_ALIASES, key=len, reverse=True)) + r")$", re.IGNORECASE)


@dataclass
class Subject:
    """One subject folder and the NIfTI file of each contrast found in it."""

    id: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    def file(self, contrast: str) -> Path:
        if contrast not in self.files:
            named = {p.name for p in self.files.values()}
            others = [n for n in nifti_files(self.folder) if n not in named]
            other = f"; other NIfTI files there: {_names(others)}" if others else ""
            raise DataError(
                f"{self.folder}: missing {self.id}_{contrast}.nii.gz (or .nii); "
                f"found {sorted(self.files) or 'no contrast files'}{other}"
            )
        return self.files[contrast]


def _names(names, limit: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def nifti_files(folder) -> list[str]:
    """Names of the NIfTI files (``.nii`` / ``.nii.gz``, any case) directly in ``folder``, sorted."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_SUFFIXES))


def _split_suffix(file_name: str) -> tuple[str, str]:
    suffix = next(s for s in _SUFFIXES if file_name.lower().endswith(s))
    return file_name[: -len(suffix)], suffix


def _expected_name(folder: str, file_name: str) -> str:
    """The name the reader wants for ``file_name`` in ``folder``: ``<folder>_<contrast><suffix>``."""
    stem, suffix = _split_suffix(file_name)
    tail = _CONTRAST_TAIL.search(stem)
    contrast = _ALIASES[tail.group(1).lower()] if tail else "<contrast>"
    return f"{folder}_{contrast}{suffix}"


def _misnamed_reason(folder: Path, names: list[str]) -> str:
    example = next((n for n in names if _CONTRAST_TAIL.search(_split_suffix(n)[0])), names[0])
    return (f"holds {len(names)} NIfTI file(s) but none named <folder>_<contrast>.nii.gz: "
            f"{example} should be {_expected_name(folder.name, example)} (contrasts {', '.join(CONTRASTS)}); "
            f"not read")


def _contrast_files(folder: Path) -> dict[str, Path]:
    files = {}
    for contrast in CONTRASTS:
        for suffix in _SUFFIXES:
            candidate = folder / f"{folder.name}_{contrast}{suffix}"
            if candidate.is_file():
                files[contrast] = candidate
                break
    return files


def scan_subjects(folder, *, channels=CONTRASTS) -> tuple[list[Subject], list[dict]]:
    """The subjects under ``folder`` (sorted by id) and the sub-folders skipped, with the reason.

    A sub-folder is a subject when it holds at least one ``<name>_<contrast>.nii[.gz]`` file;
    every contrast in ``channels`` must then be present.  A sub-folder that holds NIfTI files
    none of which is named that way is skipped and listed as ``{"folder": name, "reason": ...}``
    (the reason names a file it holds and the name expected).  When no sub-folder is a subject
    the :class:`~workbench.errors.DataError` says what the folder holds instead.

    >>> subjects, skipped = scan_subjects("data/BraTS2021")      # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    unknown = [c for c in channels if c not in CONTRASTS]
    if unknown:
        raise DataError(f"unknown channel(s) {unknown}; BraTS contrasts are {list(CONTRASTS)}")
    subjects, skipped = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _contrast_files(sub)
        if files:
            subject = Subject(sub.name, sub, files)
            for contrast in channels:
                subject.file(contrast)  # raises with the folder and the missing file
            subjects.append(subject)
        else:
            names = nifti_files(sub)
            if names:
                skipped.append({"folder": sub.name, "reason": _misnamed_reason(sub, names)})
    if not subjects:
        raise DataError(f"{folder}: no BraTS subject folders found (expected <ID>/<ID>_t1.nii.gz, "
                        f"<ID>/<ID>_flair.nii.gz, ...; see data/README.md); {_what_is_there(folder, skipped)}")
    return subjects, skipped


def _what_is_there(folder: Path, skipped: list[dict]) -> str:
    """What a folder without subjects holds, for the error message."""
    if skipped:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more folder(s) like it)" if len(skipped) > 1 else ""
        reason = first["reason"].removesuffix("; not read")
        return f"found {len(skipped)} folder(s) with misnamed NIfTI files: {first['folder']} {reason}{more}"
    flat = nifti_files(folder)
    if flat:
        return (f"found NIfTI files directly in the folder ({_names(flat)}); "
                f"each subject needs its own folder <ID>/ holding <ID>_<contrast>.nii.gz")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if any(_contrast_files(d) for d in sorted(sub.iterdir()) if d.is_dir()):
            return f"found no subject here, but {sub} holds subject folders: did you mean {sub}?"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    return f"found {_names(entries, 8) if entries else 'nothing'}"


def find_subjects(folder, *, channels=CONTRASTS) -> list[Subject]:
    """List the BraTS-layout subjects under ``folder``, sorted by id.

    A sub-folder counts as a subject when it holds at least one ``<name>_<contrast>.nii[.gz]``
    file; every contrast in ``channels`` must then be present.  Sub-folders that hold NIfTI
    files under other names are skipped with a warning (see :func:`scan_subjects`).

    >>> subjects = find_subjects("data/BraTS2021")          # doctest: +SKIP
    >>> subjects[0].file("flair")                           # doctest: +SKIP
    PosixPath('data/BraTS2021/BraTS2021_00000/BraTS2021_00000_flair.nii.gz')
    """
    subjects, skipped = scan_subjects(folder, channels=channels)
    for item in skipped:
        warnings.warn(f"{Path(folder) / item['folder']}: {item['reason']}", stacklevel=2)
    return subjects


def read_volume(path) -> np.ndarray:
    """Read one NIfTI volume as float32 in RAS+ orientation, checking it is whole and finite.

    The file must hold one 3D volume of real numbers: a 2D image, a 4D series of several
    volumes, an empty volume or complex / RGB voxels are a :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise DataError(f"{path.name}: cannot read NIfTI ({type(err).__name__}: {err}); the file may be truncated or not NIfTI") from None
    shape = tuple(int(n) for n in img.shape)
    dims = shape
    while len(dims) > 3 and dims[-1] == 1:  # (X, Y, Z, 1): one volume stored as a series
        dims = dims[:-1]
    if len(dims) < 3:
        raise DataError(f"{path.name}: expected a 3D volume, found a {len(shape)}D image of shape {shape}")
    if len(dims) > 3:
        raise DataError(f"{path.name}: expected one 3D volume, found {prod(dims[3:])} volumes (shape {shape}); "
                        f"save the volume to use in a file of its own")
    if 0 in dims:
        raise DataError(f"{path.name}: volume of shape {shape} holds no voxels")
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise DataError(f"{path.name}: voxels of type {dtype} are not real numbers (complex or RGB NIfTI); "
                        f"expected a grayscale intensity volume")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below as non-finite voxels
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(dims)
        ornt = nib.orientations.io_orientation(img.affine)
        data = nib.orientations.apply_orientation(data, ornt)  # what nib.as_closest_canonical does, on 3D data
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(f"{path.name}: cannot read NIfTI ({type(err).__name__}: {err}); the file may be truncated or not NIfTI") from None
    except nib.orientations.OrientationError as err:
        raise DataError(f"{path.name}: cannot reorient to RAS+ ({err}); the affine in its header may be broken") from None
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{path.name}: {bad} non-finite voxels (NaN or inf, or beyond the float32 range)")
    return data


def read_subject(subject: Subject, channels=CONTRASTS) -> dict[str, np.ndarray]:
    """Read the requested contrasts of one subject; all must have the same shape."""
    volumes: dict[str, np.ndarray] = {}
    first = None
    for contrast in channels:
        path = subject.file(contrast)
        vol = read_volume(path)
        if first is None:
            first = (contrast, vol.shape)
        elif vol.shape != first[1]:
            raise DataError(f"{path.name}: shape {vol.shape} does not match {first[0]} {first[1]}")
        if contrast in LABEL_CONTRASTS:
            labels = np.unique(vol)
            odd = [int(v) if float(v).is_integer() else v for v in labels.tolist() if v not in BRATS_LABELS]
            if odd:
                raise DataError(f"{path.name}: segmentation has values {odd[:5]} outside the BraTS labels {list(BRATS_LABELS)}")
        volumes[contrast] = vol
    return volumes
