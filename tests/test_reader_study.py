"""The reader study's logic: seeded plan, answers saved as given, scoring against chance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.evaluate import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize
from workbench.evaluate.reader_study import COLUMNS, read_answer_file


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


# -- the widget: keys (as ipyevents sends them) and the app that asks the reader's name ----------

def _keys(study, *keys, **extra):
    for key in keys:
        study._key({"type": "keydown", "key": key, **extra})


def _answers(run, reader):
    return pd.read_csv(run / "reader_study" / f"{reader}.csv")


def test_keys_answer_and_set_the_confidence(stores, tmp_path):
    from ipywidgets import Widget

    from workbench.widgets import ReaderStudy

    real, syn = stores
    run = tmp_path / "run"
    study = ReaderStudy(run, "dr-keys", real=real, synthetic=syn, n_real=2, n_synthetic=2, seed=0)
    assert study.keys.source is study.answer_box and study.keys.watched_events == ["keydown"]
    assert study.image in study.answer_box.children and isinstance(study.keys, Widget)
    assert "keys, with the pointer over the image: <b>r</b> real" in study.hint.value
    assert study.hint in study.widget.children
    _keys(study, "3")
    assert study.confidence.value == 3 and study.item == 0
    _keys(study, "r")                                   # item 0: real, confidence 3
    assert study.item == 1 and study.confidence.value is None  # the confidence is per answer
    _keys(study, "5", "0")                              # 0 clears a confidence
    assert study.confidence.value is None
    _keys(study, "x", "Enter", "9", "")                 # other keys do nothing
    study._key({"type": "keyup", "key": "r"})           # only keydown counts
    _keys(study, "r", repeat=True)                      # a held-down key does not answer twice
    _keys(study, "s", ctrlKey=True)                     # nor does a shortcut with Ctrl
    assert study.item == 1 and len(_answers(run, "dr-keys")) == 1
    _keys(study, "S", shiftKey=True)                    # item 1: synthetic (Shift is fine)
    _keys(study, "1", "s", "r")                         # items 2 and 3
    assert study.done and "Reader study summary" in study.summary.value
    assert all(b.disabled for b in study.buttons)
    _keys(study, "r", "s", "4")                         # after the last item keys do nothing
    answers = _answers(run, "dr-keys")
    assert answers["item"].tolist() == [0, 1, 2, 3]
    assert answers["answer"].tolist() == ["real", "synthetic", "synthetic", "real"]
    assert answers.loc[0, "confidence"] == 3 and answers.loc[2, "confidence"] == 1
    assert answers["confidence"].isna().tolist() == [False, True, False, True]
    assert study.confidence.value is None


def test_buttons_and_keys_share_one_log_and_a_returning_reader_continues(stores, tmp_path):
    from workbench.widgets import ReaderStudy

    real, syn = stores
    run = tmp_path / "run"
    first = ReaderStudy(run, "dr-b", real=real.path, synthetic=syn.path, n_real=2, n_synthetic=2)  # folders work too
    first._answer(first.buttons[1])                     # the "synthetic" button
    _keys(first, "r")
    again = ReaderStudy(run, "dr-b", real=real, synthetic=syn)
    assert again.item == 2
    _keys(first, "s")             # the first tab answers item 2 ...
    _keys(again, "r")             # ... so the second tab's answer to it is refused, and it moves on
    assert again.item == 3 and "already answered" in again.status.value
    assert _answers(run, "dr-b")["answer"].tolist() == ["synthetic", "real", "synthetic"]


def _study_run(tmp_path, *, n_test=3):
    """A run folder as 04_memorization leaves it: memorization.json naming a train and a synthetic store."""
    import json

    train = tmp_path / "store"
    with StoreWriter(train, channels=["t1", "flair"], height=8, width=8, kind="real") as w:
        w.append(np.random.default_rng(0).random((8, 2, 8, 8), dtype=np.float32),
                 [{"split": "test" if i < n_test else "train"} for i in range(8)])
    synthetic = tmp_path / "synthetic"
    with StoreWriter(synthetic, channels=["t1", "flair"], height=8, width=8, kind="synthetic") as w:
        w.append(np.random.default_rng(1).random((5, 2, 8, 8), dtype=np.float32), [{"split": "synthetic"}] * 5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "memorization.json").write_text(json.dumps({"synthetic_store": str(synthetic), "train_store": str(train)}))
    return run


def test_app_asks_the_name_then_starts_the_readers_session(tmp_path):
    from workbench.widgets import ReaderStudy, reader_study_app

    run = _study_run(tmp_path)
    app = reader_study_app(run, n_real=2, n_synthetic=2, seed=0, channel="flair")
    assert app.real.path == tmp_path / "store" and len(app.real) == 3  # held-out images only
    assert app.name in app.widget.children[1].children and app.start in app.widget.children[1].children
    app.name.value = "   "   # (setting the value starts, as Enter does; so does the button)
    app.start.click()
    assert app.study is None and "enter your name" in app.message.value
    app.name.value = "bad name/../x"
    app._start()
    assert app.study is None and "reader name" in app.message.value
    app.name.value = " dr-app "
    app.start.click()
    assert isinstance(app.study, ReaderStudy) and app.widget.children == (app.study.widget,)
    assert app.study.channel == 1 and len(app.study.plan) == 4
    _keys(app.study, "s")
    assert _answers(run, "dr-app")["answer"].tolist() == ["synthetic"]
    assert set(app.study.plan.loc[app.study.plan["truth"] == "real", "position"]) <= {0, 1, 2}


def test_app_says_what_is_missing_and_how_to_make_it(tmp_path):
    import json
    import shutil

    from workbench.widgets import reader_study_app

    run = tmp_path / "empty-run"
    run.mkdir()
    app = reader_study_app(run)
    text = app.message.value
    assert "memorization.json: missing" in text and "04_memorization" in text and "make demo" in text
    assert app.widget.children == (app.message,)

    run = _study_run(tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "synthetic")
    text = reader_study_app(run).message.value
    assert "synthetic" in text and "does not exist" in text and "04_memorization" in text

    run = _study_run(tmp_path / "b", n_test=0)
    assert "no images of split" in reader_study_app(run).message.value

    (run / "memorization.json").write_text(json.dumps({"train_store": "x"}))
    assert "has no synthetic_store" in reader_study_app(run).message.value
    (run / "memorization.json").write_text("{not json")
    assert "memorization.json: unreadable" in reader_study_app(run).message.value


def test_app_finds_stores_named_relative_to_the_repository(tmp_path, monkeypatch):
    import json

    from workbench.widgets import reader_study_app

    run = _study_run(tmp_path)      # as `workbench run` from tmp_path writes them: relative paths
    (run / "memorization.json").write_text(json.dumps({"synthetic_store": "synthetic", "train_store": "store"}))
    (run / "app").mkdir()
    monkeypatch.chdir(run / "app")  # Voila runs the app's kernel in <run>/app
    app = reader_study_app(run)
    assert app.real.path == tmp_path / "store" and app.synthetic.path == tmp_path / "synthetic"


def test_the_default_channel_is_flair_where_there_is_one_else_the_first(tmp_path):
    from workbench.widgets.reader_study import ReaderStudy

    brain = _store(tmp_path / "b-real", 4, channels=("t1", "flair"))
    brain_synth = _store(tmp_path / "b-synth", 4, kind="synthetic", channels=("t1", "flair"))
    assert ReaderStudy(tmp_path / "run1", "a", real=brain, synthetic=brain_synth, n_real=2, n_synthetic=2).channel == 1
    xray = _store(tmp_path / "x-real", 4, channels=("xray",))
    xray_synth = _store(tmp_path / "x-synth", 4, kind="synthetic", channels=("xray",))
    assert ReaderStudy(tmp_path / "run2", "a", real=xray, synthetic=xray_synth, n_real=2, n_synthetic=2).channel == 0


# -- one reader in several tabs (several processes) answering at the same instant ----------------

@pytest.fixture(scope="module")
def racers():
    from test_marks import RacingWorkers  # worker processes that start each trial together

    workers = RacingWorkers(4)
    yield workers
    workers.close()


def _open_tab(run, reader, items, answer):
    """A browser tab of ``reader``: its own AnswerLog, opened before; the action answers ``items``."""
    log = AnswerLog(run, reader, load_plan(run))

    def act():
        for item in items:
            log.answer(item, answer)
        return answer
    return act


def _small_plan(n):
    return pd.DataFrame({"item": range(n), "truth": ["real", "synthetic"] * (n // 2), "position": range(n)})


def _read_back(run, reader):
    path = run / "reader_study" / f"{reader}.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and lines.count(lines[0]) == 1, lines
    return read_answer_file(path)


def test_one_reader_in_two_tabs_answers_an_item_once(racers, tmp_path):
    run = tmp_path / "run"
    save_plan(run, _small_plan(4))
    for trial in range(60):
        reader = f"reader-{trial}"
        if trial % 2:  # half the trials on a file that has answers already, half on a new one
            AnswerLog(run, reader, load_plan(run)).answer(0, "real")
        results = racers.race((_open_tab, (run, reader, [1], "real")), (_open_tab, (run, reader, [1], "synthetic")))
        assert sorted(status for status, _ in results) == ["ok", "refused"], (trial, results)
        winner = next(value for status, value in results if status == "ok")
        refusal = next(value for status, value in results if status == "refused")
        assert f"item 1 was already answered by {reader}" in refusal
        answers = _read_back(run, reader)
        assert answers["item"].tolist() == [0, 1][1 - trial % 2:], (trial, answers)
        assert answers.loc[answers["item"] == 1, "answer"].tolist() == [winner]


def test_one_reader_answering_different_items_in_several_tabs_loses_none(racers, tmp_path):
    run = tmp_path / "run"
    save_plan(run, _small_plan(8))
    for trial in range(45):
        reader, tabs = f"reader-{trial}", 2 + trial % 3   # 2, 3 or 4 tabs, two items each
        results = racers.race(*[(_open_tab, (run, reader, [tab, tab + 4], "real")) for tab in range(tabs)])
        assert results == [("ok", "real")] * tabs, (trial, results)
        assert sorted(_read_back(run, reader)["item"]) == sorted([*range(tabs), *range(4, 4 + tabs)]), trial
