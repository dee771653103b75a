"""Privacy against utility: the utility classifier, DCR / NNDR, the report, the frontier, and their controls.

The fidelity metrics and membership inference have their own files (test_fidelity.py,
test_membership.py); here they run inside the report of a run whose "samples" are its training
images themselves, where every figure's answer is known: every image a copy, DCR zero,
authenticity near zero.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import workbench
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.evaluate.distances import dcr_nndr
from workbench.evaluate.roc import auroc, paired_difference, roc_figure, tpr_at_fpr
from workbench.evaluate.utility import train_classifier, classifier_scores, utility


def _subjects(view: SliceStore) -> list[str]:
    return sorted(view.manifest["subject"].unique())


def _by_subject(view: SliceStore, subjects) -> SliceStore:
    return view.take(np.flatnonzero(view.manifest["subject"].isin(list(subjects)).to_numpy()))


def _write_copy(path, view: SliceStore, *, kind="synthetic", labels=True) -> SliceStore:
    """A store holding ``view``'s images (with or without their labels)."""
    images = view.read(np.arange(len(view)))
    m = view.manifest.reset_index(drop=True)
    rows = [{"subject": None if kind == "synthetic" else s, "source": "copy", "z": int(z), "split": kind,
             "label": (int(lab) if labels else None), "sample_index": i}
            for i, (s, z, lab) in enumerate(zip(m["subject"], m["z"], m["label"]))]
    with StoreWriter(path, channels=view.channels, height=view.image_shape[1], width=view.image_shape[2],
                     kind=kind, label_channels=view.label_channels) as w:
        w.append(images, rows)
    return SliceStore.open(path)


