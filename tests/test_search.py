import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.search import float32_error_bound, screen_error_bound, topk_correlation


def reference_topk(q, r, k):
    """float64 numpy brute force: Pearson r over all pixels and channels, ties by lower index."""
    a = q.reshape(len(q), -1).astype(np.float64)
    b = r.reshape(len(r), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    s = np.where(np.isfinite(s), s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def best_of_each_label(values, indices, labels, k):
    """From a full float64 ranking (``reference_topk`` over every image): each query's first image of
    each label, the k best labels, as (values, indices); constant images (-inf) never count."""
    vals, idx = [], []
    for v_row, i_row in zip(values, indices):
        seen, v_out, i_out = set(), [], []
        for v, i in zip(v_row, i_row):
            if np.isfinite(v) and labels[i] not in seen:
                seen.add(labels[i])
                v_out.append(v)
                i_out.append(i)
        vals.append(v_out[:k])
        idx.append(i_out[:k])
    return vals, idx


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    base = rng.random((40, 3, 12, 12)).astype(np.float32)
    # reference: noisy copies of a few base images, so near-ties abound
    ref = np.concatenate([base + 0.02 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(8)])
    queries = np.concatenate([base[:10] + 0.01 * rng.standard_normal((10, 3, 12, 12)).astype(np.float32),
                              rng.random((6, 3, 12, 12)).astype(np.float32)])
    return queries, ref


@pytest.mark.parametrize("precision", ["bf16", "float32"])
@pytest.mark.parametrize("k", [1, 5])
def test_matches_float64_brute_force_over_several_blocks(data, k, precision):
    q, r = data
    values, indices = topk_correlation(q, r, k=k, block_size=37, precision=precision)  # 9 blocks
    ev, ei = reference_topk(q, r, k)
    np.testing.assert_array_equal(indices, ei)
    np.testing.assert_allclose(values, ev, atol=1e-5)
    assert np.all(np.diff(values, axis=1) <= 0)  # descending


def test_values_agree_with_scipy_pearsonr(data):
    q, r = data
    res = topk_correlation(q, r, k=3)
    for i in (0, 7, 12):
        for j in range(3):
            assert res.values[i, j] == pytest.approx(pearsonr(q[i].ravel(), r[res.indices[i, j]].ravel())[0], abs=1e-5)


def test_torch_tensors_and_stores_give_the_same_answer(data, tmp_path):
    q, r = data
    with StoreWriter(tmp_path / "ref", channels=["a", "b", "c"], height=12, width=12) as w:
        w.append(r, [{"subject": f"s{i % 7}", "split": "train"} for i in range(len(r))])
    store = SliceStore.open(tmp_path / "ref")
    a = topk_correlation(torch.from_numpy(q), store, k=2, block_size=50)
    b = topk_correlation(q, r, k=2)
    np.testing.assert_array_equal(a.indices, b.indices)
    # a view: indices are positions in the view
    view = store.take(np.arange(100, 300))
    c = topk_correlation(q, view, k=2)
    ev, ei = reference_topk(q, r[100:300], 2)
    np.testing.assert_array_equal(c.indices, ei)


def test_near_ties_are_settled_exactly():
    # reference images that differ from the query by less than float32 can resolve
    rng = np.random.default_rng(3)
    q = rng.random((4, 1, 32, 32)).astype(np.float32)
    eps = np.zeros((30, 1, 32, 32), np.float32)
    eps.reshape(30, -1)[np.arange(30), np.arange(30)] = np.float32(1e-6) * np.arange(1, 31)
    r = np.concatenate([q[i] + eps for i in range(4)])
    res = topk_correlation(q, r, k=3, block_size=16)
    ev, ei = reference_topk(q, r, 3)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-9)
    assert res.rescored >= 3 * len(q)  # every near-tie was rescored in float64


def test_constant_images_are_reported_not_matched(data):
    q, r = data
    q, r = q.copy(), r.copy()
    q[2] = 0.3
    r[5] = 0.0
    with pytest.warns(UserWarning) as rec:
        res = topk_correlation(q, r, k=2)
    msgs = " ".join(str(w.message) for w in rec)
    assert "query image(s) are constant" in msgs and "reference image(s) are constant" in msgs
    assert res.constant_queries.tolist() == [i == 2 for i in range(len(q))]
    assert res.constant_reference.tolist() == [5]
    assert (res.indices[2] == -1).all() and np.isneginf(res.values[2]).all()
    assert not np.isnan(res.values).any()
    assert (res.indices != 5).all()
    ok = np.arange(len(q)) != 2
    _, ei = reference_topk(q, r, 2)
    np.testing.assert_array_equal(res.indices[ok], ei[ok])


def test_error_bound_is_stated_and_small():
    assert 2 ** -24 < float32_error_bound(5 * 256 * 256) < 0.03
    assert float32_error_bound(100) < float32_error_bound(10000)


def test_bad_input_is_refused_before_any_work(data):
    q, r = data
    with pytest.raises(WorkbenchError, match="shape"):
        topk_correlation(q[:, :2], r)
    with pytest.raises(WorkbenchError, match="k=1000"):
        topk_correlation(q, r, k=1000)
    with pytest.raises(WorkbenchError, match="empty"):
        topk_correlation(q[:0], r)
    bad = q.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(WorkbenchError, match="non-finite"):
        topk_correlation(bad, r)
    with pytest.raises(WorkbenchError, match="expected"):
        topk_correlation([1, 2, 3], r)


@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_brain_slices_with_many_near_ties(phantom_store, precision):
    """Adjacent slices of one volume correlate at ~0.99: the bf16 screen must still be exact."""
    images = phantom_store.to_array()
    train = phantom_store.where(split="train")
    res = topk_correlation(phantom_store, train, k=3, precision=precision, block_size=64)
    ev, ei = reference_topk(images, images[train.rows], 3)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-9)
    assert res.stats["precision"] == precision


