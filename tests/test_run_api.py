"""The run as one object: open_run, run.json, analyze, and the errors for what is not a run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import workbench
from workbench.data import layout
from workbench.errors import WorkbenchError
from workbench.runs.run import Run, open_run, record_stage

from match_run import make_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runapi"))


def test_top_level_names_are_lazy_and_work(small_run):
    assert workbench.open_run is open_run
    store = workbench.open_store(small_run["store"])
    assert len(store) == 48 and isinstance(store, workbench.SliceStore)


def test_a_folder_that_is_not_a_run_says_what_it_lacks_and_how_to_make_it(tmp_path, small_run):
    with pytest.raises(WorkbenchError, match="no such run folder.*workbench run 01_prepare_data"):
        open_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkbenchError, match=r"not a run folder: it has no run\.json and none of store/, model/, "
                                             r"synthetic/.*make demo"):
        open_run(tmp_path / "empty")
    with pytest.raises(WorkbenchError, match="this is a SliceStore, not a run folder.*open_store"):
        open_run(small_run["store"])
    with pytest.raises(WorkbenchError, match="expected a run folder.*got int"):
        open_run(3)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WorkbenchError, match="a file, not a run folder"):
        open_run(tmp_path / "file.txt")


@pytest.mark.parametrize("version, expected", [(0, "is not the version this workbench reads"),
                                               (None, "is not the version this workbench reads"),
                                               (99, "newer workbench")])
def test_a_run_json_of_another_version_is_refused_with_what_to_do(tmp_path, version, expected):
    (tmp_path / layout.RUN_JSON).write_text(json.dumps({"version": version, "stages": {}}))
    with pytest.raises(WorkbenchError, match=expected):
        open_run(tmp_path)


def test_a_damaged_run_json_names_the_file(tmp_path):
    (tmp_path / layout.RUN_JSON).write_text("{not json")
    with pytest.raises(WorkbenchError, match=r"run\.json: unreadable"):
        open_run(tmp_path)
    (tmp_path / layout.RUN_JSON).write_text("[1, 2]")
    with pytest.raises(WorkbenchError, match="not a run description"):
        open_run(tmp_path)


def test_record_stage_writes_a_versioned_run_json_with_relative_outputs(tmp_path):
    record_stage(tmp_path, "01_prepare_data", {"store": str(tmp_path / "store"), "size": 32}, seconds=1.25)
    record_stage(tmp_path, "03_sample", {"out": "/elsewhere/synthetic", "n": 4})
    record = json.loads((tmp_path / layout.RUN_JSON).read_text())
    assert record["version"] == layout.RUN_VERSION
    assert record["outputs"] == {"store": "store", "synthetic": "/elsewhere/synthetic"}
    assert record["stages"]["01_prepare_data"]["parameters"] == {"store": str(tmp_path / "store"), "size": 32}
    assert record["stages"]["01_prepare_data"]["seconds"] == round(1.25, 1)
    run = open_run(tmp_path)
    assert run.output_path("synthetic") == __import__("pathlib").Path("/elsewhere/synthetic")
    assert run.parameters["03_sample"] == {"out": "/elsewhere/synthetic", "n": 4}


def test_what_a_run_lacks_is_an_error_naming_the_command_that_makes_it(tmp_path, small_run):
    record_stage(tmp_path, "01_prepare_data", {"store": str(small_run["store"])})
    run = open_run(tmp_path)
    assert len(run.store) == 48 and len(run.test) == 24
    with pytest.raises(WorkbenchError, match="has no model.*02_train"):
        run.train
    with pytest.raises(WorkbenchError, match="has no synthetic.*03_sample"):
        run.synthetic
    with pytest.raises(WorkbenchError, match="has no analysis.*workbench analyze"):
        run.analysis


def test_a_run_is_a_path(small_run):
    run = open_run(small_run["run"])
    assert isinstance(run, Run) and os.fspath(run) == str(small_run["run"])
    assert open_run(run) is run


def test_analyze_runs_once_saves_into_the_run_and_reads_back(tmp_path, small_run):
    run = open_run(small_run["run"])
    saved = run.analysis  # make_run saved one
    assert set(saved.similarities) == {"pixel r"}
    assert np.isfinite(saved.similarities["pixel r"].train_to_synthetic).all()
    record = saved.record()
    assert 0 < record["pixel_synthetic_copy_fraction"] <= 1
    assert json.loads(json.dumps(record)) == record  # scrapbook-able: plain JSON values


def test_every_top_level_name_resolves():
    for name in workbench.__all__:
        assert getattr(workbench, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        workbench.nothing


def test_ensure_phantom_writes_only_where_the_folder_is_missing(tmp_path):
    existing = tmp_path / "real"
    existing.mkdir()
    assert workbench.ensure_phantom("brain", existing, subjects=2) is None  # real data is never touched
    assert list(existing.iterdir()) == []
    with pytest.raises(WorkbenchError, match="dataset must be one of"):
        workbench.ensure_phantom("ct", tmp_path / "x")
    assert workbench.ensure_phantom("xray", tmp_path / "cxr", images=0) is None and not (tmp_path / "cxr").exists()


def test_the_search_takes_a_store_or_its_folder(small_run):
    from workbench.search import topk_correlation

    by_path = topk_correlation(str(small_run["synthetic"]), small_run["store"], k=2, progress=False)
    by_store = topk_correlation(workbench.open_store(small_run["synthetic"]), workbench.open_store(small_run["store"]),
                                k=2, progress=False)
    np.testing.assert_array_equal(by_path.indices, by_store.indices)
    with pytest.raises(WorkbenchError, match="no SliceStore here|does not exist|not a SliceStore|no such"):
        topk_correlation(small_run["store"] / "nowhere", small_run["store"], progress=False)
