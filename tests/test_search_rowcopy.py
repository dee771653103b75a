"""The float16 and int8 row copies on disk (issue 16): the pruned search's seeds and tiles read half
(a quarter of) the bytes, the answer stays float64 brute force's, and a copy that does not match its
store is refused."""
import json

import numpy as np
import pytest
import torch

from test_search_projection import brainlike, truth, unit64, write_store  # noqa: F401  (brainlike: a fixture)
from workbench.data.readahead import AheadReader
from workbench.errors import WorkbenchError
from workbench.search import CorrelationIndex, projection, rowcopy, tiles
from workbench.search.rowcopy import RowCopy


@pytest.fixture(params=["clusters of 8", "one cluster"])
def clusters(request, monkeypatch):
    """Row copies grouped in clusters of about 8 rows, or (at the tests' sizes, tiles of 512) one."""
    if request.param == "clusters of 8":
        monkeypatch.setattr("workbench.search.index.tiles.tile_rows", lambda dim: 8)
    return request.param


@pytest.fixture()
def spiky(brainlike):  # noqa: F811
    """The brain-like reference with rows whose unit vectors have entries below float16's normal
    range (one bright pixel, the rest faint), and constant rows."""
    q, ref = brainlike
    ref = ref.copy()
    ref[5] = 1e-3 * ref[5]
    ref[5, 0, 3, 3] = 50.0
    ref[9] = 7.0  # constant
    return q, ref


def assert_exact_through_the_copy(index, q, ref, live, fmt):
    """Pruned and auto searches, k = 1 and 4: float64 brute force's answer over the live rows, the
    pruned tiles reading the ``fmt`` copy."""
    for method in ("pruned", "auto"):
        for k in (1, 4):
            res = index.topk(q, k=k, method=method, tile=8)
            ev, ei, _ = truth(q, ref[live], k)
            np.testing.assert_array_equal(res.indices, live[ei])
            np.testing.assert_allclose(res.values, ev, atol=1e-12)
            if res.stats["method"] == "pruned":
                assert res.stats["precision"] == f"{fmt} row copy, float32 products"


def test_the_row_copy_gives_the_exact_answer_and_its_bound_holds_on_every_pair(spiky, tmp_path, clusters):
    q, ref = spiky
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    assert index.from_disk and index.row_copy is not None and "float16 row copy" in repr(index)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy", "s"]  # no temporary left
    copy = np.load(tmp_path / "rows.npy")
    assert copy.dtype == np.float16 and copy.shape == (len(ref), ref[0].size)
    # adversarial queries: a few rows' own float16 rounding errors, so that x.(y - u) is as large as
    # the bound allows for those pairs
    x32 = unit64(ref[[0, 5, 40, 100]]).float()
    err_q = (x32.double() - torch.from_numpy(copy[index.row_copy.rows[[0, 5, 40, 100]]]).double()).numpy() \
        .reshape(4, *ref.shape[1:])
    q = np.concatenate([q, err_q.astype(np.float32)])
    # every pair: a tile's float32 value from the copy is within the row's bound of the true r
    live = np.flatnonzero(~index.constant)
    _, _, r = truth(q, ref[live], 1)
    qc = tiles.chunked(unit64(q))
    rows = torch.from_numpy(copy[index.row_copy.rows[live]]).float()
    s = tiles.tile_product(qc, torch.arange(len(q)), rows).reshape(len(q), len(live)).double().numpy()
    err = index.row_error.numpy()[live]
    assert (np.abs(s - r) <= err[None, :]).all()
    at = np.searchsorted(live, [0, 40, 100])  # (row 5's bound is mostly the float32 normalisation's)
    worst = np.abs(s - r)[[-4, -2, -1], at]
    assert (worst > 0.5 * err[at]).all()  # those pairs come close to it
    assert err.max() < 1e-3 and np.median(err) < 4e-4  # float16: 11 bits
    assert_exact_through_the_copy(index, q, ref, live, "float16")


def test_the_tiles_read_the_row_copy_ahead_not_the_store(brainlike, tmp_path, monkeypatch):  # noqa: F811
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=8, row_copy=tmp_path / "rows.npy")  # tiles beyond the seeds
    got = {"copy": 0, "store": 0}
    get = AheadReader.get

    def spy(self, positions):
        out = get(self, positions)
        if isinstance(self.store, RowCopy):
            got["copy"] += 1
            assert out.dtype == np.float16
            np.testing.assert_array_equal(out, self.store.read(positions))  # the same rows, read ahead
        else:
            got["store"] += 1
        return out
    monkeypatch.setattr(AheadReader, "get", spy)
    res = index.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, truth(q, ref, 3)[1])
    assert got["copy"] > 2  # the tiles
    assert got["store"] >= 1  # the float64 seeds and rescore read the store itself