def test_channels_and_mask_restrict_the_pixels(phantom_store):
    images = phantom_store.to_array()
    flair = phantom_store.channels.index("flair")
    mask = images[:, flair].mean(0) > 0.05  # the brain, roughly
    q, r = images[:7], images[7:]
    res = topk_correlation(phantom_store.take(range(7)), phantom_store.take(range(7, len(images))), k=2,
                           channels=["flair"], mask=mask)
    sel_q, sel_r = q[:, flair][:, mask], r[:, flair][:, mask]
    ev, ei = reference_topk(sel_q, sel_r, 2)
    np.testing.assert_array_equal(res.indices, ei)
    assert res.values[0, 0] == pytest.approx(pearsonr(sel_q[0].astype(float), sel_r[res.indices[0, 0]].astype(float))[0], abs=1e-9)
    # integer channels on arrays give the same answer as names on stores
    res2 = topk_correlation(q, r, k=2, channels=[flair], mask=mask)
    np.testing.assert_array_equal(res2.indices, res.indices)


def test_bad_channels_and_masks(data):
    q, r = data
    with pytest.raises(WorkbenchError, match="mask has shape"):
        topk_correlation(q, r, mask=np.ones((5, 5), bool))
    with pytest.raises(WorkbenchError, match="fewer than 2 pixels"):
        topk_correlation(q, r, mask=np.zeros((12, 12), bool))
    with pytest.raises(WorkbenchError, match="out of range"):
        topk_correlation(q, r, channels=[7])
    with pytest.raises(WorkbenchError, match="not found"):
        topk_correlation(q, r, channels=["flair"])
    with pytest.raises(WorkbenchError, match="precision"):
        topk_correlation(q, r, precision="int8")


def test_screen_bounds_follow_the_precision():
    d = 5 * 256 * 256
    assert screen_error_bound(d, torch.float32) < 0.0005 < 0.01 < screen_error_bound(d) < 0.013


def test_long_vectors_are_screened_in_slices_and_stay_exact():
    rng = np.random.default_rng(5)
    base = rng.random((6, 3, 48, 48)).astype(np.float32)  # 6,912 pixels > SCREEN_CHUNK
    r = np.concatenate([base + 0.01 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(10)])
    q = base + 0.005 * rng.standard_normal(base.shape).astype(np.float32)
    res = topk_correlation(q, r, k=4, block_size=17)
    ev, ei = reference_topk(q, r, 4)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-9)


