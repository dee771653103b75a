import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import write_subject

from workbench.data import slicing
from workbench.data.brats import find_subjects, read_subject
from workbench.data.prepare import prepare_brats_store, split_subjects
from workbench.errors import DataError


# --- slicing, padding, neighbour links and split disjointness on the phantom ---------------------

def test_phantom_store_slices_split_and_neighbours(phantom_store):
    store = phantom_store
    assert store.image_shape == (5, 32, 32) and store.channels == ["t1", "t1ce", "t2", "flair", "seg"]
    images = store.to_array()
    assert images.min() >= 0 and images.max() <= 1
    m = store.manifest.reset_index(drop=True)
    # split by subject: no subject in both splits, one held-out subject
    per_subject = m.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all()
    assert m.loc[m.split == "test", "subject"].nunique() == 1 and m.loc[m.split == "train", "subject"].nunique() == 2
    # neighbour links: prev/next are the z-1 / z+1 rows of the same subject, or <NA> at the ends
    for i, row in m.iterrows():
        for col, dz in (("prev", -1), ("next", 1)):
            if pd_na(row[col]):
                assert not ((m.subject == row.subject) & (m.z == row.z + dz)).any()
            else:
                other = m.loc[int(row[col])]
                assert other.subject == row.subject and other.z == row.z + dz
    # seg channel keeps BraTS labels / 4 (nearest-neighbour resize: no in-between values)
    assert set(np.unique(images[:, 4]).tolist()) <= {0.0, 0.25, 0.5, 1.0}
    assert m["label"].sum() > 0  # some slices carry tumour


def pd_na(v):
    import pandas as pd
    return pd.isna(v)


def test_foreground_threshold_selects_slices(phantom_dir, tmp_path):
    loose = prepare_brats_store(phantom_dir, tmp_path / "a", size=32, min_foreground=0.05, max_subjects=1, n_test=0, progress=False)
    strict = prepare_brats_store(phantom_dir, tmp_path / "b", size=32, min_foreground=0.30, max_subjects=1, n_test=0, progress=False)
    assert 0 < len(strict) < len(loose) < 155
    vol = read_subject(find_subjects(phantom_dir)[0], ["flair"])["flair"]
    frac = slicing.foreground_fraction(vol)
    assert sorted(strict.manifest["z"]) == np.flatnonzero(frac >= 0.30).tolist()


def test_padding_to_256_and_full_size(phantom_dir, tmp_path):
    store = prepare_brats_store(phantom_dir, tmp_path / "s", size=None, channels=["flair"], max_subjects=1, n_test=0, progress=False)
    assert store.image_shape == (1, 256, 256)
    img = store[len(store) // 2][0]
    assert img[:8].max() == 0 and img[-8:].max() == 0 and img[:, :8].max() == 0 and img[:, -8:].max() == 0
    assert img[8:248, 8:248].max() > 0


def test_scaling_divides_by_volume_max_or_percentile():
    vol = np.array([0, 10, 20, 40], np.float32)
    np.testing.assert_allclose(slicing.scale_intensity(vol), [0, 0.25, 0.5, 1])
    p = slicing.scale_intensity(vol, method="percentile", percentile=50)
    assert p.max() == 1 and p[1] == pytest.approx(0.5)
    with pytest.raises(DataError, match="unknown scaling"):
        slicing.scale_intensity(vol, method="zscore")


def test_split_is_seeded_and_disjoint():
    ids = [f"s{i}" for i in range(10)]
    a, b = split_subjects(ids, n_test=3, seed=1), split_subjects(ids, n_test=3, seed=1)
    assert a == b and sum(v == "test" for v in a.values()) == 3
    assert split_subjects(ids, n_test=3, seed=2) != a
    with pytest.raises(DataError, match="at least one must stay"):
        split_subjects(ids, n_test=10)


# --- readers: both BraTS namings, .nii and .nii.gz ----------------------------------------------

def test_reads_brats2020_and_2021_naming_nii_and_gz(tmp_path):
    write_subject(tmp_path, "BraTS20_Training_001")
    write_subject(tmp_path, "BraTS2021_00000", suffix=".nii")
    (tmp_path / "name_mapping.csv").write_text("x")
    subjects = find_subjects(tmp_path)
    assert [s.id for s in subjects] == ["BraTS2021_00000", "BraTS20_Training_001"]
    assert subjects[0].file("t1").name == "BraTS2021_00000_t1.nii"
    store = prepare_brats_store(tmp_path, tmp_path / "out", size=32, min_foreground=0.1, n_test=1, progress=False)
    assert store.image_shape == (5, 32, 32) and set(store.manifest["subject"]) == {"BraTS20_Training_001", "BraTS2021_00000"}


# --- bad input: each error names the file and the problem ---------------------------------------

def test_missing_contrast_names_the_file(tmp_path):
    write_subject(tmp_path, "S1", contrasts=("t1", "t2", "flair", "seg"))
    with pytest.raises(DataError, match=r"S1: missing S1_t1ce\.nii\.gz"):
        find_subjects(tmp_path)
    assert [s.id for s in find_subjects(tmp_path, channels=["t1", "flair"])] == ["S1"]


def test_truncated_nifti_names_the_file(tmp_path):
    folder = write_subject(tmp_path, "S1")
    f = folder / "S1_t2.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match=r"S1_t2\.nii\.gz: cannot read NIfTI"):
        prepare_brats_store(tmp_path, tmp_path / "out", progress=False, n_test=0)
    assert not (tmp_path / "out").exists()


def test_unreadable_file_names_the_file(tmp_path):
    folder = write_subject(tmp_path, "S1")
    (folder / "S1_t1.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DataError, match=r"S1_t1\.nii\.gz: cannot read NIfTI"):
        read_subject(find_subjects(tmp_path)[0])


def test_contrasts_of_different_shapes(tmp_path):
    write_subject(tmp_path, "S1", overrides={"t1ce": np.ones((24, 20, 9), np.float32)})
    with pytest.raises(DataError, match=r"S1_t1ce\.nii\.gz: shape \(24, 20, 9\) does not match t1 \(24, 20, 10\)"):
        read_subject(find_subjects(tmp_path)[0])


def test_non_finite_voxels(tmp_path):
    bad = np.ones((24, 20, 10), np.float32)
    bad[3, 3, 3] = np.nan
    write_subject(tmp_path, "S1", overrides={"flair": bad})
    with pytest.raises(DataError, match=r"S1_flair\.nii\.gz: 1 non-finite voxels"):
        read_subject(find_subjects(tmp_path)[0])


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no BraTS subject folders found"):
        find_subjects(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        find_subjects(tmp_path / "nope")


def test_segmentation_with_foreign_labels(tmp_path):
    seg = np.zeros((24, 20, 10), np.uint8)
    seg[5, 5, 5] = 3
    write_subject(tmp_path, "S1", overrides={"seg": seg})
    with pytest.raises(DataError, match=r"S1_seg\.nii\.gz: segmentation has values \[3\]"):
        read_subject(find_subjects(tmp_path)[0])
