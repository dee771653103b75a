import gzip
import re

import nibabel as nib
import numpy as np
import pytest
from conftest import write_subject

from workbench.cli import main
from workbench.data import slicing
from workbench.data.brats import find_subjects, read_subject, read_volume
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
    (tmp_path / "S1" / "S1_seg.nii.gz").rename(tmp_path / "S1" / "W39_1998.09.19_Segm.nii.gz")  # BraTS20_Training_355
    with pytest.raises(DataError, match=r"S1: missing S1_seg\.nii\.gz .*other NIfTI files there: W39_1998\.09\.19_Segm"):
        find_subjects(tmp_path, channels=["t1", "seg"])


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


# --- subjects and folders that are left out are reported, never dropped silently ----------------

BLANK = np.zeros((24, 20, 10), np.float32)


def leftovers(folder):
    """Everything in ``folder`` (temporary stores included: their names start with a dot)."""
    return sorted(p.name for p in folder.iterdir())


def test_blank_subject_is_dropped_before_the_split_and_reported(tmp_path, capsys):
    src = tmp_path / "src"
    for sid in ("S1", "S2"):
        write_subject(src, sid)
    write_subject(src, "S3", overrides={"flair": BLANK})
    # drawn before dropping, seeds 0, 2 and 3 would hold out the blank S3 and leave no test slice
    for seed in range(4):
        store = prepare_brats_store(src, tmp_path / f"s{seed}", size=16, n_test=1, seed=seed, progress=False)
        m = store.manifest
        assert set(m["subject"]) == {"S1", "S2"}
        assert m.groupby("split")["subject"].nunique().to_dict() == {"test": 1, "train": 1}, seed
        meta = store.meta
        assert meta["subjects"] == {"train": 1, "test": 1} and meta["subjects_found"] == 3
        assert meta["dropped"] == [{"subject": "S3", "max_foreground": 0.0,
                                    "reason": "no slice of its flair has at least 15% foreground (max 0%)"}]
        assert meta["skipped_folders"] == []
        out = capsys.readouterr().out
        assert "warning: dropped S3: no slice of its flair has at least 15% foreground (max 0%)" in out


def test_blank_subject_leaving_a_split_empty_is_an_error(tmp_path):
    src = tmp_path / "src"
    write_subject(src, "S1")
    write_subject(src, "S2", overrides={"flair": BLANK})
    # the case: 2 subjects, n_test=1, one blank: the train split would be empty
    with pytest.raises(DataError, match=r"n_test=1 would leave the train split empty: only 1 of 2 subjects \(S1\) has "
                                        r"a slice with at least 15% foreground in its flair \(min_foreground=0\.15, "
                                        r"reference='flair'\); dropped S2 \(max 0%\)"):
        prepare_brats_store(src, tmp_path / "out", size=16, n_test=1, progress=False)
    # a test fraction asks for one test subject of the two found: the test split would be empty
    with pytest.raises(DataError, match=r"test_fraction=0\.5 would leave the test split empty.*dropped S2"):
        prepare_brats_store(src, tmp_path / "out", size=16, test_fraction=0.5, progress=False)
    # every subject dropped: the message lists them, their best slice and the option to lower
    half = BLANK.copy()
    half[:12, :, 3] = 1  # half of one slice
    write_subject(src, "S1", overrides={"flair": half})
    with pytest.raises(DataError, match=r"the train split would be empty: none of the 2 subjects has a slice with at "
                                        r"least 70% foreground in its flair.*dropped S1 \(max 50%\), S2 \(max 0%\); "
                                        r"lower min_foreground=0\.5"):
        prepare_brats_store(src, tmp_path / "out", size=16, n_test=0, min_foreground=0.7, progress=False)
    assert leftovers(tmp_path) == ["src"]  # nothing written, not even a temporary store


def test_cli_blank_subject_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    write_subject(src, "BraTS20_Training_001")
    write_subject(src, "BraTS20_Training_002", overrides={"flair": BLANK})
    assert main(["data", "prepare", "--source", str(src), "--out", str(out), "--n-test", "1", "--size", "16"]) == 2
    captured = capsys.readouterr()
    assert "warning: dropped BraTS20_Training_002: no slice of its flair has at least 15% foreground" in captured.out
    err = [line for line in captured.err.splitlines() if line.startswith("workbench:")]
    assert len(err) == 1 and err[0].startswith("workbench: error: ")
    assert "would leave the train split empty" in err[0] and "BraTS20_Training_002 (max 0%)" in err[0]
    # the option as the user gives it (the CLI spelling once workbench.cli sets errors.INTERFACE)
    assert re.search(r"--min-foreground 0\.15|min_foreground=0\.15", err[0])
    assert "Traceback" not in captured.err
    assert leftovers(tmp_path) == ["src"]


def test_misnamed_subject_folder_is_reported(tmp_path, capsys):
    src = tmp_path / "src"
    for sid in ("S1", "S2"):
        write_subject(src, sid)
    write_subject(src, "S03").rename(src / "S3")  # the folder renamed, its files not
    expected = r"S3: holds 5 NIfTI file\(s\) but none named <folder>_<contrast>\.nii\.gz: S03_flair\.nii\.gz should be S3_flair\.nii\.gz"
    with pytest.warns(UserWarning, match=expected):
        assert [s.id for s in find_subjects(src)] == ["S1", "S2"]
    store = prepare_brats_store(src, tmp_path / "out", size=16, n_test=1, progress=False)
    assert re.search("warning: .*" + expected, capsys.readouterr().out)
    assert set(store.manifest["subject"]) == {"S1", "S2"} and store.meta["subjects_found"] == 2
    [skipped] = store.meta["skipped_folders"]
    assert skipped["folder"] == "S3" and "S03_flair.nii.gz should be S3_flair.nii.gz" in skipped["reason"]