# --- the prepared index ----------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_index_gives_the_same_answer_and_reopens(phantom_store, tmp_path, precision):
    from workbench.search import CorrelationIndex

    train = phantom_store.where(split="train")
    images = phantom_store.to_array()
    flair = phantom_store.channels.index("flair")
    mask = images[:, flair].mean(0) > 0.05
    index = CorrelationIndex(train, channels=["t1", "flair"], mask=mask, precision=precision)
    res = index.topk(phantom_store, k=3, block_size=50)
    want = topk_correlation(phantom_store, train, k=3, channels=["t1", "flair"], mask=mask)
    np.testing.assert_array_equal(res.indices, want.indices)
    np.testing.assert_array_equal(res.values, want.values)
    index.save(tmp_path / "train.index")
    again = CorrelationIndex.open(tmp_path / "train.index")
    assert len(again) == len(train) and repr(again) == repr(index)
    res2 = again.topk(phantom_store, k=3)
    np.testing.assert_array_equal(res2.indices, res.indices)
    np.testing.assert_array_equal(res2.values, res.values)


def test_rescore_gives_the_same_bits_from_an_array_and_a_store(phantom_store, monkeypatch):
    """The float64 rescore reads an array's rows in place and a store's through a buffer, with or
    without the index's row statistics, in one thread or with a chunk's rows shared out between
    threads, with any other pairs beside it: every pair must get the same bits either way (ties are broken by these bits, and
    Dask workers rescore their own shares)."""
    import torch

    from workbench.search import kernel
    from workbench.search.kernel import exact_pairs, row_stats
    from workbench.search.normalise import prepare_queries
    from workbench.search.sources import Selector

    images = phantom_store.to_array()
    flair = phantom_store.channels.index("flair")
    mask = images[:, flair].mean(0) > 0.05
    rng = np.random.default_rng(3)
    qi = rng.integers(0, 6, 300)
    ri = rng.integers(0, len(images), 300)
    for channels, m in [(None, None), ([0, flair], mask)]:
        select = Selector(images.shape[1:], channels, m)
        q64, _ = prepare_queries(images[:6] + 0.01, select)
        stats = row_stats(select(images))
        got = [exact_pairs(q64, images, select, qi, ri, stats), exact_pairs(q64, images, select, qi, ri),
               exact_pairs(q64, phantom_store, select, qi, ri, stats), exact_pairs(q64, phantom_store, select, qi, ri),
               exact_pairs(q64, np.asfortranarray(images), select, qi, ri, stats)]
        threads = torch.get_num_threads()
        monkeypatch.setattr(kernel, "SHARE_MIN_DIM", 1)  # rows shared out at any size
        try:
            torch.set_num_threads(3)
            got += [exact_pairs(q64, images, select, qi, ri, stats), exact_pairs(q64, phantom_store, select, qi, ri)]
        finally:
            torch.set_num_threads(threads)
            monkeypatch.undo()
        got.append(np.concatenate([exact_pairs(q64, images, select, qi[:7], ri[:7], stats),  # fewer queries along
                                   exact_pairs(q64, images, select, qi[7:], ri[7:], stats)]))
        for i, other in enumerate(got[1:]):
            np.testing.assert_array_equal(other, got[0], err_msg=f"reader {i + 1}, channels {channels}")
        # against a float64 reference computed here, pair by pair
        y = select(images).astype(np.float64)
        y = (y - y.mean(1, keepdims=True)) / np.linalg.norm(y - y.mean(1, keepdims=True), axis=1, keepdims=True)
        np.testing.assert_allclose(got[0], np.einsum("ij,ij->i", q64.numpy()[qi], y[ri]), atol=1e-12)
    assert exact_pairs(torch.zeros((1, 4), dtype=torch.float64), images, select, qi[:0], ri[:0]).shape == (0,)


def test_a_chunk_is_shared_out_by_its_pairs():
    """The rescore's threads take runs of a chunk's rows holding about equal numbers of pairs."""
    from workbench.search.kernel import _shares

    bounds = [0, 1, 2, 3, 4, 104, 105, 106, 107, 108]  # row 4 holds 100 of the 108 pairs
    assert _shares(bounds, 1) == [0, 9]
    cuts = _shares(bounds, 2)
    assert cuts[0] == 0 and cuts[-1] == 9 and cuts == sorted(set(cuts)) and len(cuts) == 3
    assert cuts[1] in (4, 5)  # the heavy row alone on one side, not split
    assert _shares([0, 10, 20, 30, 40], 2) == [0, 2, 4]
    assert _shares([5, 9], 4) == [0, 1]  # one row: one run
    assert _shares([0, 1, 2], 8) == [0, 1, 2]  # never more runs than rows


