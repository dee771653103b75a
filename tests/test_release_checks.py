"""The release gate writes only synthetic images: a store of patient images given as synthetic is refused.

Found by trying it as a new user: `workbench release --synthetic STORE --reference STORE` with the
*real* store given as "synthetic" exited 0 and wrote 96 held-out patients' slices as PNG.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from workbench.cli import main
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.memorization.release import IDENTICAL_R, check_synthetic_store
from workbench.runs.release import release_gate


def _synthetic(path, images, rows=None, channels=("t1", "t1ce", "t2", "flair", "seg"), kind="synthetic"):
    rows = rows or [{"split": "synthetic", "model": "ddpm", "run": "t", "seed": i} for i in range(len(images))]
    with StoreWriter(path, channels=list(channels), height=images.shape[-2], width=images.shape[-1], kind=kind,
                     meta={"model": "ddpm"}) as w:
        w.append(images, rows)
    return SliceStore.open(path)


def test_the_real_store_given_as_synthetic_is_refused_and_nothing_is_written(phantom_store, tmp_path, capsys):
    out = tmp_path / "release"
    code = main(["release", "--synthetic", str(phantom_store.path), "--reference", str(phantom_store.path),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"workbench: error: {phantom_store.path}: store.json says kind 'real', not 'synthetic'")
    assert "nothing was released" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no folder, no temporary folder


def test_patient_rows_in_a_store_called_synthetic_are_refused(phantom_store, tmp_path):
    # a copy of the real store whose store.json was edited to say "synthetic": its rows still name patients
    forged = tmp_path / "forged"
    shutil.copytree(phantom_store.path, forged)
    meta = json.loads((forged / "store.json").read_text())
    meta.update(kind="synthetic", id="another")
    (forged / "store.json").write_text(json.dumps(meta))
    with pytest.raises(WorkbenchError, match=r"forged: \d+ of \d+ rows name a subject and \d+ a source file "
                                             r"\(e\.g\. Phantom_00\d, .*\.nii\.gz\): rows of patient images"):
        release_gate(forged, phantom_store, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_reference_store_itself_is_refused(phantom_store, tmp_path):
    syn = _synthetic(tmp_path / "syn", phantom_store.read(np.arange(3)))
    with pytest.raises(WorkbenchError, match="is the reference store"):
        check_synthetic_store(syn, syn)


def test_an_image_identical_to_a_held_out_one_is_removed_and_the_report_says_what_was_checked(phantom_store, tmp_path):
    train, test = phantom_store.where(split="train"), phantom_store.where(split="test")
    rng = np.random.default_rng(0)
    # novel-looking images (smoothed noise inside the brain) and one exact held-out slice
    base = train.read(np.arange(0, len(train), max(1, len(train) // 6)))[:6]
    novel = np.clip(base[::-1] * 0.5 + 0.5 * rng.random(base.shape, dtype=np.float32) * (base > 0), 0, 1)
    images = np.concatenate([novel, test.read([3])]).astype(np.float32)
    syn = _synthetic(tmp_path / "syn", images)
    report = release_gate(syn, phantom_store, tmp_path / "out", bootstrap=20, progress=False)
    assert report["removed_identical_to_held_out"] == 1
    kept = (tmp_path / "out" / "kept.csv").read_text()
    assert "synthetic_00006" not in kept  # the held-out slice was not released
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"store kind", "no patient identifiers", "not the reference store", "model recorded",
                           "not identical to a held-out image"}
    assert checks["store kind"]["passed"] and not checks["not identical to a held-out image"]["passed"]
    assert f">= {IDENTICAL_R}" in checks["not identical to a held-out image"]["detail"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["checks"] == report["checks"]
    assert "What was checked before release" in (tmp_path / "out" / "report.html").read_text()
