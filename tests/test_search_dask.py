"""The Dask search on a LocalCluster of worker processes gives exactly the single-process answer."""
import warnings

import numpy as np
import pytest

pytest.importorskip("distributed")
from distributed import Client, LocalCluster  # noqa: E402

from workbench.data.store import SliceStore, StoreWriter  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.search import topk_correlation  # noqa: E402
from workbench.search.distributed import topk_correlation_dask  # noqa: E402

N = 300


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           host="127.0.0.1")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _images(seed=0):
    """Noisy copies of a few base images (near-ties abound), one constant image at row 17."""
    rng = np.random.default_rng(seed)
    base = rng.random((30, 2, 16, 16)).astype(np.float32)
    ref = np.clip(base[np.arange(N) % 30] + 0.02 * rng.standard_normal((N, 2, 16, 16)), 0, 1).astype(np.float32)
    ref[17] = 0.5  # constant reference image
    ref[123] = ref[93]  # an exact duplicate: a tie broken by the lower index
    queries = np.concatenate([base[:8] + 0.01 * rng.standard_normal((8, 2, 16, 16)),
                              rng.random((3, 2, 16, 16)), ref[[93, 200]]]).astype(np.float32)
    queries[9] = 0.25  # constant query
    return np.clip(queries, 0, 1), ref


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    queries, ref = _images()
    path = tmp_path_factory.mktemp("dask") / "ref"
    with StoreWriter(path, channels=["t1", "flair"], height=16, width=16) as w:
        w.append(ref, [{"subject": f"s{i % 11}", "z": i // 11, "split": "train" if i % 4 else "test"}
                       for i in range(N)])
    return queries, SliceStore.open(path)


def _single(queries, reference, k, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return topk_correlation(queries, reference, k=k, **kw)


def _same(a, b):
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.constant_queries, b.constant_queries)
    np.testing.assert_array_equal(np.sort(a.constant_reference), np.sort(b.constant_reference))
    assert a.pairs == b.pairs


@pytest.mark.parametrize("k", [1, 5])
def test_identical_to_single_process(client, data, k):
    queries, store = data
    with pytest.warns(UserWarning, match="constant"):
        got = topk_correlation_dask(queries, store, k=k, client=client)
    want = _single(queries, store, k)
    _same(got, want)
    assert got.indices.shape == (len(queries), k)
    assert got.indices[-2, 0] == 93  # the duplicate pair 93 / 123: lower index first
    if k > 1:
        assert got.indices[-2, 1] == 123 and got.values[-2, 0] == got.values[-2, 1]


def test_view_more_shards_than_workers_and_options_pass_through(client, data):
    queries, store = data
    train = store.where(split="train")
    want = _single(queries, train, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = topk_correlation_dask(queries, train, k=5, client=client, shards=7, block_size=9, progress=True)
        # shards that hold fewer images than k, and more shards than images are clipped
        small = topk_correlation_dask(queries, train.take(np.arange(12)), k=5, client=client, shards=50)
    _same(got, want)
    # one-image shards too: the float64 rescore gives each pair the same bits whatever the chunk
    _same(small, _single(queries, train.take(np.arange(12)), 5))
    # indices are positions in the view, not store rows
    assert set(train.rows[got.indices[got.indices >= 0]]) <= set(store.rows)


def test_constant_query_and_constant_reference(client, data):
    queries, store = data
    with pytest.warns(UserWarning) as record:
        got = topk_correlation_dask(queries, store, k=3, client=client, shards=5)
    messages = " ".join(str(w.message) for w in record)
    assert "1 reference image(s) are constant" in messages and "1 query image(s) are constant" in messages
    assert got.constant_queries.tolist() == [i == 9 for i in range(len(queries))]
    assert got.indices[9].tolist() == [-1, -1, -1] and np.all(got.values[9] == -np.inf)
    assert got.constant_reference.tolist() == [17]
    assert 17 not in got.indices


def test_shard_of_only_constant_images(client, data, tmp_path):
    queries, _ = data
    ref = np.random.default_rng(1).random((10, 2, 16, 16)).astype(np.float32)
    ref[:4] = 0.3  # the first shard is all constant
    with StoreWriter(tmp_path / "c", channels=["t1", "flair"], height=16, width=16) as w:
        w.append(ref, [{"subject": "a"}] * 10)
    store = SliceStore.open(tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = topk_correlation_dask(queries, store, k=3, client=client, shards=3)
        _same(got, _single(queries, store, 3))
        with pytest.raises(WorkbenchError, match="only 6 reference images are non-constant"):
            topk_correlation_dask(queries, store, k=7, client=client, shards=3)


def test_numpy_reference_is_refused(client, data):
    queries, store = data
    with pytest.raises(WorkbenchError, match="needs a SliceStore"):
        topk_correlation_dask(queries, store.to_array(), k=1, client=client)


def test_store_unreadable_on_workers_names_path_and_shard(client, data, tmp_path):
    queries, ref = data[0], data[1].to_array()
    path = tmp_path / "moving"
    with StoreWriter(path, channels=["t1", "flair"], height=16, width=16) as w:
        w.append(ref[:40], [{"subject": "a"}] * 40)
    store = SliceStore.open(path)
    path.rename(tmp_path / "moved")  # the client still has it open; the workers cannot find it
    with pytest.raises(WorkbenchError, match=r"shard [12]/2 \(view positions") as err:
        topk_correlation_dask(queries, store, k=1, client=client, shards=2)
    assert str(path) in str(err.value) and "does not exist" in str(err.value)


def test_through_topk_correlation_with_channels_and_mask(client, data):
    queries, store = data
    mask = np.zeros((16, 16), bool)
    mask[3:13, 2:14] = True
    want = _single(queries, store, 3, channels=["flair"], mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = topk_correlation(queries, store, k=3, channels=["flair"], mask=mask, client=client, shards=3)
    _same(got, want)


def test_worker_path_and_a_different_store_at_that_path(client, data, tmp_path):
    import shutil

    queries, store = data
    shutil.copytree(store.path, tmp_path / "mounted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = topk_correlation_dask(queries, store, k=2, client=client, worker_path=tmp_path / "mounted")
    _same(got, _single(queries, store, 2))
    with StoreWriter(tmp_path / "other", channels=["t1", "flair"], height=16, width=16) as w:
        w.append(store.to_array()[:50], [{"subject": "a"}] * 50)
    with pytest.raises(WorkbenchError, match="same store mounted"):
        topk_correlation_dask(queries, store, k=2, client=client, worker_path=tmp_path / "other")


@pytest.mark.parametrize("method", ["brute", "pruned"])
@pytest.mark.parametrize("shards", [3, 12])
def test_distinct_search_merges_the_shards_labels(client, method, shards, tmp_path):
    """A distinct search over Dask told the labels: each shard rescores what its own top k' needs
    and answers its k best labels' bests; merged, they are the float64 ranking's answer (12 shards
    of 20 slices hold one or two subjects each, fewer than k = 3: such a shard, searched whole,
    is done with what it holds), with fewer pairs rescored than without the labels."""
    from test_search import check_labelled, labelled_case

    q, ref, labels, ev, ei = labelled_case()
    with StoreWriter(tmp_path / "s", channels=["a"], height=8, width=8) as w:
        w.append(ref, [{"subject": f"s{v}", "split": "train"} for v in labels])
    store = SliceStore.open(tmp_path / "s")
    seen = []

    def search(queries, reference, k, by_label=None):
        res = topk_correlation(queries, reference, k=k, client=client, shards=shards, method=method,
                               by_label=by_label)
        seen.append(res.by_label is not None)
        assert res.stats["shards"] == shards
        return res

    res, unlabelled = check_labelled(search, q, store, labels, ev, ei)
    assert any(seen) and not all(seen) and unlabelled.rescored > res.rescored
