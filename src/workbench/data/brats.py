"""Read BraTS-layout folders: one folder per subject, ``<ID>/<ID>_<contrast>.nii[.gz]``.

Both BraTS 2020 (``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``) and BraTS 2021
(``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz``) use this naming, as does the built-in phantom
(``Phantom_001/Phantom_001_flair.nii.gz``).  Volumes are reoriented to RAS+ with
``nibabel.as_closest_canonical`` so that axial slices are ``volume[:, :, z]`` whatever the
affine of the file.

Every problem with an input file is a :class:`~workbench.errors.DataError` that names the file.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

CONTRASTS = ("t1", "t1ce", "t2", "flair", "seg")
LABEL_CONTRASTS = ("seg",)
BRATS_LABELS = (0, 1, 2, 4)
_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Subject:
    """One subject folder and the NIfTI file of each contrast found in it."""

    id: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    def file(self, contrast: str) -> Path:
        if contrast not in self.files:
            raise DataError(
                f"{self.folder}: missing {self.id}_{contrast}.nii.gz (or .nii); "
                f"found {sorted(self.files) or 'no contrast files'}"
            )
        return self.files[contrast]


def _contrast_files(folder: Path) -> dict[str, Path]:
    files = {}
    for contrast in CONTRASTS:
        for suffix in _SUFFIXES:
            candidate = folder / f"{folder.name}_{contrast}{suffix}"
            if candidate.is_file():
                files[contrast] = candidate
                break
    return files


def find_subjects(folder, *, channels=CONTRASTS) -> list[Subject]:
    """List the BraTS-layout subjects under ``folder``, sorted by id.

    A sub-folder counts as a subject when it holds at least one ``<name>_<contrast>.nii[.gz]``
    file; every contrast in ``channels`` must then be present.

    >>> subjects = find_subjects("data/BraTS2021")          # doctest: +SKIP
    >>> subjects[0].file("flair")                           # doctest: +SKIP
    PosixPath('data/BraTS2021/BraTS2021_00000/BraTS2021_00000_flair.nii.gz')
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    unknown = [c for c in channels if c not in CONTRASTS]
    if unknown:
        raise DataError(f"unknown channel(s) {unknown}; BraTS contrasts are {list(CONTRASTS)}")
    subjects = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _contrast_files(sub)
        if files:
            subject = Subject(sub.name, sub, files)
            for contrast in channels:
                subject.file(contrast)  # raises with the folder and the missing file
            subjects.append(subject)
    if not subjects:
        raise DataError(
            f"{folder}: no BraTS subject folders found (expected <ID>/<ID>_t1.nii.gz, "
            f"<ID>/<ID>_flair.nii.gz, ...; see data/README.md)"
        )
    return subjects


def read_volume(path) -> np.ndarray:
    """Read one NIfTI volume as float32 in RAS+ orientation, checking it is whole and finite."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise DataError(f"{path.name}: cannot read NIfTI ({type(err).__name__}: {err}); the file may be truncated or not NIfTI") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path.name}: expected a 3D volume, found shape {data.shape}")
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{path.name}: {bad} non-finite voxels (NaN or inf)")
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
