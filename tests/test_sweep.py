"""Sweeps: a spec checked before any run, runs through papermill on Dask, resumable, collected.

The runs are tiny (16x16 phantom slices, 4 training steps, 6 samples) so that a 2x2 sweep takes
about two minutes on 2 cores; what is tested is the orchestration, not the models.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.data import layout
from workbench.errors import WorkbenchError
from workbench.memorization.compare import bootstrap_difference, compare_settings, verdict
from workbench.runs.checkpoints import analyze_checkpoints
from workbench.runs.collect import collect, per_image_table
from workbench.runs.spec import SpecError, load_spec
from workbench.runs.sweep import SweepLocked, run_status, sweep

BASE = {
    "phantom_subjects": 4, "n_test": 1, "size": 16,
    "train.steps": 4, "train.batch_size": 4, "checkpoint_every": 2, "keep_checkpoints": None,
    "n": 6, "sample.steps": 3, "detector": None, "bootstrap": 20,
}
VALUES = ["synthetic_max_r_median", "test_max_r_median", "pixel_threshold", "pixel_synthetic_copy_fraction", "c_t"]


def tiny_spec(**extra) -> dict:
    return {"name": "tiny", "base": dict(BASE), "vary": {"model": ["ddpm", "gan"], "max_images": [5, 6]}, **extra}


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


FINDINGS = [
    {"title": "diffusion against GAN", "value": "copy", "parameter": "model", "a": "ddpm", "b": "gan",
     "expect": "greater", "where": {"max_images": 5}},
    {"title": "more images", "value": "max_r", "parameter": "max_images", "a": 6, "b": 5, "expect": "less",
     "where": {"model": "ddpm"}},
]


@pytest.fixture(scope="module")
def dask_sweep(tmp_path_factory):
    """The 2x2 sweep on a Dask LocalCluster of 2 worker processes, with the findings notebook at the end."""
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root, tiny_spec(findings=FINDINGS, report=["07_compare_runs", "08_findings"],
                                      evaluate={"utility_steps": 5}))
    report = sweep(spec, root / "A", workers=2, threads=1, progress=False)
    return report


def test_a_2x2_sweep_on_a_dask_local_cluster_collects_into_four_rows(dask_sweep):
    report = dask_sweep
    assert list(report.runs["status"]) == ["complete"] * 4, report.runs
    table = pd.read_parquet(report.folder / "results.parquet")
    assert len(table) == 4 and table["final"].all()
    assert len(pd.read_csv(report.folder / "results.csv")) == 4
    assert sorted(zip(table["model"], table["max_images"])) == [("ddpm", 5), ("ddpm", 6), ("gan", 5), ("gan", 6)]
    for column in [v for v in VALUES if v != "c_t"] + [  # C_T needs more images than these runs make
            "pixel_synthetic_copy_fraction_low", "pixel_synthetic_copy_fraction_high", "train_seconds", "steps_done",
            "n_train"]:
        assert table[column].notna().all(), column
    assert list(table["steps_done"]) == [4] * 4 and sorted(table["n_train"]) == [5, 5, 6, 6]
    # every run: its own folder with its notebooks and its parameters in run.json
    for run_id in table["run"]:
        folder = report.folder / "runs" / run_id
        record = json.loads((folder / "run.json").read_text())
        assert record["sweep"]["status"] == "complete" and record["sweep"]["id"] == run_id
        assert set(record["stages"]) >= {"02_train", "03_sample", "analyze", "04_memorization"}
        assert record["stages"]["02_train"]["parameters"]["max_images"] in (5, 6)
        assert (folder / "04_memorization.html").is_file()
    # one prepared store shared by the four runs
    assert len(list((report.folder / "data").iterdir())) == 1
    per_image = pd.read_parquet(report.folder / layout.PER_IMAGE)
    assert len(per_image) == 4 * 6 and set(per_image["copy"]) <= {0.0, 1.0}
    # the spec's `evaluate` ends every run with its privacy-against-utility report, collected with the rest
    for run_id in table["run"]:
        assert (report.folder / "runs" / run_id / layout.REPORT_JSON).is_file()
    assert table["pixel_dcr_median"].notna().all()
    ddpm, gan = table[table["model"] == "ddpm"], table[table["model"] == "gan"]
    assert ddpm["membership_auroc_loss"].notna().all() and gan["membership_auroc_discriminator"].notna().all()


def test_the_report_notebooks_run_at_the_end_and_record_a_verdict_per_finding(dask_sweep):
    import scrapbook as sb

    notebook = dask_sweep.folder / "08_findings.ipynb"
    assert notebook.is_file() and (dask_sweep.folder / "08_findings.html").is_file()
    assert (dask_sweep.folder / "07_compare_runs.html").is_file()
    scraps = sb.read_notebook(str(notebook)).scraps.data_dict
    assert scraps["finding_1_verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert scraps["finding_2_verdict"] in ("reproduced", "not reproduced", "inconclusive")


def test_the_same_sweep_killed_after_its_first_run_and_rerun_ends_with_the_same_table(dask_sweep, tmp_path):
    spec = write_spec(tmp_path, tiny_spec())
    out = tmp_path / "B"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "sweep", str(spec), "--out", str(out), "--threads",
                             "1", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    first = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and first is None:
            for folder in sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []:
                if run_status(folder) == "complete":
                    first = folder
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        assert first is not None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the kernel it runs
        proc.wait()
    done = {p.name for p in (out / "runs").glob("*") if run_status(p) == "complete"}
    assert done == {first.name}
    stamps = {p: p.stat().st_mtime_ns for p in (first / "02_train.ipynb", first / "model" / "training.json",
                                                 first / layout.MEMORIZATION)}
    report = sweep(spec, out, threads=1, progress=False)
    statuses = dict(zip(report.runs["id"], report.runs["status"]))
    assert statuses.pop(first.name) == "skipped" and set(statuses.values()) == {"complete"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished run was not run again
    a = pd.read_parquet(dask_sweep.folder / "results.parquet").set_index("run").sort_index()
    b = pd.read_parquet(out / "results.parquet").set_index("run").sort_index()
    assert list(a.index) == list(b.index)  # stable ids: same parameters, same run folders
    for column in VALUES:
        np.testing.assert_allclose(b[column].to_numpy(float), a[column].to_numpy(float), rtol=1e-6, err_msg=column)

    # memorization against training steps, from the same training: the kept checkpoint (step 2)
    # is sampled and analysed like the final model, and collect and compare see both
    ddpm = next(r for r in b.index if r.startswith("model=ddpm,max_images=5"))
    by_step = analyze_checkpoints(out / "runs" / ddpm, progress=False)
    assert list(by_step["checkpoint_step"]) == [2, 4]
    assert (out / "runs" / ddpm / "steps" / "step-0000002" / layout.MEMORIZATION).is_file()
    again = analyze_checkpoints(out / "runs" / ddpm, progress=False)  # already analysed: read, not redone
    pd.testing.assert_frame_equal(by_step, again)
    table = collect(out, progress=False)
    assert len(table) == 5 and sorted(table.loc[table["run"] == ddpm, "checkpoint_step"]) == [2, 4]
    result = compare_settings(per_image_table(out), value="max_r", parameter="checkpoint_step", a="last", b="first",
                              where={"model": "ddpm", "max_images": 5}, n=50)
    assert (result["a"], result["b"], result["a_runs"]) == (4, 2, 1)


def test_a_failed_run_is_recorded_with_its_notebook_and_the_others_complete(tmp_path, capsys):
    from workbench.cli import main

    spec = write_spec(tmp_path, {"name": "fails", "base": dict(BASE), "runs": [{"max_images": 4}, {"max_images": 6}]})
    code = main(["sweep", str(spec), "--out", str(tmp_path / "C"), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "1 run(s) failed (the others completed)" in err and "max_images=4" in err
    table = pd.read_csv(tmp_path / "C" / "results.csv")
    assert dict(zip(table["max_images"], table["status"])) == {4: "failed", 6: "complete"}
    failed = tmp_path / "C" / "runs" / table.loc[table["status"] == "failed", "run"].item()
    record = json.loads((failed / "run.json").read_text())["sweep"]
    assert record["status"] == "failed" and record["stage"] == "04_memorization"
    assert "at least 5 are needed" in record["error"]
    assert Path(record["notebook"]).name == "04_memorization.FAILED.ipynb" and Path(record["notebook"]).is_file()
    assert not (failed / layout.MEMORIZATION).exists()


# -- bad specs: refused before any run starts ----------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"vary": {"max_imgs": [4, 8]}}, r"line 1\d \(vary\.max_imgs\): unknown parameter 'max_imgs' \(did you mean "
                                     r"'max_images'\?\)"),
    ({"vary": {"max_images": ["eight"]}}, r"\(vary\.max_images\[0\]\): parameter 'max_images' .*not the string "
                                          r"'eight'"),
    ({"vary": {"max_images": []}}, r"\(vary\.max_images\): vary\.max_images is an empty list, so the grid is empty"),
    ({"vary": {"model": ["ddpm", "vae"]}}, r"\(vary\.model\[1\]\): unknown model family 'vae'"),
    ({"vary": {"model": ["detector"]}}, r"model 'detector' is not a generative model family"),
    ({"vary": {"steps": [4, 8]}}, r"'steps' is a parameter of 02_train and 03_sample: write train\.steps or "
                                  r"sample\.steps"),
    ({"vary": {"out": ["x"]}}, r"train\.out and sample\.out are set by the sweep"),
    ({"vary": {"augment": ["mirror"]}}, r"\(vary\.augment\[0\]\): augment: unknown transform"),
    ({"runs": []}, r"runs is an empty list"),
    ({"grid": {}}, r"unknown key 'grid'"),
    ({"name": ""}, r"needs a name"),
])
def test_a_bad_spec_is_refused_naming_its_line_and_key(tmp_path, change, message):
    spec = {**tiny_spec(), **change}
    path = write_spec(tmp_path, spec)
    with pytest.raises(SpecError, match=message):
        load_spec(path)
    with pytest.raises(SpecError):
        sweep(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nvary:\n  model: [ddpm, gan\n  seed: [0]\n")
    with pytest.raises(SpecError, match=r"bad\.yaml line \d+, column \d+: malformed YAML"):
        load_spec(path)


def test_a_second_sweep_into_the_same_folder_refuses_naming_the_lock(tmp_path):
    from filelock import FileLock

    path = write_spec(tmp_path, tiny_spec())
    (tmp_path / "out").mkdir()
    with FileLock(str(tmp_path / "out" / layout.SWEEP_LOCK)):  # as a running sweep holds it
        with pytest.raises(SweepLocked, match=r"\.sweep\.lock: another sweep is writing into"):
            sweep(path, tmp_path / "out", progress=False)
    proc = subprocess.run([sys.executable, "-c", f"""