@pytest.mark.parametrize("fmt", rowcopy.FORMATS)
def test_a_saved_index_reopens_its_row_copy_and_refuses_an_edited_one(brainlike, tmp_path, fmt):  # noqa: F811
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy",
                             row_copy_format=fmt)
    first = index.topk(q, k=3, method="pruned", tile=8)
    index.save(tmp_path / "i")
    assert json.loads((tmp_path / "i" / "index.json").read_text())["row_copy"] == str((tmp_path / "rows.npy").resolve())
    again = CorrelationIndex.open(tmp_path / "i")
    assert again.row_copy is not None and again.row_copy.fmt == fmt
    res = again.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, first.indices)
    np.testing.assert_array_equal(res.values, first.values)
    # the index's record of the copy's format and the file disagree: refused, both named
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    other = next(f for f in rowcopy.FORMATS if f != fmt)
    (tmp_path / "i" / "index.json").write_text(json.dumps({**meta, "row_copy_format": other}))
    with pytest.raises(WorkbenchError, match=f"rows.npy: a row copy of .*needs a {other} copy"):
        CorrelationIndex.open(tmp_path / "i")
    (tmp_path / "i" / "index.json").write_text(json.dumps(meta))
    # an edited row of the copy (one the check recomputes): refused, the file named
    edited = np.load(tmp_path / "rows.npy", mmap_mode="r+")
    at = again.row_copy.rows[again.check[0]]
    edited[at] = np.flip(edited[at])
    edited.flush()
    del edited
    with pytest.raises(WorkbenchError, match="rows.npy.*do not match the store"):
        CorrelationIndex.open(tmp_path / "i")
    (tmp_path / "rows.npy").unlink()
    with pytest.raises(WorkbenchError, match="rows.npy.*row copy"):
        CorrelationIndex.open(tmp_path / "i")
    np.save(tmp_path / "rows.npy", np.zeros((3, 4), dtype=np.float16))  # another file in its place
    with pytest.raises(WorkbenchError, match=r"rows.npy.*\(3, 4\)"):
        CorrelationIndex.open(tmp_path / "i")


def test_a_saved_index_moved_with_its_store_and_copy_still_opens(brainlike, tmp_path):  # noqa: F811
    """A project folder moved (or mounted elsewhere) with its store, row copy and index inside: the
    index finds them beside it; with the store gone from both places, one error names both."""
    q, ref = brainlike
    project = tmp_path / "project"
    store = write_store(project / "data" / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=project / "data" / "rows.npy")
    first = index.topk(q, k=3, method="pruned", tile=8)
    index.save(project / "runs" / "i")
    moved = tmp_path / "elsewhere"
    project.rename(moved)
    again = CorrelationIndex.open(moved / "runs" / "i")
    assert again.reference.path.resolve() == (moved / "data" / "s").resolve()
    assert again.row_copy.path == (moved / "data" / "rows.npy").resolve()
    res = again.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, first.indices)
    np.testing.assert_array_equal(res.values, first.values)
    # only the copy moved back to where it was: found there
    (tmp_path / "project" / "data").mkdir(parents=True)
    (moved / "data" / "rows.npy").rename(tmp_path / "project" / "data" / "rows.npy")
    assert CorrelationIndex.open(moved / "runs" / "i").row_copy.path == tmp_path / "project" / "data" / "rows.npy"
    # the store in neither place: both named
    (moved / "data" / "s").rename(tmp_path / "gone")
    with pytest.raises(WorkbenchError, match=r"project/data/s: the reference store of the index .*elsewhere/runs/i "
                                             r"is not there nor at .*elsewhere/data/s"):
        CorrelationIndex.open(moved / "runs" / "i")
    # another store in its place (rebuilt): refused by its identity, not searched
    write_store(moved / "data" / "s", ref[::-1].copy())
    with pytest.raises(WorkbenchError, match="has changed since the index was built"):
        CorrelationIndex.open(moved / "runs" / "i")