def test_index_refuses_wrong_queries_and_a_changed_store(phantom_store, tmp_path):
    from workbench.data.store import SliceStore, StoreWriter
    from workbench.search import CorrelationIndex

    with StoreWriter(tmp_path / "s", channels=["a"], height=8, width=8) as w:
        w.append(np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32), [{"split": "train"}] * 20)
    index = CorrelationIndex(SliceStore.open(tmp_path / "s"))
    with pytest.raises(WorkbenchError, match="shape"):
        index.topk(np.zeros((2, 1, 9, 9), np.float32))
    with pytest.raises(WorkbenchError, match="k=21"):
        index.topk(np.random.default_rng(1).random((2, 1, 8, 8)), k=21)
    index.save(tmp_path / "i")
    with StoreWriter(tmp_path / "s", channels=["a"], height=8, width=8, overwrite=True) as w:
        w.append(np.random.default_rng(2).random((21, 1, 8, 8), dtype=np.float32), [{"split": "train"}] * 21)
    with pytest.raises(WorkbenchError, match="has changed since the index was built"):
        CorrelationIndex.open(tmp_path / "i")
    with pytest.raises(WorkbenchError, match="not a complete CorrelationIndex"):
        CorrelationIndex.open(tmp_path / "nothing")
    with pytest.raises(WorkbenchError, match="only an index of a SliceStore"):
        CorrelationIndex(np.ones((3, 1, 4, 4)) * np.arange(16).reshape(4, 4)).save(tmp_path / "j")


@pytest.mark.parametrize("precision", ["bf16", "float32"])
@pytest.mark.parametrize("basis,block,most", [("pca", 4, 0.35), ("blocks", 2, 0.5), ("blocks", 4, 0.6), ("blocks", 8, 1.0)])
def test_pruned_search_is_exact_and_prunes(phantom_store, precision, basis, block, most):
    from workbench.search import CorrelationIndex

    images = phantom_store.to_array()
    train = phantom_store.where(split="train")
    rng = np.random.default_rng(0)
    # planted near-copies of training slices plus every held-out slice
    copies = images[train.rows[::7]] + 0.01 * rng.standard_normal(images[train.rows[::7]].shape).astype(np.float32)
    q = np.concatenate([copies, images[phantom_store.where(split="test").rows]]).astype(np.float32)
    index = CorrelationIndex(train, precision=precision, basis=basis, block=block, basis_dim=64)
    res = index.topk(q, k=3, method="pruned", tile=8)
    ev, ei = reference_topk(q, images[train.rows], 3)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-9)
    # at 32x32, 8x8 blocks leave only 4x4 coarse pixels: weak bounds, but still some pruning; the
    # fitted basis prunes best
    assert res.stats["method"] == "pruned" and res.stats["full_fraction"] < most
    assert res.stats["basis"] == basis


def test_pruned_through_topk_correlation_with_constant_images(data):
    q, r = data
    q, r = q.copy(), r.copy()
    q[1], r[4] = 0.5, 0.0
    with pytest.warns(UserWarning):
        res = topk_correlation(q, r, k=4, method="pruned")
    with pytest.warns(UserWarning):
        want = topk_correlation(q, r, k=4, method="brute")
    np.testing.assert_array_equal(res.indices, want.indices)
    np.testing.assert_array_equal(res.values, want.values)
    with pytest.raises(WorkbenchError, match="method"):
        topk_correlation(q, r, method="faiss")


def test_distinct_subjects_are_the_best_match_of_each_of_the_k_best_subjects(phantom_store):
    images = phantom_store.to_array()
    train = phantom_store.where(split="train")
    subjects = train.manifest["subject"].to_numpy()
    res = topk_correlation(phantom_store, train, k=2, distinct="subject")
    ev, ei = reference_topk(images, images[train.rows], len(train))  # the full float64 ranking
    _, want = best_of_each_label(ev, ei, subjects, 2)
    for q in range(len(images)):
        np.testing.assert_array_equal(res.indices[q], want[q])
        assert subjects[res.indices[q, 0]] != subjects[res.indices[q, 1]]
    # labels as an array on plain arrays give the same answer
    res2 = topk_correlation(images, images[train.rows], k=2, distinct=subjects)
    np.testing.assert_array_equal(res2.indices, res.indices)
    with pytest.raises(WorkbenchError, match="different labels"):
        topk_correlation(images, images[train.rows], k=3, distinct=subjects)
    with pytest.raises(WorkbenchError, match="needs a SliceStore"):
        topk_correlation(images, images[train.rows], k=1, distinct="subject")


