"""The float16 row copy on disk (issue 16): the pruned search's seeds and tiles read half the bytes,
the answer stays float64 brute force's, and a copy that does not match its store is refused."""
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
    for method in ("pruned", "auto"):
        for k in (1, 4):
            res = index.topk(q, k=k, method=method, tile=8)
            ev, ei, _ = truth(q, ref[live], k)
            np.testing.assert_array_equal(res.indices, live[ei])
            np.testing.assert_allclose(res.values, ev, atol=1e-12)
            if res.stats["method"] == "pruned":
                assert res.stats["precision"] == "float16 row copy, float32 products"


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


def test_a_saved_index_reopens_its_row_copy_and_refuses_an_edited_one(brainlike, tmp_path):  # noqa: F811
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
    first = index.topk(q, k=3, method="pruned", tile=8)
    index.save(tmp_path / "i")
    assert json.loads((tmp_path / "i" / "index.json").read_text())["row_copy"] == str((tmp_path / "rows.npy").resolve())
    again = CorrelationIndex.open(tmp_path / "i")
    assert again.row_copy is not None
    res = again.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, first.indices)
    np.testing.assert_array_equal(res.values, first.values)
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


def test_the_row_copy_reads_its_rows_with_and_without_o_direct(brainlike, tmp_path, clusters):  # noqa: F811
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=32, row_copy=tmp_path / "rows.npy")
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


@pytest.mark.parametrize("group", [3, 16])
def test_float16_rows_are_widened_a_few_slices_at_a_time_within_the_bound(group, monkeypatch):
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
    qi = torch.tensor([0, 0, 1, 3, 3, 3, 5])
    lr = torch.tensor([2, 8, 0, 1, 2, 7, 4])
    qc = tiles.chunked(torch.from_numpy(q))
    buffer = [None]
    got = tiles.pair_product(qc, qi, lr, r16, buffer)
    assert buffer[0] is not None and buffer[0].numel() == 9 * min(group, 20) * tiles.TIER_CHUNK  # a few slices
    whole = tiles.pair_product(qc, qi, lr, r16.float())
    exact = (torch.from_numpy(q)[qi].float().double() * r16.double()[lr]).sum(dim=1)
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
