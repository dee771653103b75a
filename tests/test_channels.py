"""Stores are paired by channel name, never by position.

Found: searching a store prepared with ``--channels flair,t1`` against one prepared with
``t1,flair`` exited 0 and correlated flair with t1 (an exact copy scored 0.925, not 1.0), so
copies were under-reported with every method.  Here the synthetic store holds exact copies of
training slices with its channels in the reverse order: every method must find them at r = 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from workbench.cli import main
from workbench.data.store import SliceStore, StoreWriter, align_channels
from workbench.errors import StoreError, WorkbenchError
from workbench.search import CorrelationIndex, topk_correlation

COPIES = [0, 5, 11, 17, 23]


@pytest.fixture(scope="module")
def reordered(phantom_store, tmp_path_factory):
    """Exact copies of training slices, written with the channels in reverse order."""
    train = phantom_store.where(split="train")
    images = train.read(COPIES)[:, ::-1]
    path = tmp_path_factory.mktemp("reordered") / "synthetic"
    with StoreWriter(path, channels=phantom_store.channels[::-1], height=32, width=32, kind="synthetic") as w:
        w.append(np.ascontiguousarray(images), [{"split": "synthetic", "model": "copy", "seed": i} for i in COPIES])
    return SliceStore.open(path), train


def test_a_view_reads_the_named_channels_in_their_order(phantom_store):
    names = ["flair", "t1"]
    view = phantom_store.with_channels(names)
    assert view.channels == names and view.image_shape == (2, 32, 32) and view.shape == (len(phantom_store), 2, 32, 32)
    full = phantom_store.read([4, 2])
    np.testing.assert_array_equal(view.read([4, 2]), full[:, [3, 0]])
    np.testing.assert_array_equal(view.where(split="test")[0], phantom_store.where(split="test")[0][[3, 0]])
    assert view.take([1]).channels == names and view.all_rows().channels == names
    np.testing.assert_array_equal(view.with_channels(["t1"]).read([4]), full[:1, [0]])  # a view of a view
    with pytest.raises(StoreError, match=r"has no channel\(s\) \['pd'\]; its channels are \['flair', 't1'\]"):
        view.with_channels(["pd"])


def test_a_different_order_is_reordered_and_other_channels_refused(phantom_store, reordered, tmp_path):
    synthetic, train = reordered
    aligned = align_channels(synthetic, train)
    assert aligned.channels == train.channels
    np.testing.assert_array_equal(aligned.read([0]), train.read([COPIES[0]]))
    four = tmp_path / "four"
    with StoreWriter(four, channels=["t1", "t2", "flair", "pd", "seg"], height=32, width=32, kind="synthetic") as w:
        w.append(np.zeros((1, 5, 32, 32), np.float32), [{"split": "synthetic"}])
    with pytest.raises(StoreError, match=r"four: queries have channels \['t1', 't2', 'flair', 'pd', 'seg'\] but .* "
                                         r"\(missing \['t1ce'\]; not in the reference: \['pd'\]\)"):
        topk_correlation(SliceStore.open(four), train)


@pytest.mark.parametrize("method", ["brute", "pruned"])
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_every_search_method_finds_the_exact_copies(reordered, method, precision):
    synthetic, train = reordered
    res = topk_correlation(synthetic, train, k=1, method=method, precision=precision)
    np.testing.assert_array_equal(res.indices[:, 0], COPIES)
    np.testing.assert_allclose(res.values[:, 0], 1.0, atol=1e-6)


def test_index_distinct_channels_subset_and_the_command_line(reordered, phantom_store, tmp_path):
    synthetic, train = reordered
    index = CorrelationIndex(train, precision="float32")
    np.testing.assert_array_equal(index.topk(synthetic, 1).indices[:, 0], COPIES)
    index.save(tmp_path / "index")
    np.testing.assert_array_equal(CorrelationIndex.open(tmp_path / "index").topk(synthetic, 1).indices[:, 0], COPIES)
    res = topk_correlation(synthetic, train, k=2, distinct="subject")
    np.testing.assert_array_equal(res.indices[:, 0], COPIES)
    res = topk_correlation(synthetic, train, k=1, channels=["flair"])  # by name in both stores
    np.testing.assert_allclose(res.values[:, 0], 1.0, atol=1e-6)
    out = tmp_path / "m.csv"
    assert main(["search", "--queries", str(synthetic.path), "--reference", str(phantom_store.path),
                 "--split", "train", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    np.testing.assert_allclose(table["r"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(table["match_row"], train.rows[COPIES])


def test_an_index_of_a_channel_view_reopens_with_that_view(phantom_store, tmp_path):
    train = phantom_store.where(split="train").with_channels(["flair", "t2"])
    CorrelationIndex(train, precision="float32").save(tmp_path / "index")
    again = CorrelationIndex.open(tmp_path / "index")
    assert again.reference.channels == ["flair", "t2"]
    queries = phantom_store.where(split="train").with_channels(["t2", "flair"]).read([3, 4])[:, ::-1]
    np.testing.assert_array_equal(again.topk(np.ascontiguousarray(queries), 1).indices[:, 0], [3, 4])


def test_analysis_and_the_match_browser_pair_channels_by_name(reordered, phantom_store):
    from workbench.memorization import match_table
    from workbench.memorization.analysis import run_analysis
    from workbench.memorization.run_results import run_matches

    synthetic, train = reordered
    test = phantom_store.where(split="test")
    analysis = run_analysis(synthetic, train, test, per_channel=True, bootstrap=20, data_copying_cells=None,
                            progress=False)
    np.testing.assert_allclose(analysis.flags["pixel_max"], 1.0, atol=1e-6)
    assert analysis.flags["copy"].all()
    table = match_table(synthetic, train, k=1)
    data = run_matches(table, synthetic, train)
    assert data.synthetic.channels == train.channels
    np.testing.assert_array_equal(data.synthetic[0], data.train.read_rows([train.rows[COPIES[0]]])[0])


def test_the_copy_detector_embeds_by_channel_name(reordered, phantom_detector):
    from workbench.memorization.detector import embed, load_detector

    synthetic, train = reordered
    encoder = load_detector(phantom_detector)[0]
    np.testing.assert_allclose(embed(encoder, synthetic), embed(encoder, train.take(COPIES)), atol=1e-5)


def test_the_reader_study_shows_the_same_channel_of_both_stores(reordered, phantom_store, tmp_path):
    from workbench.widgets.reader_study import ReaderStudy

    synthetic, _ = reordered
    study = ReaderStudy(tmp_path, "dr-a", real=phantom_store.where(split="test"), synthetic=synthetic, n_real=2,
                        n_synthetic=2, channel="flair")
    assert study.synthetic.channels == phantom_store.channels
    with pytest.raises(WorkbenchError):
        align_channels(synthetic.with_channels(["t1"]), phantom_store)
