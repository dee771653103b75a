import json

import numpy as np
import pandas as pd
import pytest

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import StoreError


def _rows(n, subject="s1", split="train"):
    return [{"subject": subject, "source": "x.nii.gz", "z": z, "split": split, "label": 0,
             "prev": None, "next": None} for z in range(n)]


def _write(path, n=5, blocks=2, **kw):
    rng = np.random.default_rng(0)
    imgs = rng.random((n * blocks, 2, 8, 8), dtype=np.float32)
    with StoreWriter(path, channels=["t1", "flair"], height=8, width=8, **kw) as w:
        for b in range(blocks):
            w.append(imgs[b * n:(b + 1) * n], _rows(n, subject=f"s{b}", split="train" if b == 0 else "test"))
    return imgs


def test_roundtrip_streamed_blocks_and_views(tmp_path):
    imgs = _write(tmp_path / "s")
    store = SliceStore.open(tmp_path / "s")
    assert store.shape == (10, 2, 8, 8) and store.channels == ["t1", "flair"]
    np.testing.assert_array_equal(store.to_array(), imgs)
    assert isinstance(np.load(tmp_path / "s" / "images.npy", mmap_mode="r"), np.memmap)  # a standard .npy
    test = store.where(split="test")
    assert len(test) == 5 and list(test.rows) == list(range(5, 10))
    np.testing.assert_array_equal(test[0], imgs[5])
    np.testing.assert_array_equal(test.read([4, 1]), imgs[[9, 6]])
    blocks = list(test.blocks(2))
    assert [b[0] for b in blocks] == [0, 2, 4] and np.concatenate([b[1] for b in blocks]).shape == (5, 2, 8, 8)
    assert set(test.manifest["subject"]) == {"s1"}


def test_killed_writer_leaves_nothing_that_looks_finished(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", channels=["a"], height=4, width=4) as w:
            w.append(np.zeros((2, 1, 4, 4)), _rows(2))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_is_not_overwritten_silently(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(FileExistsError, match="already exists"):
        _write(tmp_path / "s")
    _write(tmp_path / "s", overwrite=True)
    assert len(SliceStore.open(tmp_path / "s")) == 10


def test_writer_rejects_bad_blocks(tmp_path):
    with pytest.raises(StoreError, match="does not match"):
        with StoreWriter(tmp_path / "s", channels=["a"], height=4, width=4) as w:
            w.append(np.zeros((2, 2, 4, 4)), _rows(2))
    with pytest.raises(StoreError, match="non-finite"):
        with StoreWriter(tmp_path / "s", channels=["a"], height=4, width=4) as w:
            w.append(np.full((1, 1, 4, 4), np.nan), _rows(1))
    with pytest.raises(StoreError, match="2 images but 1 manifest rows"):
        with StoreWriter(tmp_path / "s", channels=["a"], height=4, width=4) as w:
            w.append(np.zeros((2, 1, 4, 4)), _rows(1))
    with pytest.raises(StoreError, match="no images"):
        with StoreWriter(tmp_path / "s", channels=["a"], height=4, width=4):
            pass
    assert not (tmp_path / "s").exists()


def test_open_reports_files_that_do_not_match_the_manifest(tmp_path):
    _write(tmp_path / "s")
    m = pd.read_parquet(tmp_path / "s" / "manifest.parquet")
    m.iloc[:-1].to_parquet(tmp_path / "s" / "manifest.parquet")
    with pytest.raises(StoreError, match="manifest has 9 rows but images.npy holds 10"):
        SliceStore.open(tmp_path / "s")

    _write(tmp_path / "t")
    data = (tmp_path / "t" / "images.npy").read_bytes()
    (tmp_path / "t" / "images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="images.npy"):
        SliceStore.open(tmp_path / "t")

    _write(tmp_path / "u")
    (tmp_path / "u" / "manifest.parquet").unlink()
    with pytest.raises(StoreError, match="missing manifest.parquet"):
        SliceStore.open(tmp_path / "u")

    _write(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "store.json").read_text())
    meta["channels"] = ["t1"]
    (tmp_path / "v" / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="channels"):
        SliceStore.open(tmp_path / "v")

    _write(tmp_path / "w")
    m = pd.read_parquet(tmp_path / "w" / "manifest.parquet")
    m.loc[0, "next"] = 99
    m.to_parquet(tmp_path / "w" / "manifest.parquet")
    with pytest.raises(StoreError, match="points outside the store"):
        SliceStore.open(tmp_path / "w")

    with pytest.raises(StoreError, match="does not exist"):
        SliceStore.open(tmp_path / "nothing")


def test_reads_through_the_file_in_runs_and_prefetched_blocks(tmp_path):
    imgs = _write(tmp_path / "s", n=7, blocks=3)
    store = SliceStore.open(tmp_path / "s")
    order = [3, 4, 5, 0, 20, 19, 19, 1, 2]  # runs, a jump back, a repeat
    np.testing.assert_array_equal(store.read(order), imgs[order])
    view = store.take([2, 3, 9, 10, 11, 15])
    for prefetch in (True, False):
        got = list(view.blocks(4, prefetch=prefetch))
        assert [a for a, _ in got] == [0, 4]
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), imgs[[2, 3, 9, 10, 11, 15]])
    # a store whose images file was cut short says so when a read reaches past the end
    path = tmp_path / "s" / "images.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 8 * 8 * 4)
    short = SliceStore(store.path, store._images, store._manifest, store.meta, store.rows)
    with pytest.raises(StoreError, match="file ends before row 20"):
        short.read([20])


def test_the_store_records_its_label_channels(tmp_path):
    def write(path, channels, **kw):
        with StoreWriter(path, channels=channels, height=8, width=8, **kw) as w:
            w.append(np.zeros((1, len(channels), 8, 8), np.float32), _rows(1))
        return SliceStore.open(path)

    # written by the writer: by default the channels named like label maps (BraTS's "seg")
    brain = write(tmp_path / "brain", ["t1", "seg", "flair"])
    assert json.loads((tmp_path / "brain" / "store.json").read_text())["label_channels"] == ["seg"]
    assert brain.label_channels == ["seg"] and brain.channel_index("seg") == 1
    assert write(tmp_path / "xray", ["xray"]).label_channels == []
    # or as the writer is told; a view reports the label channels it holds, at its own positions
    told = write(tmp_path / "told", ["t1", "lesion"], label_channels=["lesion"])
    assert told.label_channels == ["lesion"]
    view = brain.with_channels(["seg", "t1"])
    assert view.label_channels == ["seg"] and view.channel_index("seg") == 0 and view.channel_index("t1") == 1
    assert brain.with_channels(["t1"]).label_channels == []
    with pytest.raises(StoreError, match="no channel 'seg'"):
        brain.with_channels(["t1"]).channel_index("seg")
    with pytest.raises(StoreError, match=r"label channel\(s\) \['mask'\] are not among"):
        StoreWriter(tmp_path / "bad", channels=["t1"], height=8, width=8, label_channels=["mask"])
    # a store written before store.json recorded them: the same rule, from the channel names
    meta = json.loads((tmp_path / "brain" / "store.json").read_text())
    del meta["label_channels"]
    (tmp_path / "brain" / "store.json").write_text(json.dumps(meta))
    assert SliceStore.open(tmp_path / "brain").label_channels == ["seg"]
    meta["label_channels"] = ["nope"]
    (tmp_path / "brain" / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="label_channels must be a list of names among the channels"):
        SliceStore.open(tmp_path / "brain")