@pytest.mark.parametrize("method", ["brute", "pruned", "auto"])
def test_distinct_labels_with_constant_reference_images(method):
    """Constant images (no r) among a small reference: the widened top-k' search asked for more
    images than are non-constant searches those it has, not fail (a fuzzing case: 20 images, one
    blank, k' = 20); labels carried only by constant images are never matched, and asking for more
    labels than the non-constant images carry says so."""
    rng = np.random.default_rng(7)
    ref = rng.random((20, 1, 6, 6)).astype(np.float32)
    ref[[3, 11]] = 5.0  # blank slices
    labels = np.arange(20) % 6
    labels[3] = labels[11] = 9  # a label only blank slices carry
    q = np.concatenate([ref[[0, 7]] + 0.01 * rng.random((2, 1, 6, 6)).astype(np.float32), rng.random((3, 1, 6, 6))])
    res = topk_correlation(q, ref, k=3, distinct=labels, method=method)
    ev, ei = reference_topk(q, ref, 20)  # the full float64 ranking (constant images last, -inf)
    np.testing.assert_array_equal(res.indices, best_of_each_label(ev, ei, labels, 3)[1])
    assert res.stats["searched_k"] == 18  # the non-constant images, all of them
    with pytest.raises(WorkbenchError, match="non-constant images have only 6 different labels"):
        topk_correlation(q, ref, k=7, distinct=labels, method=method)


def recorded_brute_force(calls: list):
    """A brute-force search for topk_with_distinct that records (queries, k) of each call."""
    def search(queries, reference, k):
        calls.append((len(queries), k))
        return topk_correlation(queries, reference, k=k, method="brute")
    return search


def test_distinct_labels_search_again_only_the_queries_short_of_labels():
    """Labels whose images are near-copies of each other (slices of one volume): a query near one
    label sees only that label in its first top-k' list and is searched again, alone, with a wider
    k'; the others are not.  The answer is the full float64 ranking's, and the plain top-k comes
    from the same first search."""
    from workbench.search.subjects import topk_with_distinct

    rng = np.random.default_rng(3)
    base = rng.random((2, 1, 8, 8))  # two labels of 30 near-copies each, 60 labels of one image each
    ref = np.concatenate([b + 0.02 * rng.random((30, 1, 8, 8)) for b in base] + [rng.random((60, 1, 8, 8))])
    ref = ref.astype(np.float32)
    labels = np.concatenate([np.repeat([0, 1], 30), np.arange(2, 62)])
    q = np.concatenate([base + 0.01 * rng.random((2, 1, 8, 8)), rng.random((4, 1, 8, 8))]).astype(np.float32)
    calls = []
    search = recorded_brute_force(calls)
    plain, res = topk_with_distinct(search, q, ref, 4, 3, labels)
    ev, ei = reference_topk(q, ref, len(ref))
    want_v, want_i = best_of_each_label(ev, ei, labels, 3)
    np.testing.assert_array_equal(res.indices, want_i)
    np.testing.assert_allclose(res.values, want_v, atol=1e-12)
    np.testing.assert_array_equal(plain.indices, ei[:, :4])
    assert calls[0] == (len(q), 19) and all(n < len(q) and k > 19 for n, k in calls[1:]) and len(calls) > 1
    assert res.stats["widened_queries"] == sum(n for n, _ in calls[1:])


def volume_slices(rng, subjects: int, depth: int):
    """Slices of 8 x 8 volumes changing smoothly along z, and each one's subject: neighbouring
    slices of one subject are each other's best matches, as in brain MRI."""
    yy, xx = np.mgrid[0:8, 0:8] / 8
    vols = []
    for _ in range(subjects):
        f = rng.uniform(1, 3, size=3)
        vols += [np.sin(f[0] * xx * 3 + z / depth * f[1]) * np.cos(f[2] * yy * 3 - z / depth) for z in range(depth)]
    n = subjects * depth
    ref = (np.asarray(vols)[:, None] + 0.01 * rng.random((n, 1, 8, 8))).astype(np.float32)
    return ref, np.repeat(np.arange(subjects), depth)