from filelock import FileLock
import subprocess, sys
with FileLock({str(tmp_path / 'out' / layout.SWEEP_LOCK)!r}):
    r = subprocess.run([sys.executable, '-m', 'workbench', 'sweep', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}],
                       capture_output=True, text=True)
    print(r.returncode); print(r.stderr)
"""], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("2") and "another sweep is writing into" in proc.stdout


def test_run_ids_are_stable_and_change_with_the_parameters():
    a = [p.id for p in load_spec(tiny_spec()).plans()]
    assert a == [p.id for p in load_spec(tiny_spec()).plans()]
    assert a[0].startswith("model=ddpm,max_images=5-")
    changed = tiny_spec()
    changed["base"]["train.steps"] = 5
    assert not set(a) & {p.id for p in load_spec(changed).plans()}


def test_runs_cross_the_grid_and_names_spread_over_the_stages():
    spec = load_spec({"name": "x", "base": {"seed": 3, "sample.steps": 7}, "runs": [{"model": "ddpm"},
                                                                                     {"model": "gan"}],
                      "vary": {"max_images": [5, 6]}})
    plans = spec.plans()
    assert len(plans) == 4 and spec.varied_names == ["model", "max_images"]
    stages = plans[0].stages
    assert stages["train"]["seed"] == stages["sample"]["seed"] == stages["analyze"]["seed"] == 3
    assert stages["sample"]["steps"] == 7 and "steps" not in stages["train"]


# -- the test of a difference ------------------------------------------------------------------------------
def test_the_bootstrap_matches_a_direct_two_level_resampling():
    rng = np.random.default_rng(1)
    a = [rng.random(40) < p for p in (0.8, 0.7, 0.9)]
    b = [rng.random(40) < p for p in (0.3, 0.5)]
    out = bootstrap_difference([x.astype(float) for x in a], [x.astype(float) for x in b], n=4000, seed=0)
    assert out["difference"] == pytest.approx(np.mean([x.mean() for x in a]) - np.mean([x.mean() for x in b]))
    # the reference: resample seeds, then images in each, written out directly
    ref_rng = np.random.default_rng(0)
    draws = []
    for _ in range(4000):
        ma = np.mean([a[i][ref_rng.integers(0, 40, 40)].mean() for i in ref_rng.integers(0, 3, 3)])
        mb = np.mean([b[i][ref_rng.integers(0, 40, 40)].mean() for i in ref_rng.integers(0, 2, 2)])
        draws.append(ma - mb)
    low, high = np.quantile(draws, [0.025, 0.975])
    assert out["low"] == pytest.approx(low, abs=1e-12) and out["high"] == pytest.approx(high, abs=1e-12)
    assert out["low"] > 0


def test_seeds_widen_the_interval_beyond_what_images_alone_say():
    rng = np.random.default_rng(0)
    # each seed's model copies a different share: the spread between seeds is the noise
    a = [(rng.random(200) < p).astype(float) for p in (0.2, 0.8)]
    b = [(rng.random(200) < p).astype(float) for p in (0.3, 0.7)]
    two_level = bootstrap_difference(a, b, n=2000, seed=0)
    images_only = bootstrap_difference([np.concatenate(a)], [np.concatenate(b)], n=2000, seed=0)
    assert two_level["high"] - two_level["low"] > 2 * (images_only["high"] - images_only["low"])


@pytest.mark.parametrize("low, high, expect, margin, wanted", [
    (0.1, 0.3, "greater", 0.05, "reproduced"),
    (-0.3, -0.1, "less", 0.05, "reproduced"),
    (-0.3, -0.1, "greater", 0.05, "not reproduced"),
    (-0.02, 0.03, "greater", 0.05, "not reproduced"),
    (-0.1, 0.3, "greater", 0.05, "inconclusive"),
    (0.0, 0.0, "greater", 0.05, "not reproduced"),
])
def test_verdicts(low, high, expect, margin, wanted):
    assert verdict({"low": low, "high": high}, expect=expect, margin=margin) == wanted


def test_a_comparison_without_runs_on_one_side_says_so():
    table = pd.DataFrame({"run": ["r1"] * 3, "model": ["ddpm"] * 3, "final": [True] * 3, "copy": [1.0, 0.0, 1.0]})
    with pytest.raises(WorkbenchError, match="no complete run has model = 'gan'"):
        compare_settings(table, value="copy", parameter="model", a="ddpm", b="gan")
