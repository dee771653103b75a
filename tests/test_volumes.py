"""Stores of 3D volumes: building, reading, slicing, bad input (issue 17)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_subject
from workbench.data import slicing
from workbench.data.brats import read_volume
from workbench.data.store import SliceStore, StoreWriter
from workbench.data.volumes import (axial_slice_store, brain_box, crop_cube, prepare_volume_store, resample_cube,
                                    to_planes)
from workbench.errors import DataError, StoreError


@pytest.fixture(scope="module")
def volume_store(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vol") / "vol24"
    return prepare_volume_store(phantom_dir, out, size=24, n_test=1, seed=0, progress=False)


def test_volume_store_shape_manifest_and_split(volume_store, phantom_store):
    assert volume_store.is_volume and volume_store.spatial_dims == 3
    assert volume_store.image_shape == (5, 24, 24, 24)
    assert volume_store.shape == (3, 5, 24, 24, 24)
    m = volume_store.manifest
    assert list(m["subject"]) == ["Phantom_001", "Phantom_002", "Phantom_003"]
    # the same seed holds out the same subject as the slice store of the same folder
    slice_split = phantom_store.manifest.groupby("subject")["split"].first().to_dict()
    assert dict(zip(m["subject"], m["split"])) == slice_split
    assert m["z"].isna().all() and m["prev"].isna().all()
    assert (m["voxel_mm"] > 1).all() and m["crop"].str.count(":").eq(3).all()
    vol = volume_store[0]
    assert vol.dtype == np.float32 and vol.min() >= 0 and vol.max() <= 1
    assert 0.6 < vol[:4].max() <= 1  # scaled to [0, 1] per contrast, then area-averaged
    seg = vol[4]
    assert set(np.unique(seg)) <= {0, 0.25, 0.5, 1.0}  # labels resampled by nearest neighbour
    assert m["label"].tolist() == [int((volume_store[i][4] > 0).any()) for i in range(3)]
    # the brain fills the cube: margin only at the border
    assert (vol[3] > 0).mean() > 0.2
    meta = json.loads((volume_store.path / "store.json").read_text())
    assert meta["shape"] == [3, 5, 24, 24, 24]


def test_planes_match_axial_slices(phantom_dir):
    vol = read_volume(sorted(phantom_dir.glob("Phantom_001/*_flair.nii.gz"))[0])
    planes = to_planes(vol)
    for z in (40, 77, 120):
        np.testing.assert_array_equal(planes[z], slicing.axial_slices(vol, [z])[0])


def test_brain_box_is_a_centred_cube_and_crop_pads():
    v = np.zeros((20, 30, 40), np.float32)
    v[5:9, 10:20, 2:30] = 1
    box = brain_box([v], margin=2)
    sides = {s.stop - s.start for s in box}
    assert sides == {28 + 4}
    cube = crop_cube(v, box)
    assert cube.shape == (32, 32, 32) and cube.sum() == v.sum()  # nothing lost, zeros outside
    assert brain_box([np.zeros((4, 4, 4))]) is None
    small = resample_cube(cube, 16)
    assert small.shape == (16, 16, 16) and small.sum() * 8 == pytest.approx(cube.sum(), rel=1e-5)  # area: mass kept
    labels = resample_cube(cube * 0.5, 8, labels=True)
    assert set(np.unique(labels)) <= {0, 0.5}


def test_axial_slice_store_links_and_provenance(volume_store, tmp_path):
    slices = axial_slice_store(volume_store, tmp_path / "slices", progress=False)
    assert not slices.is_volume and slices.image_shape == (5, 24, 24)
    m = slices.manifest
    assert set(m["subject"]) == set(volume_store.manifest["subject"])
    for i in (0, len(slices) // 2, len(slices) - 1):
        row = m.iloc[i]
        np.testing.assert_array_equal(slices[i], volume_store[int(row["volume"])][:, int(row["z"])])
    linked = m.dropna(subset=["next"])
    assert len(linked) > 0
    nxt = m.iloc[linked["next"].astype(int).to_numpy()]
    assert (nxt["z"].to_numpy() == linked["z"].to_numpy() + 1).all()
    assert (nxt["subject"].to_numpy() == linked["subject"].to_numpy()).all()
    assert dict(zip(m["subject"], m["split"])) == dict(zip(volume_store.manifest["subject"], volume_store.manifest["split"]))


def test_whole_volumes_of_different_shapes_are_refused(tmp_path):
    src = tmp_path / "src"
    write_subject(src, "A", shape=(24, 20, 10))
    write_subject(src, "B", shape=(24, 20, 12))
    with pytest.raises(DataError, match=r"B_t1\.nii\.gz: volume of shape \(24, 20, 12\).*pass size="):
        prepare_volume_store(src, tmp_path / "out", size=None, n_test=0, progress=False)
    assert not (tmp_path / "out").exists()
    # with resampling the same folder makes one store
    store = prepare_volume_store(src, tmp_path / "out", size=16, n_test=0, progress=False)
    assert store.image_shape == (5, 16, 16, 16)


def test_whole_volumes_are_stored_as_they_are(tmp_path):
    src = tmp_path / "src"
    write_subject(src, "A", shape=(24, 20, 10))
    write_subject(src, "B", shape=(24, 20, 10), seed=1)
    store = prepare_volume_store(src, tmp_path / "out", size=None, n_test=1, progress=False, channels=["t1", "seg"])
    assert store.image_shape == (2, 10, 20, 24)  # (C, D=z, H=y, W=x)
    assert store.label_channels == ["seg"]


def test_bad_volume_options(tmp_path, phantom_dir):
    with pytest.raises(DataError, match="size must be"):
        prepare_volume_store(phantom_dir, tmp_path / "x", size=3, progress=False)
    with pytest.raises(DataError, match="unknown contrast"):
        prepare_volume_store(phantom_dir, tmp_path / "x", channels=["dwi"], progress=False)
    with pytest.raises(DataError, match="margin"):
        prepare_volume_store(phantom_dir, tmp_path / "x", margin=-1, progress=False)
    assert not (tmp_path / "x").exists()


def test_empty_volume_names_the_subject(tmp_path):
    src = tmp_path / "src"
    write_subject(src, "A")
    zero = np.zeros((24, 20, 10), np.float32)
    write_subject(src, "B", overrides={c: zero for c in ("t1", "t1ce", "t2", "flair")})
    with pytest.raises(DataError, match=r"B: every voxel of every contrast is zero"):
        prepare_volume_store(src, tmp_path / "out", size=16, n_test=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_writer_checks_volume_blocks(tmp_path):
    with StoreWriter(tmp_path / "v", channels=["a"], height=4, width=5, depth=3) as w:
        w.append(np.zeros((1, 3, 4, 5), np.float32), [{}])  # one volume without its batch axis
        with pytest.raises(StoreError, match=r"does not match \(n, 1, 3, 4, 5\) of this store of volumes"):
            w.append(np.zeros((2, 1, 4, 5), np.float32), [{}, {}])
        w.append(np.ones((2, 1, 3, 4, 5), np.float32), [{}, {}])
    store = SliceStore.open(tmp_path / "v")
    assert store.shape == (3, 1, 3, 4, 5)
    np.testing.assert_array_equal(store.read([2, 0]), np.stack([np.ones((1, 3, 4, 5)), np.zeros((1, 3, 4, 5))]))
    with pytest.raises(DataError, match="needs a store of 3D volumes"):
        axial_slice_store(axial_slice_store(store, tmp_path / "s", min_foreground=0, progress=False), tmp_path / "t")


def _truth(q: np.ndarray, r: np.ndarray, k: int):
    """Float64 brute force on whole volumes flattened to vectors (our own definition)."""
    qf, rf = q.reshape(len(q), -1).astype(np.float64), r.reshape(len(r), -1).astype(np.float64)
    qf = qf - qf.mean(1, keepdims=True)
    rf = rf - rf.mean(1, keepdims=True)
    s = (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (rf / np.linalg.norm(rf, axis=1, keepdims=True)).T
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), s.shape), -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("method", ["function", "brute", "pruned"])
def test_volume_search_is_exact(volume_store, method, tmp_path):
    """A volume is one long vector to the search engine: whole-volume top-k equals float64 brute force,
    by the function, a brute index and a pruned index (blocks over D, H and W)."""
    from workbench.search import CorrelationIndex, topk_correlation

    rng = np.random.default_rng(0)
    base = volume_store.to_array()
    reference = np.concatenate([base, np.clip(base[::-1] * 0.9 + rng.normal(0, 0.05, base.shape), 0, 1)]).astype(np.float32)
    with StoreWriter(tmp_path / "ref", channels=volume_store.channels, height=24, width=24, depth=24) as w:
        w.append(reference, [{"subject": f"s{i}"} for i in range(len(reference))])
    ref = SliceStore.open(tmp_path / "ref")
    queries = np.clip(reference[[1, 4, 2]] + rng.normal(0, 0.02, (3, *reference.shape[1:])), 0, 1).astype(np.float32)
    queries[2] = rng.random(queries[2].shape)
    values, indices = _truth(queries, reference, 3)
    if method == "function":
        res = topk_correlation(queries, ref, k=3)
    else:
        index = CorrelationIndex(ref, basis="blocks", block=8) if method == "pruned" else CorrelationIndex(ref)
        res = index.topk(queries, k=3, method=method)
    np.testing.assert_array_equal(res.indices, indices)
    np.testing.assert_allclose(res.values, values, atol=1e-12)
    assert list(res.indices[:2, 0]) == [1, 4]
    # a mask over (D, H, W) is shared by every channel
    mask = np.zeros((24, 24, 24), bool)
    mask[4:20, 4:20, 4:20] = True
    sel = np.broadcast_to(mask, reference.shape[1:])
    v2, i2 = _truth(queries[:, sel], reference[:, sel], 2)
    res2 = topk_correlation(queries, ref, k=2, mask=mask)
    np.testing.assert_array_equal(res2.indices, i2)
    np.testing.assert_allclose(res2.values, v2, atol=1e-12)


def test_volume_slices_are_the_volumes_planes(phantom_dir, volume_store, tmp_path):
    """layout="volume_slices": the same subjects, split and voxels as the volume store, as slices."""
    from workbench.data.volumes import prepare_volume_slices

    slices = prepare_volume_slices(phantom_dir, tmp_path / "vs", size=24, n_test=1, seed=0, progress=False)
    cut = axial_slice_store(volume_store, tmp_path / "cut", progress=False)
    assert len(slices) == len(cut)
    np.testing.assert_array_equal(slices.to_array(), cut.to_array())
    cols = ["subject", "split", "z", "prev", "next", "label"]
    assert slices.manifest[cols].reset_index(drop=True).equals(cut.manifest[cols].reset_index(drop=True))
