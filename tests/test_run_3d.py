"""A 3D run end to end through the notebooks (papermill) and the CLI: volumes prepared, a 3D latent
diffusion model trained and sampled, the volume analysis with its slice view, the 3D viewer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scrapbook as sb

from conftest import write_subject
from workbench.data import layout
from workbench.runs.demo import demo3d_stages, run_demo

pytestmark = pytest.mark.slow

#: tiny settings: 25 box-shaped subjects, 20 held out and 5 trained on (the fewest that calibrate
#: a threshold by either rule), 16^3
TINY3D = dict(size=16, n_test=20, steps=3, ae_steps=3, batch_size=2, samples=3, ddim_steps=2)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("run3d")
    source = root / "source"
    for i in range(25):
        write_subject(source, f"S{i:03d}", shape=(24, 20, 12), seed=i)
    out = root / "run"
    record = run_demo(out, {**TINY3D, "source": str(source)}, volumes=True, progress=False)
    return out, record


def test_the_3d_demo_runs_every_stage(run3d):
    out, record = run3d
    assert record["images"] == "volumes"
    for name, _ in demo3d_stages(out, TINY3D):
        assert (out / f"{name}.ipynb").is_file() and not (out / f"{name}.FAILED.ipynb").exists(), name
    import workbench

    run = workbench.open_run(out)
    assert run.store.is_volume and run.store.image_shape == (5, 16, 16, 16)
    assert run.synthetic.is_volume and run.synthetic.shape == (3, 5, 16, 16, 16)
    assert len(run.train) == 5 and len(run.test) == 20
    assert json.loads((out / layout.MODEL / "config.json").read_text())["family"] == "ldm3d"
    # 02_train showed the 3D autoencoder's reconstruction report, with the copy search's ceiling
    cells = json.loads((out / "02_train.ipynb").read_text())["cells"]
    assert any("volumes" in json.dumps(c.get("outputs", [])) and "r_median" in json.dumps(c.get("outputs", []))
               for c in cells)


def test_the_volume_analysis_and_its_slice_view(run3d):
    out, _ = run3d
    summary = json.loads((out / layout.COPY_ANALYSIS).read_text())
    assert summary["settings"]["images"] == "volumes" and summary["settings"]["detector"] is None
    assert summary["settings"]["n_synthetic"] == 3 and summary["settings"]["n_test"] == 20
    assert "embedding similarity" not in summary  # the 2D detector is skipped for volumes
    view = json.loads((out / layout.SLICE_VIEW / layout.COPY_ANALYSIS).read_text())
    slices = view["settings"]["n_synthetic"]
    assert slices > 3 and view["settings"]["n_test"] > 20  # every kept axial slice of 3 and of 20 volumes
    scraps = sb.read_notebook(str(out / "04_memorization.ipynb")).scraps.data_dict
    assert scraps["synthetic_max_r_median"] == pytest.approx(summary["memorization"]["synthetic_max_r_median"])
    assert scraps["slice_synthetic_max_r_median"] == pytest.approx(view["memorization"]["synthetic_max_r_median"])
    # the slice view's reference is the slices of exactly the volumes the model saw
    from workbench.memorization.analysis import load_slice_view
    import workbench

    run = workbench.open_run(out)
    sv = load_slice_view(out)
    seen = set(sv.settings["train_rows"])
    store_slices = workbench.open_store(out / layout.SLICES / layout.SLICES_STORE)
    volumes = store_slices.manifest["volume"].to_numpy()
    assert seen == set(np.flatnonzero(np.isin(volumes, run.train.rows)).tolist())


def test_browse_opens_the_volume_viewer_with_the_saved_matches(run3d):
    from workbench.widgets import VolumeViewer, browse

    out, _ = run3d
    viewer = browse(out, reviewer="dr-3d")
    assert isinstance(viewer, VolumeViewer)
    flags = json.loads((out / layout.COPY_ANALYSIS).read_text())
    assert flags["settings"]["n_synthetic"] == len(viewer.synthetic)
    viewer.mark("not a copy", "tiny model")
    assert "not a copy" in (out / layout.MARKS).read_text()


def test_the_cli_prepares_volumes_and_analyses_a_3d_run(run3d, tmp_path, capsys):
    from workbench.cli import main

    out, _ = run3d
    source = out.parent / "source"
    main(["data", "prepare", "--source", str(source), "--out", str(tmp_path / "vol"), "--layout", "volumes",
          "--size", "16", "--n-test", "20"])
    import workbench

    assert workbench.open_store(tmp_path / "vol").image_shape == (5, 16, 16, 16)
    main(["analyze", str(out), "--detector", "none", "--bootstrap", "0"])
    said = capsys.readouterr().out
    assert "slice view" in said
    assert (out / layout.SLICE_VIEW / layout.MEMORIZATION).is_file()


def test_a_2d_model_on_volumes_and_a_3d_model_on_slices_are_refused_before_any_work(run3d, phantom_store, tmp_path):
    import workbench
    from workbench.errors import WorkbenchError

    out, _ = run3d
    volumes = workbench.open_store(out / layout.STORE).where(split="train")
    with pytest.raises(WorkbenchError, match="3D volumes"):
        workbench.train_model(volumes, tmp_path / "m2d", model="ddpm", steps=1)
    with pytest.raises(WorkbenchError, match="2D"):
        workbench.train_model(phantom_store.where(split="train"), tmp_path / "m3d", model="ldm3d", steps=1)
    assert not (tmp_path / "m2d").exists() and not (tmp_path / "m3d").exists()
