"""The copy analysis against planted copies, and the release gate end to end.

A synthetic store is built from held-out phantom slices (novel images) plus copies of training
slices that are exact, noisy, intensity-scaled, shifted by a few pixels, or slightly rotated.
Pixel r must flag the exact, noisy and scaled copies; the learned detector must also flag the
shifted and rotated ones; novel slices must not be flagged beyond the calibrated rate.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.memorization.analysis import EMBEDDING, PIXEL, run_analysis
from workbench.runs.release import release_gate
from workbench.search.subjects import first_k

KINDS = ("exact", "noisy", "scaled", "shifted", "rotated")
PER_KIND = 8


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    x = torch.from_numpy(images)
    a = np.deg2rad(degrees)
    theta = torch.tensor([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()


@pytest.fixture(scope="module")
def planted(phantom_store, tmp_path_factory):
    train = phantom_store.where(split="train")
    test_all = phantom_store.where(split="test")
    calib = test_all.take(np.arange(0, len(test_all), 2))  # held-out images that calibrate
    novel = test_all.take(np.arange(1, len(test_all), 2))  # held-out images posing as synthetic
    rng = np.random.default_rng(0)
    sources = rng.choice(len(train), size=len(KINDS) * PER_KIND, replace=False)
    src = train.read(np.sort(sources))
    src = src[np.argsort(np.argsort(sources))]  # in the order of `sources`
    blocks, rows = [], []
    for i, kind in enumerate(KINDS):
        x = src[i * PER_KIND:(i + 1) * PER_KIND].copy()
        if kind == "noisy":
            x = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1)
        elif kind == "scaled":
            x = x * 0.85
        elif kind == "shifted":
            x = np.roll(x, shift=(1, 2), axis=(-2, -1))  # a few pixels at 32 px (2-4 at 64 px)
        elif kind == "rotated":
            x = _rotate(x, 6.0)
        blocks.append(x.astype(np.float32))
        rows += [{"split": "synthetic", "model": kind, "seed": int(s)} for s in sources[i * PER_KIND:(i + 1) * PER_KIND]]
    blocks.append(novel.to_array())
    rows += [{"split": "synthetic", "model": "novel"} for _ in range(len(novel))]
    path = tmp_path_factory.mktemp("planted") / "synthetic"
    with StoreWriter(path, channels=phantom_store.channels, height=32, width=32, kind="synthetic",
                     meta={"model": "planted", "run": "test"}) as w:
        w.append(np.concatenate(blocks), rows)
    return SliceStore.open(path), train, calib, sources


@pytest.fixture(scope="module")
def detector(phantom_detector):
    from workbench.memorization.detector import load_detector

    return load_detector(phantom_detector)[0]


@pytest.fixture(scope="module")
def analysis(planted, detector):
    synthetic, train, calib, _ = planted
    # the test-quantile rule: its false-positive rate on novel images is what it is calibrated to
    return run_analysis(synthetic, train, calib, detector=detector, k=3, bootstrap=200, progress=False,
                         data_copying_cells=4, rule="test_quantile", quantile=0.95)


def _flag_rate(analysis, synthetic, kind, column):
    kinds = synthetic.manifest["model"].to_numpy()
    return float(analysis.flags.loc[kinds == kind, column].mean())


def test_pixel_r_flags_exact_noisy_and_scaled_copies(planted, analysis):
    synthetic = planted[0]
    for kind in ("exact", "noisy", "scaled"):
        assert _flag_rate(analysis, synthetic, kind, "pixel_copy") == 1.0, kind
    # and finds their sources
    kinds = synthetic.manifest["model"].to_numpy()
    exact = analysis.flags[kinds == "exact"]
    assert (exact["pixel_max"] > 0.999).all()


def test_detector_also_flags_shifted_and_rotated_copies(planted, analysis):
    synthetic = planted[0]
    for kind in ("shifted", "rotated"):
        assert _flag_rate(analysis, synthetic, kind, "embedding_copy") >= 0.75, kind
        assert _flag_rate(analysis, synthetic, kind, "copy") >= 0.75, kind
    # a shift of a few pixels is what pixel r misses, and why the detector exists
    assert _flag_rate(analysis, synthetic, "shifted", "pixel_copy") <= 0.25


def test_novel_images_are_not_flagged_beyond_the_calibrated_rate(planted, analysis):
    synthetic = planted[0]
    kinds = synthetic.manifest["model"].to_numpy()
    novel = analysis.flags[kinds == "novel"]
    # each similarity's threshold is the 95th percentile of held-out images: about 5 % of novel images
    # exceed it; allow binomial noise for ~50 images (sd ~3 %)
    for key in ("pixel", "embedding"):
        assert novel[f"{key}_copy"].mean() <= 0.05 + 0.10, (key, novel[f"{key}_copy"].mean())
    assert novel["copy"].mean() <= 0.10 + 0.12
    summary = analysis.summary()
    for name in (PIXEL, EMBEDDING):
        for rule in ("dar95", "test_quantile"):
            block = summary[name][rule]
            assert 0 < block["synthetic_copy_fraction"]["value"] < 1
            assert block["threshold"]["rule"] == rule and block["threshold"]["similarity"] == name
    assert json.loads(json.dumps(summary)) == summary  # plain JSON values: nothing numpy, nothing lost


def test_patient_view_lists_the_copied_subjects(planted, analysis):
    synthetic, train, _, sources = planted
    copied_subjects = set(train.manifest["subject"].iloc[sources[:PER_KIND]])  # the exact copies
    flagged = set(analysis.patients.index[analysis.patients["copies"] > 0])
    assert copied_subjects <= flagged


def test_bad_input_is_refused(planted, phantom_store, tmp_path):
    synthetic, train, calib, _ = planted
    with pytest.raises(WorkbenchError, match="only 5 held-out images"):
        run_analysis(synthetic, train, calib.take(np.arange(5)), progress=False)
    one = tmp_path / "one"
    with StoreWriter(one, channels=["t1"], height=32, width=32) as w:
        w.append(np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32), [{"split": "synthetic"}] * 3)
    with pytest.raises(WorkbenchError, match="channels"):
        run_analysis(SliceStore.open(one), train, calib, progress=False)


def test_release_gate_writes_only_kept_images_and_a_report(planted, detector, phantom_store, tmp_path):
    synthetic, train, calib, _ = planted
    out = tmp_path / "release"
    report = release_gate(synthetic, phantom_store, out, train=train, test=calib, detector=detector, bootstrap=100,
                          progress=False)
    kept = (out / "kept.csv").read_text().splitlines()
    assert report["kept"] + report["removed"] == len(synthetic)
    assert len(kept) - 1 == report["kept"]
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == report["kept"] * len(synthetic.channels)
    # no exact copy was released
    exact_ids = {f"synthetic_{i:05d}" for i in range(PER_KIND)}
    assert not exact_ids & {p.name.rsplit("_", 1)[0] for p in pngs}
    saved = json.loads((out / "report.json").read_text())
    assert saved["shows_training_images"] is False and saved["model"] == "planted"
    assert "pixel r / dar95" in saved["thresholds"] and saved["date"]
    html = (out / "report.html").read_text()
    assert "data:image/png" not in html and "No training image is shown" in html
    with pytest.raises(FileExistsError):
        release_gate(synthetic, phantom_store, out, train=train, test=calib, progress=False)
    shown = release_gate(synthetic, phantom_store, tmp_path / "shown", train=train, test=calib, fmt="nifti",
                         show_training=True, bootstrap=50, progress=False)
    assert shown["shows_training_images"] and "data:image/png" in (tmp_path / "shown" / "report.html").read_text()
    assert len(list((tmp_path / "shown" / "images").glob("*.nii.gz"))) == shown["kept"]


def test_fixed_thresholds_and_the_release_command(planted, phantom_store, tmp_path, capsys):
    from workbench.cli import main

    synthetic, train, calib, _ = planted
    with pytest.raises(WorkbenchError, match=r"threshold must be a number in \[-1, 1\]"):
        run_analysis(synthetic, train, calib, pixel_threshold=1.5, progress=False)
    with pytest.raises(WorkbenchError, match="needs a copy detector"):
        run_analysis(synthetic, train, calib, embedding_threshold=0.9, progress=False)
    fixed = run_analysis(synthetic, train, calib, pixel_threshold=0.999, per_channel=False, data_copying_cells=None,
                          bootstrap=50, progress=False)
    assert fixed.flag_rules == {PIXEL: "fixed"} and fixed.threshold(PIXEL).value == 0.999
    assert fixed.flags["copy"].sum() == (fixed.flags["pixel_max"] > 0.999).sum() >= PER_KIND  # the exact copies
    assert {"dar95", "test_quantile", "fixed"} == set(fixed.rules(PIXEL))  # calibrated rules still reported
    # the command line: against the whole phantom store's train / test splits
    out = tmp_path / "cli-release"
    code = main(["release", "--synthetic", str(synthetic.path), "--reference", str(phantom_store.path), "--out", str(out),
                 "--threshold", "0.999", "--format", "nifti"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["flag_rules"] == {PIXEL: "fixed"} and report["removed"] >= PER_KIND
    assert len(list((out / "images").glob("*.nii.gz"))) == report["kept"]
    assert main(["release", "--synthetic", str(synthetic.path), "--reference", str(phantom_store.path),
                 "--out", str(tmp_path / "bad"), "--threshold", "2"]) == 2
    assert "threshold must be a number in [-1, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_saved_analysis_reads_back_the_same_and_overlays_across_runs(analysis, tmp_path):
    from workbench.data import layout
    from workbench.memorization.analysis import load_analysis
    from workbench.widgets import ecdf_figure, overlaid_histograms

    written = analysis.save(tmp_path / "run-a")
    assert {p.name for p in written} == set(layout.ANALYSIS_FILES)
    assert written[-1].name == layout.MEMORIZATION  # last: its presence means the rest is complete
    loaded = load_analysis(tmp_path / "run-a")
    assert loaded.summary() == analysis.summary()  # thresholds and rates recomputed from the saved similarities
    pd.testing.assert_frame_equal(loaded.flags, analysis.flags)
    pd.testing.assert_frame_equal(loaded.patients.reset_index(), analysis.patients.reset_index(), check_dtype=False)
    series = {"run-a": loaded.flags["pixel_max"], "run-b": loaded.flags["pixel_max"] * 0.9}
    fig = ecdf_figure(series, thresholds={"τ": analysis.threshold(PIXEL).value})
    assert [t.name.split(" ")[0] for t in fig.data] == ["run-a", "run-b"]
    assert fig.data[0].y[-1] == 1.0  # an ECDF ends at 1
    assert len(overlaid_histograms(analysis.series(PIXEL)).data) == 3
    saved = json.loads((tmp_path / "run-a" / layout.COPY_ANALYSIS).read_text())
    assert saved["pixel r"]["flag_rule"] == "test_quantile"
    with pytest.raises(WorkbenchError, match="no complete analysis here.*workbench analyze"):
        load_analysis(tmp_path / "nowhere")


def test_the_analysis_builds_one_index_per_reference_and_searches_the_top_k_once(planted, monkeypatch):
    """Issue 16 ("the 04 analysis uses the fastest exact method"): each reference is searched through
    one ReferenceSearch, so where an index pays, one index of it serves all its searches (each
    search built its own, or went brute beside it); the synthetic images' top k and their subjects'
    best matches come from one search, whose queries short of subjects alone are searched again.
    The figures equal brute force's."""
    from workbench.search import dispatch, index as index_module

    synthetic, train, calib, _ = planted
    options = dict(k=3, bootstrap=50, progress=False, data_copying_cells=None, rule="dar95")
    searched = []
    search = dispatch.topk_correlation

    def spy(queries, reference, k=1, **kw):
        searched.append(("brute", len(queries), len(reference), k))
        return search(queries, reference, k=k, **kw)

    monkeypatch.setattr(dispatch, "topk_correlation", spy)
    brute = run_analysis(synthetic, train, calib, **options)
    # synthetic -> train: the top k and the subjects' best matches from one search (k' from the slices per
    # subject, subjects.first_k), then the queries whose list held fewer than 3 subjects alone, with k' four
    # times larger; per channel k = 1
    k_subjects = min(3, train.manifest["subject"].nunique())
    first = first_k(train.manifest["subject"].to_numpy(), k_subjects, 3)
    assert first > max(2 * k_subjects, k_subjects + 16)  # slices of volumes: runs of one subject
    assert [s for s in searched if s[2] == len(train) and s[3] > 1][0] == ("brute", len(synthetic), len(train), first)
    mine = [s for s in searched if s[1:3] == (len(synthetic), len(train))]
    assert not [s for s in mine if 1 < s[3] < first]  # no search for the top k alone
    again = [s for s in searched if s[2] == len(train) and s[3] > first]
    assert all(s[1] < len(synthetic) for s in again)  # only the queries short of subjects
    searched.clear()

    built = []
    init = index_module.CorrelationIndex.__init__

    def counting(self, reference, **kw):
        built.append((len(reference), tuple(kw.get("channels") or ())))
        init(self, reference, **kw)

    monkeypatch.setattr(index_module.CorrelationIndex, "__init__", counting)
    # an index pays for the smallest of the searches (the held-out images')
    monkeypatch.setattr(index_module, "AUTO_MIN_QUERIES", len(calib))
    monkeypatch.setattr(index_module, "AUTO_MIN_REFERENCE", 1)
    indexed = run_analysis(synthetic, train, calib, **options)
    assert not searched  # every search went through an index
    assert sorted(built) == sorted([(len(train), ()), (len(calib), ()), (len(synthetic), ())]
                                   + [(len(train), (c,)) for c in train.channels])
    for name in ("synthetic_values", "synthetic_indices", "test_to_train", "train_to_test", "synthetic_to_test",
                 "train_to_synthetic"):
        np.testing.assert_allclose(getattr(indexed.similarities[PIXEL], name), getattr(brute.similarities[PIXEL], name),
                                   atol=1e-12, err_msg=name)
    assert indexed.subject_matches.equals(brute.subject_matches)
    np.testing.assert_allclose(indexed.per_channel["max"].to_numpy(), brute.per_channel["max"].to_numpy(), atol=1e-12)
    assert indexed.flags["copy"].equals(brute.flags["copy"])


