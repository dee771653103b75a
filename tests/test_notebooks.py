"""Every notebook executed through papermill, end to end, with tiny parameters (the demo's wiring)."""
import json

import pytest
import scrapbook as sb

from workbench.errors import WorkbenchError
from workbench.runs import demo_stages, run_demo, run_notebook

TINY = dict(phantom_subjects=3, n_test=1, size=32, steps=3, batch_size=4, max_images=6, samples=4, ddim_steps=2,
            detector_steps=5, utility_steps=5)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    record = run_demo(out, TINY, progress=False)
    return out, record


@pytest.mark.slow
def test_demo_runs_every_stage_into_the_run_folder(demo_run):
    out, record = demo_run
    for name, _ in demo_stages(out, TINY):
        nb = out / f"{name}.ipynb"
        assert nb.is_file() and (out / f"{name}.html").is_file(), name
        assert not (out / f"{name}.FAILED.ipynb").exists()
        cells = json.loads(nb.read_text())["cells"]
        assert any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{name} produced no output"
    for folder in ("phantom", "store", "model", "synthetic"):
        assert (out / folder).is_dir()
    assert set(record["stage_seconds"]) == {name for name, _ in demo_stages(out, TINY)}
    assert json.loads((out / "demo.json").read_text())["total_seconds"] > 0


@pytest.mark.slow
def test_notebooks_record_their_key_numbers(demo_run):
    out, _ = demo_run
    prep = sb.read_notebook(str(out / "01_prepare_data.ipynb")).scraps.data_dict
    assert prep["n_slices"] == prep["n_train"] + prep["n_test"] and prep["n_test"] > 0
    train = sb.read_notebook(str(out / "02_train.ipynb")).scraps.data_dict
    assert train["n_train_images"] == 6
    mem = sb.read_notebook(str(out / "04_memorization.ipynb")).scraps.data_dict
    summary = json.loads((out / "memorization.json").read_text())
    assert mem["synthetic_max_r_median"] == pytest.approx(summary["synthetic_max_r_median"])
    assert -1 <= mem["test_max_r_max"] <= 1 and 0 <= mem["synthetic_above_test_max"] <= 1
    assert summary["n_synthetic"] == 4 and summary["n_train"] == 6
    # the calibrated analysis: thresholds, copy rates and flags recorded for sweeps
    analysis = json.loads((out / "copy_analysis.json").read_text())
    assert mem["pixel_threshold"] == pytest.approx(analysis["pixel r"]["dar95"]["threshold"]["value"])
    assert 0 <= mem["pixel_synthetic_copy_fraction"] <= 1 and 0 <= mem["embedding_synthetic_copy_fraction"] <= 1
    assert mem["flagged_copies"] == analysis["flagged"]
    assert (out / "detector" / "model.safetensors").is_file() and (out / "patients.csv").is_file()


@pytest.mark.slow
def test_the_run_is_one_object_described_by_run_json(demo_run):
    import workbench

    out, _ = demo_run
    run = workbench.open_run(out)
    stages = run.record["stages"]
    assert set(stages) >= {"01_prepare_data", "02_train", "03_sample", "04_memorization", "analyze"}
    assert run.record["outputs"] == {"store": "store", "model": "model", "synthetic": "synthetic", "analysis": "."}
    assert run.parameters["02_train"]["max_images"] == 6 and run.parameters["analyze"]["detector"] == "train"
    assert len(run.train) == 6 and len(run.synthetic) == 4 and len(run.test) > 0
    mem = sb.read_notebook(str(out / "04_memorization.ipynb")).scraps.data_dict
    assert run.analysis.record() == pytest.approx(mem)  # the saved analysis is the one the notebook showed


@pytest.mark.slow
def test_html_export_holds_the_figures(demo_run):
    out, _ = demo_run
    html = (out / "04_memorization.html").read_text()
    assert "Highest pixel r" in html and "ECDF of the highest pixel r" in html  # histogram and ECDF
    assert "pixels (r = " in html and "synthetic #" in html  # the study's figure


@pytest.mark.slow
def test_a_failing_notebook_says_where_and_leaves_no_finished_copy(tmp_path):
    with pytest.raises(WorkbenchError, match=r"02_train.ipynb failed in cell .*StoreError.*no SliceStore here"):
        run_notebook("02_train", tmp_path, {"store": str(tmp_path / "missing"), "out": str(tmp_path / "m")},
                     progress=False)
    assert not (tmp_path / "02_train.ipynb").exists()
    assert (tmp_path / "02_train.FAILED.ipynb").exists()


def test_unknown_notebook_lists_the_known_ones():
    with pytest.raises(WorkbenchError, match="04_memorization"):
        run_notebook("05_nothing", "/tmp/never", {})


@pytest.mark.slow
def test_workbench_analyze_on_the_command_line(demo_run, tmp_path, capsys):
    import shutil

    import workbench
    from workbench.cli import main

    out, _ = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # run.json's outputs are relative: the copy is a run of its own
    code = main(["analyze", str(copy), "--detector", "none", "--bootstrap", "0", "--rule", "test_quantile"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "synthetic images are copies" in printed.out and "training images memorized" in printed.out
    run = workbench.open_run(copy)
    assert run.parameters["analyze"]["rule"] == "test_quantile" and run.parameters["analyze"]["detector"] is None
    assert set(run.analysis.similarities) == {"pixel r"} and run.analysis.rule == "test_quantile"
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
