"""Tests of the built-in brain phantom (workbench.data.phantom).

Generating a subject takes a few seconds, so the folders are made once per module and shared.
"""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from workbench.data.phantom import (
    PHANTOM_CONTRASTS,
    _descrip,
    brain_phantom_subject,
    write_brain_phantom,
)
from workbench.errors import DataError

SHAPE = (240, 240, 155)
MID = 77  # mid-brain axial slice


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """seed 0, two subjects, written by the default process pool."""
    out = tmp_path_factory.mktemp("phantom") / "two"
    return write_brain_phantom(out, subjects=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """seed 0, one subject, written in this process."""
    out = tmp_path_factory.mktemp("phantom") / "one"
    return write_brain_phantom(out, subjects=1, seed=0, progress=False, workers=1)


@pytest.fixture(scope="module")
def truth():
    """Subject 1 of seed 0 in memory, with its ground-truth tissue probabilities."""
    return brain_phantom_subject(1, seed=0, tissues=True)


def load(folder, contrast):
    return nib.load(folder / f"{folder.name}_{contrast}.nii.gz")


def slice64(volume, z=MID):
    """Axial slice z, area-downsampled to 64 x 64 (what the demo trains on)."""
    image = torch.from_numpy(np.asarray(volume[:, :, z], dtype=np.float32))[None]
    return torch.nn.functional.adaptive_avg_pool2d(image, 64)[0].numpy().ravel()


# --------------------------------------------------------------------------------------------
# layout and headers
# --------------------------------------------------------------------------------------------


def test_layout_and_headers(two):
    out = two[0].parent
    assert [f.name for f in two] == ["Phantom_001", "Phantom_002"]
    assert sorted(p.name for p in out.iterdir()) == ["Phantom_001", "Phantom_002", "README.txt"]
    for folder in two:
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(f"{folder.name}_{c}.nii.gz" for c in PHANTOM_CONTRASTS)
        for contrast in PHANTOM_CONTRASTS:
            img = load(folder, contrast)
            assert img.shape == SHAPE
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # as BraTS (SRI24)
            assert img.header.get_sform(coded=True)[1] > 0 and img.header.get_qform(coded=True)[1] > 0
            assert img.get_data_dtype() == (np.uint8 if contrast == "seg" else np.int16)
            descrip = img.header["descrip"].item().decode()
            assert descrip.startswith("PHANTOM") and "not patient data" in descrip
            canonical = nib.as_closest_canonical(img)
            assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    readme = (out / "README.txt").read_text()
    assert "NOT PATIENT DATA" in readme and "seed:     0" in readme and "write_brain_phantom(" in readme


def test_descrip_fits_the_header():
    assert len(_descrip(0, 1)) <= 80
    assert len(_descrip(2**63, 999)) <= 80 and _descrip(2**63, 999).startswith("PHANTOM")


def test_intensity_range_like_brats(two):
    data = np.asarray(load(two[0], "t1").dataobj)
    brain = data > 0
    assert 200 < np.percentile(data[brain], 1) and np.percentile(data[brain], 99.9) < 3000


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------


def test_segmentation_labels(two):
    for folder in two:
        seg = np.asarray(load(folder, "seg").dataobj)
        values, counts = np.unique(seg, return_counts=True)
        assert set(values.tolist()) == {0, 1, 2, 4}
        count = dict(zip(values.tolist(), counts.tolist()))
        assert count[2] > count[1] and count[2] > count[4]  # oedema is the largest
        brain = np.asarray(load(folder, "t1").dataobj) > 0
        assert brain[seg > 0].all()  # the tumour lies inside the brain


def test_enhancing_rim_surrounds_necrosis(truth):
    seg = truth["seg"]
    core = seg == 1
    shell = np.zeros_like(core)
    for axis in range(3):
        for step in (1, -1):
            shell |= np.roll(core, step, axis=axis)
    neighbours = seg[shell & ~core]
    assert (neighbours == 4).mean() > 0.9  # the core touches (almost) only the rim


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_prefix(two, one):
    """subjects=1 (one process) == first subject of subjects=2 (process pool), byte for byte."""
    for contrast in PHANTOM_CONTRASTS:
        a = (one[0] / f"Phantom_001_{contrast}.nii.gz").read_bytes()
        b = (two[0] / f"Phantom_001_{contrast}.nii.gz").read_bytes()
        assert a == b, contrast
        assert a[4:8] == b"\0\0\0\0"  # gzip mtime is zero
        assert gzip.decompress(a)[:4] == (348).to_bytes(4, "little")  # NIfTI-1 header


def test_written_files_match_memory(one, truth):
    for contrast in PHANTOM_CONTRASTS:
        assert np.array_equal(np.asarray(load(one[0], contrast).dataobj), truth[contrast]), contrast


def test_other_seed_differs(tmp_path, one):
    other = write_brain_phantom(tmp_path / "seed1", subjects=1, seed=1, progress=False, workers=1)
    a = np.asarray(load(one[0], "t1").dataobj)
    b = np.asarray(load(other[0], "t1").dataobj)
    assert not np.array_equal(a, b)
    assert "seed=1 subject=1" in load(other[0], "t1").header["descrip"].item().decode()


# --------------------------------------------------------------------------------------------
# contrasts
# --------------------------------------------------------------------------------------------


def test_background_is_zero(truth):
    brain = (truth["csf"] + truth["gm"] + truth["wm"]) > 0.5
    for contrast in PHANTOM_CONTRASTS[:4]:
        assert (truth[contrast][~brain] == 0).all(), contrast
        assert (truth[contrast][brain] > 0).all(), contrast
    assert 1.2e6 < brain.sum() < 2.4e6  # a brain of roughly 1.2 - 2.4 litres


def test_relative_intensities(truth):
    normal = truth["seg"] == 0
    tissue = {name: (truth[name] > 0.9) & normal for name in ("csf", "gm", "wm")}
    assert all(mask.sum() > 1000 for mask in tissue.values())

    def mean(contrast, mask):
        return float(truth[contrast][mask].mean())

    csf, gm, wm = tissue["csf"], tissue["gm"], tissue["wm"]
    seg = truth["seg"]
    assert mean("t1", csf) < mean("t1", gm) < mean("t1", wm)
    assert mean("t1ce", seg == 4) > max(mean("t1ce", wm), mean("t1ce", gm), mean("t1ce", seg == 2))
    assert mean("t2", csf) > mean("t2", gm) > mean("t2", wm)
    assert mean("t2", seg == 2) > 1.3 * mean("t2", wm)
    assert mean("flair", csf) < 0.5 * mean("flair", wm) < mean("flair", wm) < mean("flair", gm)
    assert mean("flair", seg == 2) > max(mean("flair", gm), mean("flair", seg == 4))


def test_subjects_look_like_different_people(two):
    """Matching mid-brain slices of two subjects correlate clearly less than a slice with itself.

    Observed for seed 0 at 64 x 64: r ~ 0.86 - 0.92 between subjects, 0.998 between adjacent
    slices of one subject.
    """
    for contrast in ("t1", "t2", "flair"):
        a, b = (slice64(np.asarray(load(f, contrast).dataobj)) for f in two)
        r = np.corrcoef(a, b)[0, 1]
        assert 0.5 < r < 0.96, (contrast, r)
        same = slice64(np.asarray(load(two[0], contrast).dataobj), MID + 1)
        assert np.corrcoef(a, same)[0, 1] > r + 0.03


# --------------------------------------------------------------------------------------------
# arguments and existing output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subjects": 0},
        {"subjects": -2},
        {"subjects": 1.5},
        {"subjects": True},
        {"subjects": "3"},
        {"subjects": 1000},
        {"seed": -1},
        {"seed": 0.5},
        {"workers": 0},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(DataError):
        write_brain_phantom(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_out_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_brain_phantom(tmp_path / "file", subjects=1, progress=False)


def test_brain_phantom_subject_checks_arguments():
    with pytest.raises(DataError):
        brain_phantom_subject(0)
    with pytest.raises(DataError):
        brain_phantom_subject(1, seed=-3)


def test_existing_output_needs_overwrite(tmp_path, one):
    out = tmp_path / "again"
    (out / "Phantom_001").mkdir(parents=True)  # an incomplete leftover is never deleted silently
    with pytest.raises(DataError, match="Phantom_001.*overwrite=True"):
        write_brain_phantom(out, subjects=1, progress=False)
    folders = write_brain_phantom(out, subjects=1, seed=0, progress=False, overwrite=True, workers=1)
    for contrast in PHANTOM_CONTRASTS:  # the same seed twice gives the same bytes
        name = f"Phantom_001_{contrast}.nii.gz"
        assert (folders[0] / name).read_bytes() == (one[0] / name).read_bytes()
    with pytest.raises(DataError, match="complete"):
        write_brain_phantom(out, subjects=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["Phantom_001", "README.txt"]  # no temp leftovers