# -- the ROC figures --------------------------------------------------------------------------------------
def test_auroc_equals_scikit_learn_and_the_bootstrap_brackets_it():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(40), np.zeros(60)].astype(bool)
    scores = np.round(labels * 0.8 + rng.normal(0, 1, 100), 1)  # rounded: ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fig = roc_figure(scores, labels, n_boot=300, seed=0)
    assert fig.low < fig.value < fig.high
    assert tpr_at_fpr(np.r_[np.ones(10) * 2, np.zeros(100)], np.r_[np.ones(10), np.zeros(100)].astype(bool)) == 1.0
    same = paired_difference(scores, scores, labels, n_boot=50)
    assert same.value == same.low == same.high == 0.0
    with pytest.raises(WorkbenchError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


# -- DCR / NNDR ---------------------------------------------------------------------------------------------
def test_dcr_and_nndr_follow_their_definition():
    s = np.array([[1.0, 0.5], [0.6, 0.6], [0.9, 0.0], [1.0, 1.0]])
    dcr, nndr = dcr_nndr(s)
    np.testing.assert_allclose(dcr, [0.0, 0.4, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(nndr, [0.0, 1.0, np.sqrt(0.1), 1.0], atol=1e-12)
    with pytest.raises(WorkbenchError, match="two highest"):
        dcr_nndr(np.ones((3, 1)))


# -- utility ------------------------------------------------------------------------------------------------
def test_utility_of_held_out_patients_as_samples_is_near_real(phantom_store, tmp_path):
    """Control: "samples" that are real images of other patients carry the task as well as the real ones."""
    train = phantom_store.where(split="train")
    a, b = _subjects(train)[:2]
    result = utility(None, real=_by_subject(train, [a]), synthetic=_by_subject(train, [b]),
                     test=phantom_store.where(split="test"), n=60, steps=150, folder=tmp_path / "u",
                     progress=False, n_boot=300)
    table = result.table().set_index("trained on")
    assert table.loc["real", "AUROC"] > 0.7, table  # the task has signal
    # the other patient's images carry the task (above chance) about as well as the real ones.  Not
    # "the gap's interval holds 0": the interval is a bootstrap over the test images only, and one
    # 150-step classifier per arm varies more than that between seeds and precisions (measured on
    # this fixture: gap -0.16 to +0.24 over 3 seeds x bf16 on / off, with intervals excluding 0)
    assert result.arms["synthetic"]["auroc"].low > 0.5, table
    gap = result.gaps["synthetic"]
    assert abs(gap.value) < 0.25, (gap, table)
    assert set(table.index) == {"real", "synthetic", "real+synthetic"}
    assert (tmp_path / "u" / "real" / "classifier.json").is_file()
    assert json.loads((tmp_path / "u" / "utility.json").read_text())["arms"]["synthetic"]["n_train"] == 60
    # resumable per arm: the same call loads the trained classifiers instead of training again
    again = utility(None, real=_by_subject(train, [a]), synthetic=_by_subject(train, [b]),
                    test=phantom_store.where(split="test"), n=60, steps=150, folder=tmp_path / "u",
                    progress=False, n_boot=300)
    assert again.arms["synthetic"]["auroc"].value == result.arms["synthetic"]["auroc"].value
    # the classifier's features serve as a fidelity extractor, label channels dropped as in training
    features = result.extractor("real")(phantom_store.read(np.arange(5)))
    assert features.shape == (5, 64) and np.isfinite(features).all()


def test_utility_on_shuffled_labels_is_near_chance(phantom_store):
    """Control: a task with no signal (labels shuffled in training and in testing, so no image
    feature predicts them) gives an AUROC whose interval holds 0.5.  (Shuffling only the training
    labels is not that: a classifier of random labels still scores by some image feature, which
    may well track the real labels of one held-out patient's slices.)"""
    train, test = phantom_store.where(split="train"), phantom_store.where(split="test")
    inputs = [train.channels.index(c) for c in train.channels if c not in train.label_channels]
    x = train.read(np.arange(len(train)))[:, inputs]
    y = np.random.default_rng(0).permutation(train.manifest["label"].to_numpy().astype(int))
    model, info = train_classifier(x, y, steps=150, seed=0, progress=False)
    scores = classifier_scores(model, test.read(np.arange(len(test)))[:, inputs])
    shuffled = np.random.default_rng(1).permutation(test.manifest["label"].to_numpy().astype(bool))
    fig = roc_figure(scores, shuffled, n_boot=500)
    assert fig.low < 0.5 < fig.high, fig
    assert "float32" in info["precision"] or "bf16" in info["precision"]


def test_flips_are_off_by_default_for_chest_radiographs(phantom_store, tmp_path):
    from workbench.evaluate.utility import default_flips

    assert default_flips(phantom_store.where(split="train"))
    with StoreWriter(tmp_path / "cxr", channels=["xray"], height=8, width=8, meta={"modality": "chest radiograph"},
                     label_channels=[]) as w:
        w.append(np.zeros((2, 1, 8, 8), np.float32), [{"subject": f"p{i}", "source": "x", "z": 0, "split": "train",
                                                      "label": i} for i in range(2)])
    assert not default_flips(SliceStore.open(tmp_path / "cxr"))


def test_utility_refuses_what_it_cannot_measure_before_any_training(phantom_store, tmp_path):
    train, test = phantom_store.where(split="train"), phantom_store.where(split="test")
    unlabelled = _write_copy(tmp_path / "unlabelled", train.take(np.arange(20)), labels=False)
    with pytest.raises(WorkbenchError, match="no class labels.*conditional=True"):
        utility(None, real=train, synthetic=unlabelled, test=test, folder=tmp_path / "u1", progress=False)
    one_class = train.take(np.flatnonzero(train.manifest["label"].to_numpy() == 1))
    with pytest.raises(WorkbenchError, match="one class"):
        utility(None, real=one_class, synthetic=train, test=test, folder=tmp_path / "u2", progress=False)
    few = train.take(np.r_[np.flatnonzero(train.manifest["label"].to_numpy() == 0)[:1],
                           np.flatnonzero(train.manifest["label"].to_numpy() == 1)[:5]])
    with pytest.raises(WorkbenchError, match="at least 2 of each"):
        utility(None, real=few, synthetic=train, test=test, folder=tmp_path / "u3", progress=False)
    with pytest.raises(WorkbenchError, match="as many synthetic images of each class"):
        lab = train.manifest["label"].to_numpy()
        small = train.take(np.r_[np.flatnonzero(lab == 0)[:3], np.flatnonzero(lab == 1)[:3]])
        utility(None, real=train, synthetic=small, test=test, folder=tmp_path / "u4",
                progress=False)
    with pytest.raises(WorkbenchError, match="unknown arm"):
        utility(None, real=train, synthetic=train, test=test, arms=("real", "fake"), folder=tmp_path / "u5")
    assert not any((tmp_path / f"u{i}").exists() for i in range(1, 6))  # nothing was trained or written


# -- the report of a run whose samples are its training images ------------------------------------------------
@pytest.fixture(scope="module")
def copy_run(phantom_store, phantom_detector, tmp_path_factory):
    """A run of a (barely trained) conditional DDPM whose "samples" are its own training images."""
    from workbench.train import train_model

    run = tmp_path_factory.mktemp("runs") / "copies"
    train_model(phantom_store.where(split="train"), run / "model", model="ddpm", preset="tiny", steps=30, batch_size=8, lr=2e-3,
                max_images=24, conditional=True, seed=0, progress=False,
                block_out_channels=[16, 32, 32, 32])
    opened = workbench.open_run(run)
    _write_copy(run / "synthetic", opened.train)
    workbench.analyze(run, detector=str(phantom_detector), bootstrap=200, data_copying_cells=None, progress=False)
    report = workbench.privacy_report(run, utility_options={"steps": 40}, membership_options={"repeats": 1},
                                      progress=False)
    return run, report


def test_report_of_training_images_as_samples_finds_every_copy(copy_run):
    run, report = copy_run
    v = report["values"]
    assert report["missing"] == {}, report["missing"]
    assert v["pixel_synthetic_copy_fraction"] == 1.0          # every image a copy
    assert v["pixel_dcr_median"] < 1e-6                        # DCR zero
    assert v["pixel_dcr_below_heldout_p5"] == 1.0
    assert v["pixel_nndr_median"] < 1e-3
    assert v["fidelity_authenticity"] < 0.05                   # authenticity near 0
    assert v["fidelity_authenticity_baseline"] > 0.3           # held-out images are new
    assert 0 <= v["membership_auroc_loss"] <= 1 and "membership_auroc_secmi" in v
    assert {"utility_auroc_real", "utility_auroc_synthetic", "utility_gap_synthetic"} <= set(v)
    for name in ("report.json", "report.html", "utility.json", "fidelity.json", "membership.json", "privacy.json",
                 "membership_scores.parquet"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text()
    assert "Privacy against utility" in page and "plotly" in page and "Membership inference" in page
    saved = json.loads((run / "report.json").read_text())
    assert saved["values"] == pytest.approx(v)
    extractor = saved["parts"]["fidelity"]["extractor"]
    assert extractor["kind"] == "detector" and extractor["dim"]  # recorded beside the figures


def test_a_second_report_reuses_every_part_computed_from_the_same_inputs(copy_run, capsys):
    run, report = copy_run
    before = {name: (run / name).stat().st_mtime_ns for name in ("utility.json", "membership.json", "fidelity.json")}
    again = workbench.privacy_report(run, utility_options={"steps": 40}, membership_options={"repeats": 1},
                                     html=False)
    assert "reused" in capsys.readouterr().out
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before
    assert again["values"] == pytest.approx(report["values"])


def test_the_report_of_an_unconditional_model_says_why_it_has_no_utility(copy_run, tmp_path):
    import shutil

    run, _ = copy_run
    other = tmp_path / "unconditional"
    shutil.copytree(run, other)
    synthetic = workbench.open_store(other / "synthetic")
    shutil.rmtree(other / "synthetic")
    _write_copy(other / "synthetic", workbench.open_run(other).train, labels=False)
    assert len(synthetic)
    report = workbench.privacy_report(other, membership=False, fidelity=False, progress=False, html=False)
    assert "conditional=True" in report["missing"]["utility"]
    with pytest.raises(WorkbenchError, match="conditional=True"):
        workbench.privacy_report(other, utility=True, progress=False, html=False)


def test_the_frontier_joins_the_runs_no_other_run_beats():
    from workbench.widgets import frontier_figure

    table = pd.DataFrame({"run": list("abcd"), "status": "complete", "final": True, "model": ["ddpm", "ddpm", "gan", "gan"],
                          "utility_auroc_synthetic": [0.9, 0.8, 0.85, 0.6],
                          "pixel_synthetic_copy_fraction": [0.5, 0.1, 0.6, 0.05]})
    fig = frontier_figure(table)
    line = [t for t in fig.data if t.name == "frontier"][0]
    assert list(line.x) == [0.9, 0.8, 0.6] and list(line.y) == [0.5, 0.1, 0.05]  # c is beaten by a
    empty = frontier_figure(table.drop(columns="utility_auroc_synthetic"))
    assert "No privacy-against-utility values" in empty.layout.title.text


def test_cli_report_and_utility(copy_run, capsys):
    from workbench.cli import main

    run, _ = copy_run
    assert main(["report", str(run), "--utility-steps", "40", "--skip", "membership"]) == 0
    out = capsys.readouterr().out
    assert "utility_auroc_synthetic" in out and "pixel_dcr_median" in out
    assert main(["report", str(run), "--skip", "copies"]) == 2
    assert "parts that can be left out" in capsys.readouterr().err


def test_a_sweep_spec_turns_the_report_stage_on_with_checked_parameters():
    from workbench.runs.spec import SpecError, load_spec
    from workbench.runs.sweep import plan_hash

    base = {"name": "t", "base": {"size": 16}, "vary": {"model": ["ddpm"]}}
    assert load_spec(base).evaluate is None
    assert load_spec({**base, "evaluate": True}).evaluate == {}
    spec = load_spec({**base, "evaluate": {"utility_steps": 50}})
    plan = spec.plans()[0]
    assert plan_hash(plan, spec.evaluate) != plan_hash(plan)  # turning it on makes the runs incomplete
    with pytest.raises(SpecError, match="unknown parameter 'utility_stepz'"):
        load_spec({**base, "evaluate": {"utility_stepz": 50}})
    with pytest.raises(SpecError, match="evaluate.run is set by the sweep"):
        load_spec({**base, "evaluate": {"run": "x"}})
    with pytest.raises(SpecError, match="evaluate is true"):
        load_spec({**base, "evaluate": 3})


def test_held_out_patients_as_samples_look_new_to_every_privacy_figure(phantom_store, phantom_detector):
    """Control: "samples" that are another patient's real slices: few copies (Dar's τ is the
    95th percentile of real-vs-real), few closer than the held-out 5th percentile, authenticity
    and fidelity like the real-vs-real baseline; the training images themselves: the opposite."""
    from workbench.evaluate.distances import distances
    from workbench.evaluate.fidelity import fidelity
    from workbench.memorization.analysis import run_analysis
    from workbench.memorization.detector import load_detector

    train_split, test = phantom_store.where(split="train"), phantom_store.where(split="test")
    a, b = _subjects(train_split)[:2]
    train, other = _by_subject(train_split, [a]), _by_subject(train_split, [b])
    encoder = load_detector(phantom_detector)[0]
    figures = {}
    for name, samples in (("new", other), ("copies", train)):
        analysis = run_analysis(samples, train, test, detector=encoder, bootstrap=0, per_channel=False,
                                data_copying_cells=None, progress=False)
        analysis.settings["detector"] = str(phantom_detector)
        table = distances(analysis, train, test).table().set_index("similarity")
        fid = fidelity(None, extractor=phantom_detector, synthetic=samples, reference=train, baseline=test,
                       kid_subsets=20, progress=False)
        figures[name] = (analysis.record(), table.loc["pixel r"], fid)
    record, dcr, fid = figures["new"]
    assert record["pixel_synthetic_copy_fraction"] < 0.25, record
    assert dcr["synthetic closer than held-out p5"] < 0.3 and dcr["synthetic exact copies (DCR < 1e-6)"] == 0
    assert fid.synthetic["authenticity"] > 0.3 and abs(fid.synthetic["authenticity"] - fid.baseline["authenticity"]) < 0.3
    assert fid.synthetic["fd"] < 3 * fid.baseline["fd"] + 1e-9, (fid.synthetic["fd"], fid.baseline["fd"])
    record, dcr, fid = figures["copies"]
    assert record["pixel_synthetic_copy_fraction"] == 1.0 and dcr["synthetic exact copies (DCR < 1e-6)"] == 1.0
    assert fid.synthetic["authenticity"] < 0.05 and fid.synthetic["fd"] < 1e-6