def test_no_subject_found_says_what_was_found(tmp_path):
    for sid in ("S1", "S2"):  # every folder misnamed: an error naming a folder, a file and the name expected
        write_subject(tmp_path / "a", f"x{sid}").rename(tmp_path / "a" / sid)
    with pytest.raises(DataError, match=r"a: no BraTS subject folders found .*found 2 folder\(s\) with misnamed NIfTI "
                                        r"files: S1 holds 5 NIfTI file\(s\) .*xS1_flair\.nii\.gz should be S1_flair\.nii\.gz"):
        find_subjects(tmp_path / "a")
    folder = write_subject(tmp_path / "b", "S1")  # NIfTI files without subject folders
    for f in folder.iterdir():
        f.rename(tmp_path / "b" / f.name)
    folder.rmdir()
    with pytest.raises(DataError, match=r"b: no BraTS subject folders found .*found NIfTI files directly in the "
                                        r"folder \(S1_flair\.nii\.gz, .*each subject needs its own folder"):
        find_subjects(tmp_path / "b")
    write_subject(tmp_path / "c" / "MICCAI_BraTS2020_TrainingData", "S1")  # one level too high
    with pytest.raises(DataError, match=r"did you mean .*c/MICCAI_BraTS2020_TrainingData\?"):
        find_subjects(tmp_path / "c")


def test_odd_nifti_shapes_name_the_file(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # not RAS+: the reader reorients
    cases = {
        "two_d": (np.ones((24, 20), np.float32), r"expected a 3D volume, found a 2D image of shape \(24, 20\)"),
        "one_d": (np.ones(10, np.float32), r"expected a 3D volume, found a 1D image of shape \(10,\)"),
        "series": (np.ones((4, 4, 3, 2), np.float32), r"expected one 3D volume, found 2 volumes \(shape \(4, 4, 3, 2\)\)"),
        "empty": (np.ones((4, 4, 0), np.float32), r"volume of shape \(4, 4, 0\) holds no voxels"),
        "complex": (np.ones((4, 4, 3), np.complex64), r"voxels of type complex64 are not real numbers"),
    }
    for name, (data, problem) in cases.items():
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
        with pytest.raises(DataError, match=rf"^{name}\.nii\.gz: {problem}"):
            read_volume(tmp_path / f"{name}.nii.gz")
    one = np.arange(48, dtype=np.float32).reshape(4, 4, 3, 1)  # a series of one volume is that volume
    nib.save(nib.Nifti1Image(one, affine), tmp_path / "one.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "one.nii.gz"), one[::-1, ::-1, :, 0])


def test_cli_2d_nifti_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "src"
    write_subject(src, "S1")
    write_subject(src, "S2", overrides={"t2": np.ones((24, 20), np.float32)})
    assert main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "out"), "--n-test", "1"]) == 2
    err = capsys.readouterr().err
    assert "workbench: error: S2_t2.nii.gz: expected a 3D volume, found a 2D image of shape (24, 20)\n" in err
    assert "Traceback" not in err and leftovers(tmp_path) == ["src"]


def test_slices_larger_than_the_padding_name_the_file(tmp_path):
    write_subject(tmp_path / "big", "S1", shape=(260, 20, 10))
    with pytest.raises(DataError, match=r"^S1_flair\.nii\.gz: axial slices are 260x20 voxels, larger than the 256x256 "
                                        r"padding .*pad=272"):
        prepare_brats_store(tmp_path / "big", tmp_path / "out", size=16, n_test=0, progress=False)
    # without padding or resizing a store holds one image size: the odd subject is named
    write_subject(tmp_path / "mixed", "S1")
    write_subject(tmp_path / "mixed", "S2", shape=(24, 22, 10))
    with pytest.raises(DataError, match=r"^S2_flair\.nii\.gz: axial slices are 24x22 voxels but those of "
                                        r"S1_flair\.nii\.gz are 24x20"):
        prepare_brats_store(tmp_path / "mixed", tmp_path / "out", size=None, pad=None, n_test=0, progress=False)
    assert leftovers(tmp_path) == ["big", "mixed"]


def test_non_finite_slices_name_the_file(tmp_path, monkeypatch):
    # constant and empty volumes scale to finite values: a NaN cannot come from dividing by the maximum
    for vol in (np.zeros((4, 4, 3)), np.full((4, 4, 3), 7.0)):
        for method in ("max", "percentile"):
            assert np.isfinite(slicing.scale_intensity(vol, method=method)).all()
    write_subject(tmp_path / "src", "S1")
    original = slicing.scale_intensity

    def poisoned(volume, **kwargs):  # any future step that makes a NaN must name the file, not the store
        out = original(volume, **kwargs)
        out[12, 10, 5] = np.nan
        return out

    monkeypatch.setattr(slicing, "scale_intensity", poisoned)
    with pytest.raises(DataError, match=r"^S1_t1\.nii\.gz: slice z=5 has non-finite pixels"):
        prepare_brats_store(tmp_path / "src", tmp_path / "out", size=16, n_test=0, progress=False)
    assert leftovers(tmp_path) == ["src"]