def test_distinct_labels_of_many_images_each_are_first_searched_for_their_runs():
    """Slices of volumes: a query's best matches come in runs of neighbouring slices of one
    subject, so the first top-k' list asks for k x the median images per label / RUN_DIVISOR
    (not 2k or k + 16, which left 94 % of the queries short on brain phantoms); one image per
    label keeps the small list.  Either way the answer is the full float64 ranking's."""
    from workbench.search.subjects import RUN_DIVISOR, first_k, topk_with_distinct

    rng = np.random.default_rng(5)
    ref, labels = volume_slices(rng, 6, 40)
    q = (ref[::17] + 0.02 * rng.random((len(ref[::17]), 1, 8, 8))).astype(np.float32)
    assert first_k(labels, 3, 3) == 3 * 40 // RUN_DIVISOR == 30
    assert first_k(np.arange(240), 3, 3) == 19 and first_k(np.arange(240), 10, 10) == 26
    assert first_k(labels[:20], 3, 3) == 19  # one label of 20: no run beyond 2k, k + 16
    calls = []
    search = recorded_brute_force(calls)
    plain, res = topk_with_distinct(search, q, ref, 2, 3, labels)
    ev, ei = reference_topk(q, ref, len(ref))
    np.testing.assert_array_equal(res.indices, best_of_each_label(ev, ei, labels, 3)[1])
    np.testing.assert_array_equal(plain.indices, ei[:, :2])
    assert calls[0] == (len(q), 30)


def labelled_case():
    """Slices of 8 subjects' volumes and queries for a distinct search: near slices of one subject,
    between two subjects, an exact duplicate inside a subject (ties to the lower index), a constant
    query; with the full float64 ranking's best of each of the 3 best labels."""
    rng = np.random.default_rng(11)
    ref, labels = volume_slices(rng, 8, 30)
    ref[31] = ref[30]  # an exact duplicate inside subject 1: the lower index is its best
    q = np.concatenate([ref[::13] + 0.02 * rng.random((len(ref[::13]), 1, 8, 8)),  # near slices of one subject
                        (ref[[5, 40]] + ref[[65, 100]]) / 2,  # between two subjects
                        ref[30:31], np.full((1, 1, 8, 8), 0.5)]).astype(np.float32)  # a duplicate; a constant
    ev, ei = reference_topk(q, ref, len(ref))
    return q, ref, labels, ev, ei


def check_labelled(search, q, ref, labels, ev, ei):
    """``search`` (topk_with_distinct's, taking ``by_label``) with and without the labels: both give
    the float64 ranking's answer (the best of each of the 3 best labels and the plain top 2);
    returns both results."""
    from workbench.search.subjects import topk_with_distinct

    want_v, want_i = best_of_each_label(ev, ei, labels, 3)
    answers = []
    for labelled in (True, False):
        with pytest.warns(UserWarning, match="constant"):
            answers.append(topk_with_distinct(search, q, ref, 2, 3, labels, labelled=labelled))
    (plain, res), (_, unlabelled) = answers
    live = np.arange(len(q)) != len(q) - 1
    for row in np.flatnonzero(live):
        assert res.indices[row].tolist() == want_i[row], row
        np.testing.assert_allclose(res.values[row], want_v[row], atol=1e-12)
    np.testing.assert_array_equal(plain.indices[live], ei[live, :2])
    assert (res.indices[-1] == -1).all() and (plain.indices[-1] == -1).all()
    assert res.indices[-2, 0] == 30  # the duplicate's lower index
    np.testing.assert_array_equal(unlabelled.indices, res.indices)
    return res, unlabelled


@pytest.mark.parametrize("block_size", [None, 16])
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_brute_force_rescores_only_what_each_labels_best_needs(precision, block_size):
    """Streamed brute force told the labels (``by_label``): fewer pairs rescored than the top-k'
    lists hold, no query searched again, and the float64 ranking's answer; also where the first
    blocks hold fewer labels than asked for (16 slices of 30-slice subjects), whose level is the
    k'-th pair's until 3 labels are seen."""
    q, ref, labels, ev, ei = labelled_case()

    def search(queries, reference, k, by_label=None):
        return topk_correlation(queries, reference, k=k, method="brute", precision=precision, by_label=by_label,
                                block_size=block_size)

    res, unlabelled = check_labelled(search, q, ref, labels, ev, ei)
    assert unlabelled.rescored > res.rescored and unlabelled.stats["widened_queries"] > 0
    if block_size is None:  # one pass: the level is the 3rd best label's best, wherever it comes
        assert res.stats["widened_queries"] == 0


