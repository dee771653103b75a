"""Every notebook executed through papermill, end to end, with tiny parameters (the demo's wiring)."""
import json

import pytest
import scrapbook as sb

from workbench.errors import WorkbenchError
from workbench.runs import demo_stages, run_demo, run_notebook

TINY = dict(phantom_subjects=3, n_test=1, size=32, steps=3, batch_size=4, max_images=6, samples=4, ddim_steps=2,
            detector_steps=5)


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
    assert (out / "detector" / "detector.json").is_file() and (out / "patients.csv").is_file()


@pytest.mark.slow
def test_html_export_holds_the_figures(demo_run):
    out, _ = demo_run
    html = (out / "04_memorization.html").read_text()
    assert "Highest Pearson r with any training slice" in html  # the histogram
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
