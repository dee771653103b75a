"""Chest X-rays: the Kermany-layout reader, the store builder, the phantom and the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench.cli import main
from workbench.data import xray
from workbench.data.store import SliceStore
from workbench.data.xray import find_xrays, parse_xray_name, prepare_xray_store, read_xray
from workbench.data.xray_phantom import plan_xray_phantom, write_xray_phantom, xray_phantom_image
from workbench.errors import DataError

IMAGES, SIZE = 40, 96


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("xray") / "phantom"
    write_xray_phantom(out, images=IMAGES, seed=0, size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def store(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("xray_store") / "store"
    return prepare_xray_store(phantom, out, size=32, progress=False)


def files_of(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def nones(values):
    """Missing values as None (pandas reads a missing string as NaN or <NA>)."""
    return [None if pd.isna(v) else v for v in values]


def gradient(h=30, w=50):
    """An 8-bit test image: a horizontal ramp with a bright block."""
    img = np.tile(np.linspace(20, 200, w), (h, 1))
    img[h // 3: h // 2, w // 4: w // 2] = 250
    return img.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# phantom
# --------------------------------------------------------------------------------------------


def test_phantom_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_xray_phantom(tmp_path / "a", images=6, seed=5, size=48, progress=False)
    b = write_xray_phantom(tmp_path / "b", images=6, seed=5, size=48, progress=False)
    c = write_xray_phantom(tmp_path / "c", images=6, seed=6, size=48, progress=False)
    assert files_of(a) == files_of(b)
    for name in files_of(a):
        if name != "README.txt":  # the README names its own folder
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pixels = lambda root: [np.asarray(Image.open(root / n)) for n in files_of(root) if n.endswith(".png")]  # noqa: E731
    other = pixels(c)
    for img in pixels(a):  # no image of seed 5 appears in seed 6
        assert all(img.shape != o.shape or not np.array_equal(img, o) for o in other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers


def test_phantom_layout_names_and_patients(phantom):
    pngs = sorted(phantom.rglob("*.png"))
    assert len(pngs) == IMAGES
    patients = {}
    for path in pngs:
        split, cls = path.parent.parent.name, path.parent.name
        assert split in ("train", "test") and cls in ("NORMAL", "PNEUMONIA")
        pattern = r"IM-\d{4}-\d{4}\.png" if cls == "NORMAL" else r"person\d+_(bacteria|virus)_\d+\.png"
        assert re.fullmatch(pattern, path.name), path
        with Image.open(path) as img:
            assert img.mode == "L" and img.height == SIZE and SIZE <= img.width <= 1.3 * SIZE + 1
            assert "not patient data" in img.text["Comment"]
        subject, _ = parse_xray_name(path.name)
        patients.setdefault(subject, set()).add((split, cls))
        patients.setdefault(subject + "#n", set()).add(path.name)
    subjects = [s for s in patients if not s.endswith("#n")]
    assert all(len(patients[s]) == 1 for s in subjects)  # one split and one class per patient
    assert all(1 <= len(patients[s + "#n"]) <= 3 for s in subjects)
    assert any(len(patients[s + "#n"]) > 1 for s in subjects)  # some patients have several images
    assert {next(iter(patients[s])) for s in subjects} == {(a, b) for a in ("train", "test") for b in ("NORMAL", "PNEUMONIA")}
    readme = (phantom / "README.txt").read_text()
    assert "NOT PATIENT DATA" in readme and "seed:     0" in readme and "write_xray_phantom(" in readme


def test_phantom_plan_fractions_and_determinism():
    plan = plan_xray_phantom(images=200, seed=3, pneumonia_fraction=0.3, test_fraction=0.25)
    assert plan == plan_xray_phantom(images=200, seed=3, pneumonia_fraction=0.3, test_fraction=0.25)
    n = lambda ps: sum(len(p.files) for p in ps)  # noqa: E731
    assert n(plan) == 200 and abs(n([p for p in plan if p.pneumonia]) - 60) <= 2
    for sick in (False, True):
        group = [p for p in plan if p.pneumonia == sick]
        assert abs(sum(p.split == "test" for p in group) - 0.25 * len(group)) <= 1
    assert {p.kind for p in plan if p.pneumonia} == {"bacteria", "virus"}
    assert all(not p.pneumonia for p in plan_xray_phantom(images=10, pneumonia_fraction=0.0))
    assert all(p.pneumonia for p in plan_xray_phantom(images=10, pneumonia_fraction=1.0))


def test_phantom_image_anatomy():
    """Dark lungs beside a bright mediastinum, dark air outside the body; patient images differ by pose."""
    for patient in range(1, 6):
        img = xray_phantom_image(patient, 1, seed=0, size=128).astype(float)
        h, w = img.shape
        lungs = np.r_[img[40:70, w // 2 - 45: w // 2 - 25].ravel(), img[40:70, w // 2 + 25: w // 2 + 45].ravel()]
        mediastinum = img[40:70, w // 2 - 5: w // 2 + 5]
        corner = img[:8, :8]
        assert corner.mean() < lungs.mean() - 20 and lungs.mean() < mediastinum.mean() - 20, patient
    img = xray_phantom_image(4, 1, seed=0, size=128).astype(float)
    again = xray_phantom_image(4, 2, seed=0, size=128).astype(float)
    assert not np.array_equal(img, again)


def test_pneumonia_has_more_lung_opacity(store):
    """Mean brightness of both lung fields relative to the abdomen: higher with pneumonia."""
    x = store.to_array()[:, 0]
    label = store.manifest["label"].to_numpy(dtype=int)
    # the phantom is 1.0 - 1.3 x wider than high and padded: the chest fills rows 4..28 of 32
    lungs = np.concatenate([x[:, 11:19, 7:12].reshape(len(x), -1), x[:, 11:19, 20:25].reshape(len(x), -1)], 1).mean(1)
    abdomen = x[:, 24:27, 12:20].reshape(len(x), -1).mean(1)
    opacity = lungs / abdomen
    normal, pneumonia = opacity[label == 0], opacity[label == 1]
    assert len(normal) >= 10 and len(pneumonia) >= 10
    assert pneumonia.mean() > normal.mean() + 0.04, (normal.mean(), pneumonia.mean())


# --------------------------------------------------------------------------------------------
# finding images and patient ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,subject,kind", [
    ("person1_bacteria_1.jpeg", "person1", "bacteria"),
    ("person1_virus_6.jpeg", "person1", "virus"),
    ("person1946_bacteria_4874.JPEG", "person1946", "bacteria"),
    ("IM-0115-0001.jpeg", "IM-0115", None),
    ("NORMAL2-IM-0007-0001.jpeg", "NORMAL2-IM-0007", None),
    ("IM-0001-0001.png", "IM-0001", None),
    ("scan_042.dcm", "scan_042", None),
    ("chest.png", "chest", None),
])
def test_subject_from_kermany_names(name, subject, kind):
    assert parse_xray_name(name) == (subject, kind)


def test_find_xrays_on_the_phantom(phantom):
    table = find_xrays(phantom)
    assert list(table.columns) == ["path", "split", "class_name", "label", "subject", "kind"]
    assert len(table) == IMAGES
    expected = {}
    for p in plan_xray_phantom(images=IMAGES, seed=0):
        for name in p.files:
            expected[name] = (p.split, p.class_name, int(p.pneumonia), p.subject, p.kind)
    got = {r.path.split("/")[-1]: (r.split, r.class_name, r.label, r.subject, None if pd.isna(r.kind) else r.kind)
           for r in table.itertuples()}
    assert got == expected
    for r in table.itertuples():
        assert r.path.endswith(f"{r.split}/{r.class_name}/{r.path.split('/')[-1]}")
    assert table["split"].tolist() == sorted(table["split"], key=["train", "val", "test"].index)


def test_find_xrays_case_insensitive_with_val_and_junk(tmp_path):
    for rel in ("Train/Normal/IM-0001-0001.JPG", "train/PNEUMONIA/person2_virus_3.png",
                "val/pneumonia/person2_virus_4.jpeg", "TEST/NORMAL/NORMAL2-IM-0007-0001.jpeg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient()).save(tmp_path / rel, format="PNG" if rel.endswith("png") else "JPEG")
    (tmp_path / "train/PNEUMONIA/.DS_Store").write_bytes(b"junk")
    (tmp_path / "train/PNEUMONIA/._person2_virus_3.png").write_bytes(b"junk")
    (tmp_path / "train/PNEUMONIA/notes.txt").write_text("junk")
    (tmp_path / "other").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    with pytest.warns(UserWarning) as caught:  # what is not read is named, hidden entries are not
        table = find_xrays(tmp_path)
    assert sorted(str(w.message) for w in caught) == [
        f"{tmp_path}/train/PNEUMONIA: 1 file not read (notes.txt): only .jpeg, .jpg, .png, .dcm files are read "
        f"(a DICOM file needs the .dcm suffix)",
        f"{tmp_path}: 1 folder not read (other/): not a split folder (train, val, test)",
    ]
    assert [nones(r) for r in table[["split", "class_name", "label", "subject", "kind"]].values.tolist()] == [
        ["train", "NORMAL", 0, "IM-0001", None],
        ["train", "PNEUMONIA", 1, "person2", "virus"],
        ["val", "PNEUMONIA", 1, "person2", "virus"],
        ["test", "NORMAL", 0, "NORMAL2-IM-0007", None],
    ]


def test_wrong_layouts_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="nope: folder does not exist"):
        find_xrays(tmp_path / "nope")
    (tmp_path / "a" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"a: no train/ or test/ folder found .*found images/"):
        find_xrays(tmp_path / "a")
    (tmp_path / "b" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train: no NORMAL/ or PNEUMONIA/ class folder found; found cats/"):
        find_xrays(tmp_path / "b")
    (tmp_path / "c" / "test" / "NORMAL").mkdir(parents=True)
    (tmp_path / "c" / "test" / "NORMAL" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"c: no images .*readme\.txt|c: no images .*NORMAL/"):
        find_xrays(tmp_path / "c")
    nested = tmp_path / "d" / "chest_xray" / "chest_xray" / "train" / "NORMAL"
    nested.mkdir(parents=True)
    with pytest.raises(DataError, match=r"did you mean .*chest_xray/chest_xray\?"):
        find_xrays(tmp_path / "d")
    with pytest.raises(DataError, match="no train/ or test/"):
        prepare_xray_store(tmp_path / "a", tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------------------------
# reading one image
# --------------------------------------------------------------------------------------------


def test_jpeg_png_rgb_rgba_and_16_bit(tmp_path):
    g = gradient()
    Image.fromarray(g).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([g] * 3 + [np.full_like(g, 255)], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(g).save(tmp_path / "gray.jpeg", quality=95)
    Image.fromarray(g.astype(np.uint16) * 16 + 7).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    ref = read_xray(tmp_path / "gray.png", size=25)
    assert ref.shape == (25, 25) and ref.dtype == np.float32 and 0 <= ref.min() and ref.max() <= 1
    # pad: 30 x 50 -> 15 x 25 centred, black rows above and below
    assert (ref[:5] == 0).all() and (ref[20:] == 0).all() and (ref[5:20] > 0.05).all()
    np.testing.assert_allclose(ref[5:20].mean(), g.mean() / 255, atol=0.01)
    assert np.array_equal(read_xray(tmp_path / "rgb.png", size=25), ref)
    assert np.array_equal(read_xray(tmp_path / "rgba.png", size=25), ref)
    assert np.abs(read_xray(tmp_path / "gray.jpeg", size=25) - ref).max() < 0.04
    deep = read_xray(tmp_path / "deep.png", size=25)
    assert deep.max() == pytest.approx(1.0) and np.corrcoef(deep[5:20].ravel(), ref[5:20].ravel())[0, 1] > 0.99
    # crop: the centred 30 x 30 square, no padding
    crop = read_xray(tmp_path / "gray.png", size=30, fit="crop")
    np.testing.assert_allclose(crop, g[:, 10:40] / 255, atol=1e-6)


def test_large_jpeg_decodes_at_reduced_scale_faithfully(tmp_path):
    big = np.kron(gradient(30, 45), np.ones((16, 16), np.uint8))  # 480 x 720
    Image.fromarray(big).save(tmp_path / "big.jpeg", quality=95)
    Image.fromarray(big).save(tmp_path / "big.png")
    fast, exact = read_xray(tmp_path / "big.jpeg", size=32), read_xray(tmp_path / "big.png", size=32)
    assert np.abs(fast - exact).mean() < 0.01


def write_dicom(path, pixels, *, photometric="MONOCHROME1", slope=2.0, intercept=-100.0, patient="P0042"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if patient is not None:
        ds.PatientID = patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_and_monochrome1_inverted(tmp_path):
    raw = (gradient(40, 60).astype(np.uint16) * 16)  # 12-bit values; the block is brightest (high attenuation)
    write_dicom(tmp_path / "m1.dcm", raw)
    write_dicom(tmp_path / "m2.dcm", raw, photometric="MONOCHROME2")
    value = raw.astype(np.float64) * 2.0 - 100.0  # rescaled; the robust range is of the whole image
    lo, hi = np.percentile(value, [0.5, 99.5])
    expected = np.clip((value[:, 10:50] - lo) / (hi - lo), 0, 1)  # then the centred 40 x 40 square
    m2 = read_xray(tmp_path / "m2.dcm", size=40, fit="crop")
    m1 = read_xray(tmp_path / "m1.dcm", size=40, fit="crop")
    np.testing.assert_allclose(m2, expected, atol=1e-4)
    np.testing.assert_allclose(m1, 1.0 - expected, atol=1e-4)  # MONOCHROME1: high values are dark
    block = (slice(14, 19), slice(5, 20))
    assert m1[block].max() < 0.05 and m2[block].min() > 0.95


def test_dicom_patient_id_in_the_table(tmp_path):
    raw = gradient(20, 20).astype(np.uint16)
    for rel, patient in (("train/NORMAL/a.dcm", "P0042"), ("train/NORMAL/IM-0009-0002.DCM", None)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_dicom(tmp_path / rel, raw, patient=patient)
    table = find_xrays(tmp_path)
    assert table["subject"].tolist() == ["P0042", "IM-0009"]  # the PatientID tag, else the file name
    store = prepare_xray_store(tmp_path, tmp_path / "s", size=16, progress=False)
    assert sorted(store.manifest["subject"]) == ["IM-0009", "P0042"]


def test_bad_files_name_the_file(tmp_path):
    g = gradient()
    (tmp_path / "junk.jpeg").write_bytes(b"this is not a jpeg at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(g).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:80])
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 300)
    cases = [("junk.jpeg", "cannot read image"), ("empty.png", r"empty file \(0 bytes\)"),
             ("cut.png", "cannot read image"), ("bad.dcm", "cannot read DICOM"), ("missing.png", "file does not exist")]
    for name, problem in cases:
        with pytest.raises(DataError, match=rf"{re.escape(name)}: {problem}"):
            read_xray(tmp_path / name, size=16)


def test_corrupt_file_stops_prepare_and_leaves_no_store(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        (src / "train" / "NORMAL").mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient()).save(src / "train" / "NORMAL" / f"IM-000{i}-0001.png")
    (src / "train" / "NORMAL" / "IM-0001-0001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"IM-0001-0001\.png: cannot read image"):
        prepare_xray_store(src, tmp_path / "store", size=16, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_non_finite_image_names_the_file(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for i in range(2):
        (src / "train" / "NORMAL").mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient()).save(src / "train" / "NORMAL" / f"IM-000{i}-0001.png")
    original = xray.fit_square

    def poisoned(image, **kwargs):  # any step that makes a NaN must name the image, not the store
        out = original(image, **kwargs)
        out[3, 3] = np.nan
        return out

    monkeypatch.setattr(xray, "fit_square", poisoned)
    with pytest.raises(DataError, match=r"train/NORMAL/IM-0000-0001\.png: image has non-finite pixel values"):
        prepare_xray_store(src, tmp_path / "store", size=16, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


def test_store_shape_values_and_manifest(store, phantom):
    assert store.shape == (IMAGES, 1, 32, 32) and store.channels == ["xray"]
    images = store.to_array()
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1 and images.std() > 0.1
    m = store.manifest.reset_index(drop=True)
    table = find_xrays(phantom)
    assert m["source"].tolist() == table["path"].tolist()
    for col in ("subject", "split", "label", "class_name"):
        assert m[col].tolist() == table[col].tolist(), col
    assert nones(m["kind"]) == nones(table["kind"])
    assert m[["z", "prev", "next"]].isna().all().all()
    meta = store.meta
    assert meta["options"]["split"] == "given" and meta["options"]["seed"] == 0
    assert sum(sum(c.values()) for c in meta["images"].values()) == IMAGES
    assert meta["subjects_in_several_splits"] == 0 and meta["labels"] == {"NORMAL": 0, "PNEUMONIA": 1}
    np.testing.assert_array_equal(images[5, 0], read_xray(m.loc[5, "source"], size=32))


def test_store_is_streamed_in_blocks(phantom, tmp_path, monkeypatch, store):
    monkeypatch.setattr(xray, "_BLOCK_BYTES", 3 * 32 * 32 * 4)  # blocks of three images
    appended = []
    original = xray.StoreWriter.append
    monkeypatch.setattr(xray.StoreWriter, "append", lambda self, images, rows: appended.append(len(images)) or
                        original(self, images, rows))
    small = prepare_xray_store(phantom, tmp_path / "s", size=32, progress=False)
    assert max(appended) == 3 and sum(appended) == IMAGES
    np.testing.assert_array_equal(small.to_array(), store.to_array())


def test_resplit_by_image_is_seeded_and_disjoint(phantom, tmp_path):
    kw = dict(size=16, split="image", test_fraction=0.25, progress=False)
    a = prepare_xray_store(phantom, tmp_path / "a", seed=3, **kw).manifest
    b = prepare_xray_store(phantom, tmp_path / "b", seed=3, **kw).manifest
    c = prepare_xray_store(phantom, tmp_path / "c", seed=4, **kw).manifest
    assert a["split"].tolist() == b["split"].tolist() and a["split"].tolist() != c["split"].tolist()
    test, train = set(a.loc[a.split == "test", "source"]), set(a.loc[a.split == "train", "source"])
    assert len(test) == 10 and len(train) == 30 and not test & train and len(test | train) == IMAGES
    by_patient = prepare_xray_store(phantom, tmp_path / "p", seed=3, **{**kw, "split": "patient"}).manifest
    assert (by_patient.groupby("subject")["split"].nunique() == 1).all()
    assert set(by_patient["split"]) == {"train", "test"}


def test_max_images_is_a_seeded_subset(phantom, tmp_path):
    a = prepare_xray_store(phantom, tmp_path / "a", size=16, max_images=7, seed=1, progress=False)
    b = prepare_xray_store(phantom, tmp_path / "b", size=16, max_images=7, seed=1, progress=False)
    assert len(a) == 7 and a.manifest["source"].tolist() == b.manifest["source"].tolist()
    assert set(a.manifest["source"]) <= set(find_xrays(phantom)["path"])
    assert a.meta["images_found"] == IMAGES


def test_files_not_read_are_reported_and_recorded(tmp_path, capsys):
    for rel in ("train/NORMAL/IM-0001-0001.png", "train/PNEUMONIA/person1_virus_1.png", "test/NORMAL/IM-0002-0001.png"):
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient()).save(tmp_path / "src" / rel)
    Image.fromarray(gradient()).save(tmp_path / "src" / "train" / "NORMAL" / "IM-0003-0001.bmp")
    (tmp_path / "src" / "train" / "NORMAL" / "IM-0004-0001").write_bytes(b"DICM without a suffix")
    (tmp_path / "src" / "test" / "COVID19").mkdir()
    store = prepare_xray_store(tmp_path / "src", tmp_path / "store", size=16, progress=False)
    out = capsys.readouterr().out
    assert "train/NORMAL: 2 files not read (IM-0003-0001.bmp, IM-0004-0001): only .jpeg" in out
    assert "test: 1 entry not read (COVID19/): only the NORMAL/ and PNEUMONIA/ folders are read here" in out
    assert [(Path(r["path"]).name, r["reason"].split(" (")[0]) for r in store.meta["skipped"]] == [
        ("NORMAL", "2 files not read"), ("test", "1 entry not read")]
    assert len(store) == 3 and store.meta["images_found"] == 3


def test_empty_splits_are_errors_and_write_nothing(tmp_path, phantom):
    def write(root, *rels):
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gradient()).save(root / rel)
        return root

    only_test = write(tmp_path / "a", "test/NORMAL/IM-0001-0001.png", "test/PNEUMONIA/person1_virus_1.png")
    with pytest.raises(DataError, match=r"a: no training images: the 2 images are 2 in test/ and split='given' keeps "
                                        r"the folders' split.*split='image' or split='patient'"):
        prepare_xray_store(only_test, tmp_path / "store", size=16, progress=False)
    one_patient = write(tmp_path / "b", "train/PNEUMONIA/person7_virus_1.png", "train/PNEUMONIA/person7_virus_2.png")
    with pytest.raises(DataError, match=r"b: test_fraction=0\.2 would leave the test split empty: all 2 images are "
                                        r"of one patient \(person7\)"):
        prepare_xray_store(one_patient, tmp_path / "store", size=16, split="patient", progress=False)
    one_image = write(tmp_path / "c", "train/NORMAL/IM-0001-0001.png")
    with pytest.raises(DataError, match=r"c: test_fraction=0\.2 would leave the test split empty: there is only one "
                                        r"image \(.*IM-0001-0001\.png\)"):
        prepare_xray_store(one_image, tmp_path / "store", size=16, split="image", progress=False)
    with pytest.raises(DataError, match=r"max_images=1 kept no test image \(the subset has 1 in train/\)"):
        prepare_xray_store(phantom, tmp_path / "store", size=16, max_images=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    # a small subset keeps each split's share, and a test image (uniformly, this seed drew 7 train images)
    small = prepare_xray_store(phantom, tmp_path / "store", size=16, max_images=7, seed=1, progress=False)
    assert small.manifest["split"].value_counts().to_dict() == {"train": 5, "test": 2}
    assert small.meta["subjects"]["test"] >= 1


def test_cli_empty_train_split_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "src" / "test" / "NORMAL").mkdir(parents=True)
    Image.fromarray(gradient()).save(tmp_path / "src" / "test" / "NORMAL" / "IM-0001-0001.png")
    assert main(["data", "prepare-xray", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error: ") and err.count("\n") == 1 and "no training images" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs,problem", [
    ({"size": 4}, "size must be"), ({"size": 64.0}, "size must be"), ({"fit": "stretch"}, "fit must be"),
    ({"split": "random"}, "split must be"), ({"test_fraction": 1.0}, "test_fraction must be"),
    ({"max_images": 0}, "max_images must be"), ({"seed": -1}, "seed must be"),
])
def test_prepare_checks_arguments_first(tmp_path, kwargs, problem):
    with pytest.raises(DataError, match=problem):
        prepare_xray_store(tmp_path / "does-not-matter", tmp_path / "s", progress=False, **kwargs)


@pytest.mark.parametrize("kwargs", [{"images": 0}, {"images": 2.5}, {"seed": -1}, {"size": 8},
                                    {"pneumonia_fraction": 1.5}, {"test_fraction": 1.0}, {"test_fraction": "0.2"}])
def test_phantom_checks_arguments(tmp_path, kwargs):
    with pytest.raises(DataError):
        write_xray_phantom(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_phantom_refuses_to_overwrite(tmp_path):
    out = write_xray_phantom(tmp_path / "x", images=2, size=32, progress=False)
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        write_xray_phantom(out, images=2, size=32, progress=False)
    write_xray_phantom(out, images=3, size=32, progress=False, overwrite=True)
    assert len(list(out.rglob("*.png"))) == 3


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_phantom_then_prepare(tmp_path, capsys):
    ph, st = tmp_path / "ph", tmp_path / "st"
    assert main(["data", "phantom", "xray", "--images", "6", "--size", "48", "--seed", "2", "--out", str(ph)]) == 0
    assert "not patient data" in capsys.readouterr().out
    assert len(list(ph.rglob("*.png"))) == 6
    assert main(["data", "prepare-xray", "--source", str(ph), "--out", str(st), "--size", "16", "--fit", "crop",
                 "--split", "image", "--test-fraction", "0.5", "--seed", "1"]) == 0
    assert f"wrote {st}" in capsys.readouterr().out
    s = SliceStore.open(st)
    assert s.shape == (6, 1, 16, 16) and (s.manifest["split"] == "test").sum() == 3
    assert s.meta["options"]["fit"] == "crop"
    assert main(["data", "prepare-xray", "--source", str(ph), "--out", str(st)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "prepare-xray", "--source", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "no train/ or test/ folder found" in capsys.readouterr().err
    assert main(["data", "phantom", "brain", "--images", "3", "--out", str(tmp_path / "b")]) == 2
    assert "--images does not apply to the brain phantom" in capsys.readouterr().err
    assert main(["data", "phantom", "xray", "--subjects", "3", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "b").exists() and not (tmp_path / "x").exists()
