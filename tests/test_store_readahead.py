"""The store's read-ahead (`workbench.data.readahead.AheadReader`): what the pruned search's tiles
read from disk.  Every read must give the bits SliceStore.read gives, in either mode (O_DIRECT by
threads, or the page cache), for any view, any order of asks and gets, and runs split into many
requests; a truncated store is named; closing waits for reads in flight."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from workbench.data import readahead
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import StoreError

MODES = [True, False]  # direct (where this platform and file system allow it), page cache


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((70, 3, 8, 12)).astype(np.float32)  # rows of 1,152 bytes: none aligned
    with StoreWriter(tmp_path / "s", channels=["a", "b", "c"], height=8, width=12) as w:
        w.append(images, [{"subject": f"s{i // 10}", "split": "train"} for i in range(len(images))])
    return SliceStore.open(tmp_path / "s")


def open_reader(store, direct, **kw):
    if direct and not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    reader = store.reader(2, direct=direct, **kw)
    assert reader.direct == direct
    return reader


@pytest.mark.parametrize("direct", MODES)
def test_what_is_got_is_what_the_store_reads(store, direct, monkeypatch):
    monkeypatch.setattr(readahead, "CHUNK", 3 * 1152 + 100)  # runs split into requests mid-row
    batches = [np.arange(0, 12), np.array([3, 4, 9, 10, 11, 40]), np.arange(55, 70),  # up to the file's end
               np.array([69]), np.array([0]), np.arange(70)]
    with open_reader(store, direct) as reader:
        for b in batches[:3]:
            reader.ask(b)
        for b in batches:  # the first three asked ahead, the rest read when got
            got = reader.get(b)
            np.testing.assert_array_equal(got, store.read(b))
            assert got.dtype == np.float32 and got.shape == (len(b), 3, 8, 12)
            if direct:
                assert np.shares_memory(got, reader._current)  # a view of its buffer, reused
        assert reader._count <= reader.depth + 2


@pytest.mark.parametrize("direct", MODES)
def test_views_and_their_channels_and_asks_that_are_never_got(store, direct):
    view = store.take(np.r_[50:60, 10:20]).with_channels(["c", "a"])  # store rows out of order, two channels
    a, b, c = np.array([0, 1, 2, 15]), np.array([4, 5, 6, 7, 8]), np.array([19, 18, 3])
    with open_reader(view, direct) as reader:
        reader.ask(a)
        reader.ask(b)  # never got: dropped when c is got
        reader.ask(c)
        for p in (a, c):
            np.testing.assert_array_equal(reader.get(p), view.read(p))
        assert not reader._pending


def test_direct_reads_land_in_place_where_the_file_allows_it(tmp_path, monkeypatch):
    """Rows whose offsets, lengths and buffer are BLOCK-aligned are read straight into the buffer;
    the others through a thread's scratch buffer: the same bits either way."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    images = np.random.default_rng(1).standard_normal((6, 1, 32, 32)).astype(np.float32)  # 4,096 bytes a row
    path = tmp_path / "aligned.npy"
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 32, 32), }"
    header = header + b" " * (readahead.BLOCK - 10 - len(header) - 1) + b"\n"  # data at byte 4,096
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + images.tobytes())
    mapped = np.load(path, mmap_mode="r")
    assert mapped.offset == readahead.BLOCK
    np.testing.assert_array_equal(mapped, images)
    import pandas as pd
    view = SliceStore(tmp_path, mapped, pd.DataFrame({"subject": ["s"] * 6}), {"channels": ["a"]})
    scratch_used = []
    real = readahead.aligned_empty
    monkeypatch.setattr(readahead, "aligned_empty", lambda n: (scratch_used.append(n), real(n))[1])
    with view.reader(1, direct=True) as reader:
        if not reader.direct:
            pytest.skip("O_DIRECT refused here")
        np.testing.assert_array_equal(reader.get(np.array([1, 2, 3])), images[1:4])
        assert len(scratch_used) == 1  # the buffer only: no scratch
        np.testing.assert_array_equal(reader.get(np.array([5, 0])), images[[5, 0]])


@pytest.mark.parametrize("direct", MODES)
def test_a_truncated_store_is_named(store, direct):
    path = store.path / "images.npy"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 1152 * 3)  # the last three rows gone after the store was opened
    with open_reader(store, direct) as reader:
        np.testing.assert_array_equal(reader.get(np.array([0, 1])), store.read(np.array([0, 1])))
        with pytest.raises(StoreError, match="images.npy") as err:
            reader.get(np.array([65, 66, 67]))
        assert "truncated" in str(err.value)


def test_closing_waits_for_reads_in_flight(store, monkeypatch):
    """A buffer must not go while a thread still writes to it: close() waits for every read."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    gate, started, done = threading.Event(), [], []
    real = readahead.AheadReader._read

    def slow(self, dest, pos):
        started.append(pos)
        gate.wait(5)
        real(self, dest, pos)
        done.append(pos)
    monkeypatch.setattr(readahead.AheadReader, "_read", slow)
    reader = open_reader(store, True)
    reader.ask(np.arange(10))
    reader.ask(np.arange(20, 30))
    threading.Timer(0.2, gate.set).start()
    reader.close()
    assert sorted(done) == sorted(started) and reader._pool is None and reader._fd is None
    assert not [t for t in threading.enumerate() if t.name.startswith("store-readahead")]


@pytest.mark.parametrize("direct", MODES)
def test_streamed_blocks_are_the_callers_to_keep(store, direct, monkeypatch):
    """SliceStore.blocks (the streamed brute force, the index's build) reads ahead with the same
    reader, each block a fresh array: blocks kept by the caller are never overwritten."""
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)  # the page-cache thread instead
    elif not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    view = store.take(np.r_[60:70, 0:23]).with_channels(["b", "c"])
    kept = list(view.blocks(5))
    assert [a for a, _ in kept] == list(range(0, 33, 5))
    np.testing.assert_array_equal(np.concatenate([b for _, b in kept]), view.read(np.arange(33)))
    assert not any(np.shares_memory(x, y) for i, (_, x) in enumerate(kept) for _, y in kept[i + 1:])
    with view.reader(1, reuse=False, direct=direct or None) as reader:
        a, b = np.arange(0, 4), np.arange(4, 9)
        reader.ask(a)
        first = reader.get(a)
        second = reader.get(b)
        assert not np.shares_memory(first, second)
        np.testing.assert_array_equal(first, view.read(a))