def test_the_row_copy_is_in_cluster_order_and_the_tiles_read_its_runs(brainlike, tmp_path, monkeypatch):  # noqa: F811
    """Rows grouped by k-means cluster of their codes; the tiles cut in that order, each reading
    runs of the copy; the same exact answer; the order saved, checked and refused when wrong."""
    q, ref = brainlike
    monkeypatch.setattr("workbench.search.index.tiles.tile_rows", lambda dim: 8)
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    place = index.row_copy.rows
    assert sorted(place) == list(range(len(ref))) and (place != np.arange(len(ref))).any()
    # the copy holds row i at place[i] (to a float16 rounding of the float32 unit row the index took)
    copy = np.load(tmp_path / "rows.npy")
    unit = unit64(ref).float().to(torch.float16).numpy()
    np.testing.assert_allclose(copy[place].astype(np.float32), unit.astype(np.float32), atol=1e-4)
    moved = place != np.arange(len(ref))
    assert np.abs(copy[moved].astype(np.float32) - unit[moved]).max() > 1e-2  # not in store order
    # rows in a cluster are alike: neighbours in the copy correlate more than neighbours in the store
    order = np.argsort(place)
    r_copy = (unit[order][1:].astype(np.float64) * unit[order][:-1]).sum(axis=1)
    r_store = (unit[1:].astype(np.float64) * unit[:-1]).sum(axis=1)
    assert np.median(r_copy) > np.median(r_store) - 0.02
    runs = []
    submit = AheadReader._submit

    def spy(self, positions, buf):
        if isinstance(self.store, RowCopy):
            runs.append(self.store.rows[positions])
        return submit(self, positions, buf)
    monkeypatch.setattr(AheadReader, "_submit", spy)
    for method in ("pruned", "auto"):
        for k in (1, 3):
            res = index.topk(q, k=k, method=method, tile=8)
            ev, ei, _ = truth(q, ref, k)
            np.testing.assert_array_equal(res.indices, ei)
            np.testing.assert_allclose(res.values, ev, atol=1e-12)
    if AheadReader(index.row_copy).direct:  # O_DIRECT reads (else the page cache's, via RowCopy.read)
        assert runs and all((np.diff(r) > 0).all() for r in runs)  # each tile's rows: ascending in the copy
        assert all(r[-1] // 8 == r[0] // 8 for r in runs)  # ... within one tile of the copy
    index.save(tmp_path / "i")
    again = CorrelationIndex.open(tmp_path / "i")
    np.testing.assert_array_equal(again.row_copy.rows, place)
    res = again.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, truth(q, ref, 3)[1])
    # a wrong order: two rows swapped (the check rows among them) is refused by the check, not searched
    wrong = place.copy()
    a, b = again.check[0], next(i for i in range(len(ref)) if i not in set(again.check.tolist()))
    wrong[[a, b]] = wrong[[b, a]]
    np.save(tmp_path / "i" / "copy_place.npy", wrong)
    with pytest.raises(WorkbenchError, match="rows.npy.*do not match the store"):
        CorrelationIndex.open(tmp_path / "i")
    np.save(tmp_path / "i" / "copy_place.npy", np.zeros(len(ref), dtype=np.int64))  # not a permutation
    with pytest.raises(WorkbenchError, match="copy_place.npy: not the order of a row copy"):
        CorrelationIndex.open(tmp_path / "i")


def test_a_failed_reordering_leaves_no_copy(brainlike, tmp_path, monkeypatch):  # noqa: F811
    _, ref = brainlike
    monkeypatch.setattr("workbench.search.index.tiles.tile_rows", lambda dim: 8)
    store = write_store(tmp_path / "s", ref)
    calls = []
    read = rowcopy.pread_rows

    def failing(*a, **kw):  # the rewrite in cluster order fails halfway
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk full")
        return read(*a, **kw)
    monkeypatch.setattr(rowcopy, "REORDER_ROWS", 16)
    monkeypatch.setattr(rowcopy, "pread_rows", failing)
    with pytest.raises(OSError, match="disk full"):
        CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # neither the copy nor a temporary


def test_a_row_copy_is_never_left_half_written_nor_written_over(brainlike, tmp_path, monkeypatch):  # noqa: F811
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    with pytest.raises(WorkbenchError, match="keep_vectors=False"):
        CorrelationIndex(store, keep_vectors=True, row_copy=tmp_path / "rows.npy")
    with pytest.raises(WorkbenchError, match=".npy"):
        CorrelationIndex(store, keep_vectors=False, row_copy=tmp_path / "rows.bin")
    codes = projection.codes
    calls = []

    def failing(*a, **kw):  # the pass over the reference fails after its first block
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk full")
        return codes(*a, **kw)
    monkeypatch.setattr(projection, "codes", failing)
    monkeypatch.setattr("workbench.search.index.BLOCK_BYTES", 8 * ref[0].size * 16)  # blocks of 16 images
    with pytest.raises(RuntimeError, match="disk full"):
        CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # neither the copy nor its temporary
    monkeypatch.undo()
    CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    with pytest.raises(WorkbenchError, match="rows.npy exists"):
        CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")