def test_the_labelled_level_never_falls_below_an_earlier_blocks():
    """Blocks of 16 rows: the first three hold only subjects A and B, fewer than k = 3 labels, so
    their level is the k' = 22nd best pair's, all A's, and B's only image like the query (row 40)
    is left out there.  Subjects D and E hold exact copies of it: after the later blocks the labels'
    level is that image's r, so a level that fell back to it would find D and E complete and answer
    them for B (ties go to the lower index).  Kept at the earlier level, the query is searched again
    and the answer is the float64 ranking's: A, B, D."""
    from workbench.search.subjects import first_k, topk_with_distinct

    rng = np.random.default_rng(7)
    vols, _ = volume_slices(rng, 7, 40)
    a = vols[:40]
    x = (0.5 * a[39] + 0.5 * a[31]).astype(np.float32)
    c, d, e, f = (rng.random((30, 1, 8, 8)).astype(np.float32) for _ in range(4))
    d[5], e[7] = x, x
    ref = np.concatenate([a, x[None], vols[41:48], c, d, e, f]).astype(np.float32)
    labels = np.repeat(np.arange(6), [40, 8, 30, 30, 30, 30])
    q = (a[20:21] + 0.01 * rng.random((1, 1, 8, 8))).astype(np.float32)
    ev, ei = reference_topk(q, ref, len(ref))
    assert first_k(labels, 3, 3) == 22 and np.sort(ev[0, ei[0] < 48])[::-1][21] > ev[0, list(ei[0]).index(40)]

    def search(queries, reference, k, by_label=None):
        return topk_correlation(queries, reference, k=k, method="brute", precision="float32", by_label=by_label,
                                block_size=16)

    _, res = topk_with_distinct(search, q, ref, 1, 3, labels, labelled=True)
    assert res.indices.tolist() == best_of_each_label(ev, ei, labels, 3)[1] == [[20, 40, 48 + 30 + 5]]


@pytest.mark.parametrize("method", ["pruned", "brute", "auto", "auto, then brute"])
@pytest.mark.parametrize("rows", ["float32", "bf16", "raw rows on disk", "row copy", "int8 row copy"])
def test_every_index_search_rescores_only_what_each_labels_best_needs(method, rows, tmp_path, monkeypatch):
    """A CorrelationIndex's searches told the labels (pruned tiles with float32 seeds, brute force,
    auto, and auto going on by brute force from the float32 seeds' floor; rows in memory in float32
    or bf16, on disk raw or as a float16 or int8 row copy): the float64 ranking's answer, with fewer pairs
    rescored than without the labels.  A small basis leaves tiles beyond the seeds."""
    from workbench.search import CorrelationIndex, pruned

    if method == "auto, then brute":  # every plan judged too large after its seeds
        monkeypatch.setattr(pruned, "AUTO_MAX_FRACTION", 0.0)

    q, ref, labels, ev, ei = labelled_case()
    if rows in ("float32", "bf16"):
        index = CorrelationIndex(ref, precision=rows, basis_dim=4, keep_vectors=True)
    else:
        with StoreWriter(tmp_path / "s", channels=["a"], height=8, width=8) as w:
            w.append(ref, [{"subject": f"s{v}", "split": "train"} for v in labels])
        index = CorrelationIndex(SliceStore.open(tmp_path / "s"), basis_dim=4, keep_vectors=False,
                                 row_copy=tmp_path / "rows.npy" if "copy" in rows else None,
                                 row_copy_format="int8" if rows.startswith("int8") else "float16")
        assert index.from_disk
    seen = []

    def search(queries, reference, k, by_label=None):
        res = index.topk(queries, k, method=method.split(",")[0], by_label=by_label)
        seen.append((res.stats["method"], res.by_label is not None))
        return res

    res, unlabelled = check_labelled(search, q, ref, labels, ev, ei)
    if method in ("pruned", "brute"):
        assert {m for m, _ in seen} == {method}
    elif method == "auto, then brute":
        assert {m for m, _ in seen} == {"brute"} and "brute: the tiles would evaluate" in res.stats["auto"]
    assert any(labelled for _, labelled in seen) and not all(labelled for _, labelled in seen)
    if method != "auto":  # auto's choice is timed: the two searches may take different methods
        assert unlabelled.rescored > res.rescored


