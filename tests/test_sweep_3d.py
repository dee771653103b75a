"""A sweep that sets 2D against 3D on the same subjects (sweeps/dimensions.yaml, tiny): both arms run,
the table carries each run's level and the 3D run's slice view, and the finding compares slices."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import write_subject
from workbench.runs.collect import read_per_image, read_results
from workbench.runs.sweep import sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_2d_against_3d_on_the_same_subjects(tmp_path):
    spec = yaml.safe_load((ROOT / "sweeps" / "dimensions.yaml").read_text())
    source = tmp_path / "source"
    for i in range(25):
        write_subject(source, f"S{i:03d}", shape=(24, 20, 12), seed=i)
    # the shipped spec at test size: 16^3 boxes instead of the phantom, a few steps, one seed
    spec["base"].update(source=str(source), phantom_subjects=0, size=16, bootstrap=0, min_foreground=0.05)
    for run in spec["runs"]:
        run.update({"train.steps": 2, "options": {"ae_steps": 2}, "train.batch_size": 2, "n": 3, "sample.steps": 2})
    spec["vary"] = {"seed": [0]}
    report = sweep(spec, tmp_path / "out", threads=1, progress=False, report=False)
    table = read_results(tmp_path / "out")
    final = table[table["final"]].set_index("model")
    assert set(final.index) == {"ldm", "ldm3d"} and (final["status"] == "complete").all()
    assert final.loc["ldm3d", "images"] == "volumes" and final.loc["ldm", "images"] == "slices"
    assert 0 <= final.loc["ldm3d", "slice_pixel_synthetic_copy_fraction"] <= 1
    per_image = read_per_image(tmp_path / "out")
    three = per_image[per_image["model"] == "ldm3d"]
    assert (three["view"] == "volumes").sum() == 3 and (three["view"] == "slices").sum() > 3
    two = per_image[per_image["model"] == "ldm"]
    assert (two["slice_copy"] == two["copy"]).all() and len(two) == 3
    assert report.failed.empty
    from workbench.runs.findings import evaluate_findings

    (finding,) = evaluate_findings(tmp_path / "out", n=200)
    assert finding["value"] == "slice_copy" and finding["a_runs"] == finding["b_runs"] == 1
    assert finding["b_images"] == (three["view"] == "slices").sum() and finding["a_images"] == 3
    assert finding["verdict"] in ("reproduced", "not reproduced", "inconclusive")