@pytest.mark.parametrize("fmt", rowcopy.FORMATS)
def test_the_row_copy_reads_its_rows_with_and_without_o_direct(brainlike, tmp_path, clusters, fmt):  # noqa: F811
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy",
                             row_copy_format=fmt)
    copy = index.row_copy
    full = np.load(tmp_path / "rows.npy")[copy.rows]  # in index order
    pos = np.array([0, 1, 2, 7, 30, 31, len(ref) - 1])
    np.testing.assert_array_equal(copy.read(pos), full[pos])
    buf = copy.read_buffer(10)
    got = copy.read(pos, buf)
    np.testing.assert_array_equal(got, full[pos])
    assert np.shares_memory(got, buf)
    for direct in (False, None):  # the page-cache path, and O_DIRECT where the file system allows it
        with AheadReader(copy, 2, direct=direct) as reader:
            reader.ask(pos)
            np.testing.assert_array_equal(reader.get(pos), full[pos])
            np.testing.assert_array_equal(reader.get(pos[::2]), full[pos[::2]])  # not asked: read now
    with pytest.raises(WorkbenchError, match="out of range"):
        copy.read([len(ref)])


@pytest.mark.parametrize("fmt", rowcopy.FORMATS)
@pytest.mark.parametrize("group", [3, 16])
def test_copied_rows_are_widened_a_few_slices_at_a_time_within_the_bound(group, fmt, monkeypatch):
    """The sampled product of float16 rows widens them WIDEN_SLICES slices at a time (groups of 3:
    3 + 3 + ... + 2 slices, and a short last slice): every pair within the float32 tiles' bound of
    its float64 value, and equal to the product of the rows widened whole up to the summation order."""
    monkeypatch.setattr(tiles, "WIDEN_SLICES", group)
    rng = np.random.default_rng(7)
    dim = 20 * tiles.TIER_CHUNK + 300
    q = rng.standard_normal((6, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r16 = torch.from_numpy(rng.standard_normal((9, dim)).astype(np.float16))
    r16 = (r16.double() / r16.double().norm(dim=1, keepdim=True)).half()
    if fmt == "int8":  # the rows as an int8 copy's, and their float32 values (exact in float64 below)
        raw, wide = rowcopy.encode(r16.float(), "int8")
        r16 = rowcopy.Int8Rows(raw, dim)
    else:
        wide = r16.float()
    qi = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    lr = torch.tensor([2, 8, 0, 1, 2, 7, 4])
    qc = tiles.chunked(torch.from_numpy(q))
    buffer = [None]
    got = tiles.pair_product(qc, qi, lr, r16, buffer)
    assert buffer[0] is not None and buffer[0].numel() == 9 * min(group, 20) * tiles.TIER_CHUNK  # a few slices
    whole = tiles.pair_product(qc, qi, lr, wide)
    exact = (torch.from_numpy(q)[qi].float().double() * wide.double()[lr]).sum(dim=1)
    bound = tiles.tier_error_bound(dim)
    assert ((got.double() - exact).abs() <= bound).all()
    np.testing.assert_allclose(got.numpy(), whole.numpy(), atol=1e-6)
    pick = [0, 2]  # rows 2 and 0
    again = tiles.pair_product(qc, qi[pick], lr[pick], r16[:3], buffer)  # the buffer reused for a smaller tile
    np.testing.assert_allclose(again.numpy(), got[pick].numpy(), atol=1e-6)  # (float32 sums: order may differ)
    # each group's product takes the tile's one pattern (tiles.SlicePattern): pairs in any order
    # come back in their own places, in every group alike
    shuffle = torch.tensor([6, 2, 0, 5, 1, 4, 3])
    np.testing.assert_allclose(tiles.pair_product(qc, qi[shuffle], lr[shuffle], r16, buffer).numpy(),
                               got[shuffle].numpy(), atol=1e-6)


def test_an_int8_row_copy_gives_the_exact_answer_and_its_bound_holds_on_every_pair(spiky, tmp_path, clusters):
    """An int8 copy (blocks of INT8_BLOCK pixels, a float32 scale each): a quarter of the store's
    bytes; every pair's float32 tile value from it within the row's measured bound, adversarial
    queries (rows' own int8 rounding errors) close to it, and every answer float64 brute force's."""
    q, ref = spiky
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy",
                             row_copy_format="int8")
    assert "int8 row copy" in repr(index)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy", "s"]  # no temporary left
    dim = ref[0].size
    blocks = -(-dim // rowcopy.INT8_BLOCK)
    raw = np.load(tmp_path / "rows.npy")
    assert raw.dtype == np.uint8 and raw.shape == (len(ref), blocks * (rowcopy.INT8_BLOCK + 4))
    assert raw.shape[1] < dim * 2 * 0.51  # about half a float16 copy
    # the stored values, decoded here from the bytes by the format's definition: q * s, block by block
    scales = raw[:, :4 * blocks].copy().view(np.float32)
    ints = raw[:, 4 * blocks:].copy().view(np.int8).reshape(len(ref), blocks, rowcopy.INT8_BLOCK)
    assert np.abs(ints).max() == 127
    decoded = (ints.astype(np.float32) * scales[:, :, None]).reshape(len(ref), -1)[:, :dim]
    pos = index.row_copy.rows  # index position -> copy row
    np.testing.assert_array_equal(index.row_copy.unit_rows(np.arange(len(ref))).numpy(), decoded[pos])
    x32 = unit64(ref).float().numpy()
    live = np.flatnonzero(~index.constant)
    rel = np.linalg.norm(decoded[pos] - x32, axis=1)[live]
    assert 1e-4 < np.median(rel) < 1e-2  # int8: about 8 bits a block
    # adversarial queries: a few rows' own int8 rounding errors
    pick = [0, 40, 100]
    err_q = (x32[pick].astype(np.float64) - decoded[pos[pick]]).reshape(len(pick), *ref.shape[1:])
    q = np.concatenate([q, err_q.astype(np.float32)])
    _, _, r = truth(q, ref[live], 1)
    qc = tiles.chunked(unit64(q))
    s = tiles.tile_product(qc, torch.arange(len(q)), torch.from_numpy(decoded[pos[live]]))
    s = s.reshape(len(q), len(live)).double().numpy()
    err = index.row_error.numpy()[live]
    assert (np.abs(s - r) <= err[None, :]).all()
    at = np.searchsorted(live, pick)
    assert (np.abs(s - r)[np.arange(-len(pick), 0), at] > 0.5 * err[at]).all()  # close to the bound
    assert_exact_through_the_copy(index, q, ref, live, "int8")


def test_int8_blocks_of_tiny_or_zero_values_are_stored_as_zeros_within_the_bound():
    """A block whose largest |value| / 127 is below INT8_TINY (or zero) keeps scale 0: no product
    of the widening is subnormal, and the measured lo holds the block's values."""
    b = rowcopy.INT8_BLOCK
    dim = 3 * b + 37  # a short last block, padded
    x = np.random.default_rng(2).standard_normal((3, dim)).astype(np.float32)
    x[0, :b] = 1e-35  # tiny
    x[1, b:2 * b] = 0.0
    x[2, 3 * b:] = -5e-31  # tiny, in the padded last block
    x32 = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    raw, wide = rowcopy.encode(x32, "int8")
    scales = raw[:, :16].view(torch.float32)
    assert scales[0, 0] == 0 and scales[1, 1] == 0 and scales[2, 3] == 0 and (scales[0, 1:] > 0).all()
    assert (wide[0, :b] == 0).all() and (wide[2, 3 * b:] == 0).all()
    nonzero = wide[wide != 0].abs()
    assert float(nonzero.min()) >= rowcopy.INT8_TINY  # no subnormal value
    assert (wide - x32).abs().max() <= scales.max() / 2 * (1 + 1e-6)  # rounding to the nearest step
    rows = rowcopy.Int8Rows(raw, dim)
    np.testing.assert_array_equal(rows.float().numpy(), wide.numpy())
    # any columns, into a buffer or not, row selections and the last short block alike
    for start, stop in ((0, b), (b, 3 * b), (2 * b, dim), (3 * b, dim), (5, 300)):
        np.testing.assert_array_equal(rows.widen(start, stop).numpy(), wide[:, start:stop].numpy())
        out = torch.empty((3, stop - start))
        assert rows.widen(start, stop, out) is out
        np.testing.assert_array_equal(out.numpy(), wide[:, start:stop].numpy())
    np.testing.assert_array_equal(rowcopy.widen(rows[[2, 0]], b, dim).numpy(), wide[[2, 0], b:].numpy())