def test_dcr_nndr_take_the_analysis_own_second_best_matches(planted, analysis, phantom_detector, monkeypatch, tmp_path):
    """DCR / NNDR need each held-out image's best and second-best training match: the analysis keeps
    the second from its own search (k = 2), saved and loaded with it, so ``distances`` does not
    search the training images again; for another held-out set, or an analysis saved before it
    kept them, it searches as before, and the figures agree."""
    import workbench.search
    from workbench.evaluate.distances import distances
    from workbench.memorization.analysis import load_analysis

    synthetic, train, calib, _ = planted
    fresh = workbench.search.topk_correlation(calib, train, k=2, method="brute")
    pixel = analysis.similarities[PIXEL]
    np.testing.assert_allclose(pixel.test_to_train, fresh.values[:, 0], atol=1e-12)
    np.testing.assert_allclose(pixel.test_to_train_second, fresh.values[:, 1], atol=1e-12)
    assert (analysis.similarities[EMBEDDING].test_to_train_second <= analysis.similarities[EMBEDDING].test_to_train).all()
    searched = []
    search = workbench.search.topk_correlation
    monkeypatch.setattr(workbench.search, "topk_correlation", lambda *a, **kw: searched.append(a) or search(*a, **kw))
    # (the embeddings' searches pass arrays; the pixel searches the stores)
    analysis.save(tmp_path / "a")
    loaded = load_analysis(tmp_path / "a")
    np.testing.assert_array_equal(loaded.similarities[PIXEL].test_to_train_second, pixel.test_to_train_second)
    kept = distances(loaded, train, calib).per_image
    assert not searched  # no second pass over the training images, pixels or embeddings
    # an analysis saved before the second best was kept: searched again, the same figures
    with np.load(tmp_path / "a" / "similarities.npz") as arrays:
        old = {k: arrays[k] for k in arrays.files if not k.endswith("test_to_train_second")}
    np.savez(tmp_path / "a" / "similarities.npz", **old)
    before = load_analysis(tmp_path / "a")
    assert before.similarities[PIXEL].test_to_train_second is None
    again = distances(before, train, calib, detector=phantom_detector).per_image
    assert [len(a[0]) for a in searched if isinstance(a[0], SliceStore)] == [len(calib)]
    pd.testing.assert_frame_equal(kept[kept["similarity"] == "pixel r"].reset_index(drop=True),
                                  again[again["similarity"] == "pixel r"].reset_index(drop=True), atol=1e-12)
    # another held-out set than the analysis's: searched, never the analysis's values
    other = calib.take(np.arange(0, len(calib), 2))
    distances(loaded, train, other, detector=phantom_detector)
    assert [len(a[0]) for a in searched if isinstance(a[0], SliceStore)] == [len(calib), len(other)]


def test_one_non_constant_training_image_is_refused_by_the_calibration_not_the_second_best(tmp_path):
    """The held-out images' search keeps the second best for DCR / NNDR; a training set with a single
    non-constant image has none, and the user is told what is wrong with the data (too few training
    images to calibrate on), not that a search asked for k = 2."""
    rng = np.random.default_rng(0)

    def store(name, images, split):
        with StoreWriter(tmp_path / name, channels=["t1"], height=8, width=8) as w:
            w.append(images.astype(np.float32), [{"subject": f"{name}{i}", "split": split} for i in range(len(images))])
        return SliceStore.open(tmp_path / name)

    train = store("train", np.concatenate([rng.random((1, 1, 8, 8)), np.full((2, 1, 8, 8), 3.0)]), "train")
    test = store("test", rng.random((20, 1, 8, 8)), "test")
    synthetic = store("synthetic", rng.random((4, 1, 8, 8)), "synthetic")
    with pytest.warns(UserWarning, match="constant"), pytest.raises(WorkbenchError, match="only 1 training images"):
        run_analysis(synthetic, train, test, k=1, bootstrap=0, per_channel=False, data_copying_cells=None,
                     progress=False)