@pytest.mark.parametrize("dim", [300, 4096 + 777])
def test_bf16_per_pair_bound_holds_for_every_pair_with_any_offset(dim):
    """The screened value lies within its stated bound of the float64 product, for all pairs."""
    from workbench.search.bounds import split_norms
    from workbench.search.kernel import screen
    from workbench.search.layout import offset_columns, pad_slices, slice_bounds

    rng = np.random.default_rng(dim)
    base = rng.standard_normal((40, dim))
    x = np.concatenate([base[:20], base[:20] + 0.05 * rng.standard_normal((20, dim))])  # near-copies too
    y = np.concatenate([base, -base[:5]])
    x64 = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    y64 = torch.from_numpy(y / np.linalg.norm(y, axis=1, keepdims=True))
    exact = (x64 @ y64.T).numpy()
    xl, yl = x64.float().bfloat16(), y64.float().bfloat16()
    qn, rn = split_norms(x64, xl), split_norms(y64, yl)
    q_pad, r_pad = pad_slices(xl, 0.0), pad_slices(yl)
    share = torch.stack([(x64[:, a:b] ** 2).sum(1) for a, b in slice_bounds(dim)], 1).float()
    for t in (0.0, 0.5, 0.93, -0.7):
        tc = (t * share).bfloat16()
        q_pad[:, offset_columns(dim)] = -tc
        s, err = screen(q_pad, r_pad, qn, rn, offsets=(tc.double().sum(1), tc.float().abs().sum(1)))
        gap = np.abs(s.double().numpy() - exact)
        assert (gap <= err.double().numpy()).all(), (t, float((gap - err.numpy()).max()))
        assert float(err.max()) < 0.012  # never looser than the worst case over all unit vectors


def test_too_few_non_constant_reference_images_is_a_typed_error():
    from workbench.errors import TooFewReferenceImages

    rng = np.random.default_rng(3)
    ref = rng.random((6, 1, 8, 8)).astype(np.float32)
    ref[:4] = 0.5  # four constant images: two can be matched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TooFewReferenceImages, match="k=3 but only 2 reference images are non-constant") as err:
            topk_correlation(rng.random((2, 1, 8, 8)), ref, k=3, device="cpu")
    assert isinstance(err.value, WorkbenchError) and (err.value.k, err.value.available) == (3, 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_float64_normalisation_gives_a_row_the_same_bits_in_any_block(threads, monkeypatch):
    """Queries and rescores rely on a row's float64 unit vector having the same bits whatever rows
    share its block, the block size and the threads: normalised alone, in small blocks or whole,
    the bits agree; a NaN in any block is refused."""
    from workbench.search import normalise as normalise_module

    rng = np.random.default_rng(4)
    flat = (rng.standard_normal((37, 3000)) * 3 + 5).astype(np.float32)
    flat[5] = 2.0  # constant
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole, const = normalise_module.normalise(flat, torch.float64)
        monkeypatch.setattr(normalise_module, "NORMALISE_BLOCK_BYTES", 3 * 3000 * 8)
        blocked, const_b = normalise_module.normalise(flat, torch.float64)
        alone = np.concatenate([normalise_module.normalise(flat[i:i + 1], torch.float64)[0].numpy() for i in range(37)])
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(whole.numpy(), blocked.numpy()) and np.array_equal(whole.numpy(), alone)
    assert const.tolist() == const_b.tolist() == [i == 5 for i in range(37)]
    # the rescore's row statistics too, from rows laid out by columns (as a mask selects them)
    from workbench.search.kernel import row_stats

    stats = row_stats(np.asfortranarray(flat))
    assert np.array_equal(stats, np.concatenate([row_stats(flat[i:i + 1]) for i in range(37)]))
    assert np.array_equal(stats, row_stats(flat))
    assert np.allclose(np.linalg.norm(whole.numpy()[~const], axis=1), 1.0) and not whole.numpy()[5].any()
    flat[30, 7] = np.nan
    with pytest.raises(WorkbenchError, match="non-finite"):
        normalise_module.normalise(flat, torch.float64)
