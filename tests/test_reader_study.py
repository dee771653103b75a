"""The reader study's logic: seeded plan, answers saved as given, scoring against chance."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.evaluate import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize


def _store(path, n, kind="real", channels=("t1",)):
    with StoreWriter(path, channels=list(channels), height=8, width=8, kind=kind) as w:
        w.append(np.random.default_rng(n).random((n, len(channels), 8, 8), dtype=np.float32),
                 [{"split": "test" if kind == "real" else "synthetic"}] * n)
    return SliceStore.open(path)


@pytest.fixture
def stores(tmp_path):
    return _store(tmp_path / "real", 12), _store(tmp_path / "syn", 10, kind="synthetic")


def test_plan_is_seeded_shuffled_and_balanced(stores):
    real, syn = stores
    a = plan_study(real, syn, n_real=6, n_synthetic=6, seed=3)
    b = plan_study(real, syn, n_real=6, n_synthetic=6, seed=3)
    c = plan_study(real, syn, n_real=6, n_synthetic=6, seed=4)
    assert a.equals(b) and not a.equals(c)
    assert (a["truth"] == "real").sum() == 6 and (a["truth"] == "synthetic").sum() == 6
    assert a["item"].tolist() == list(range(12))
    assert a["truth"].tolist() != sorted(a["truth"].tolist())  # shuffled, not blocked
    with pytest.raises(WorkbenchError, match="has only 10 images"):
        plan_study(real, syn, n_real=5, n_synthetic=11)


def test_answers_are_saved_as_given_and_survive_a_restart(stores, tmp_path):
    real, syn = stores
    run = tmp_path / "run"
    plan = plan_study(real, syn, n_real=4, n_synthetic=4, seed=0)
    save_plan(run, plan)
    assert load_plan(run).equals(plan)
    log = AnswerLog(run, "dr-a", load_plan(run))
    assert log.next_item() == 0
    log.answer(0, "synthetic", confidence=4)
    log.answer(1, "real")
    text = (run / "reader_study" / "dr-a.csv").read_text().splitlines()
    assert len(text) == 3 and text[0] == "item,truth,answer,confidence,answered_at"
    again = AnswerLog(run, "dr-a", plan)  # a new session of the same reader
    assert again.answered == {0, 1} and again.next_item() == 2
    with pytest.raises(WorkbenchError, match="already answered"):
        again.answer(1, "synthetic")
    with pytest.raises(WorkbenchError, match="answer must be one of"):
        again.answer(2, "fake")
    with pytest.raises(WorkbenchError, match="not in the study"):
        again.answer(99, "real")
    with pytest.raises(WorkbenchError, match="reader name"):
        AnswerLog(run, "../evil", plan)


def test_summary_scores_per_reader_and_pooled(stores, tmp_path):
    real, syn = stores
    run = tmp_path / "run"
    plan = plan_study(real, syn, n_real=8, n_synthetic=8, seed=1)
    perfect, guesser = AnswerLog(run, "perfect", plan), AnswerLog(run, "always-real", plan)
    for item, truth in zip(plan["item"], plan["truth"]):
        perfect.answer(int(item), truth)
        guesser.answer(int(item), "real")
    table = summarize(load_answers(run))
    assert table.loc["perfect", "accuracy"] == 1.0 and table.loc["perfect", "sensitivity"] == 1.0
    assert table.loc["always-real", "accuracy"] == 0.5
    assert table.loc["always-real", "sensitivity"] == 0.0 and table.loc["always-real", "specificity"] == 1.0
    assert table.loc["perfect", "p_value"] == pytest.approx(binomtest(16, 16, 0.5).pvalue)
    assert table.loc["always-real", "p_value"] == pytest.approx(1.0)
    pooled = table.loc["pooled"]
    assert pooled["answers"] == 32 and pooled["correct"] == 24
    assert pooled["ci_low"] < 0.75 < pooled["ci_high"]


def test_corrupt_answers_file_is_named(stores, tmp_path):
    real, syn = stores
    run = tmp_path / "run"
    plan = plan_study(real, syn, n_real=2, n_synthetic=2, seed=0)
    (run / "reader_study").mkdir(parents=True)
    bad = run / "reader_study" / "dr-b.csv"
    bad.write_text("item,truth,answer,confidence,answered_at\n0,real,maybe,,x\n")
    with pytest.raises(WorkbenchError, match="dr-b.csv: corrupt answers file"):
        AnswerLog(run, "dr-b", plan)
    bad.write_text("\x00\x01garbage")
    with pytest.raises(WorkbenchError, match="dr-b.csv: corrupt"):
        load_answers(run)
