"""The smaller findings of issue 12: a one-line error naming the file and the problem, with the
CLI's own flag names, instead of a traceback; help with defaults; ``workbench --version``."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from workbench import __version__
from workbench.cli import main
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import StoreError


def _one_line_error(capsys, *args) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("workbench: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def copy_store(phantom_store, tmp_path):
    def make(name="s"):
        shutil.copytree(phantom_store.path, tmp_path / name)
        return tmp_path / name
    return make


def test_version_and_help_with_defaults():
    r = subprocess.run([sys.executable, "-m", "workbench", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"workbench {__version__}"
    for command, expected in ((["train"], ["--store STORE", "SliceStore folder; its train split", "(default: 1000)",
                                           "--overwrite", "the old one stays in place until the new one is complete"]),
                              (["search"], ["(default: 1)", "--overwrite"]),
                              (["data", "prepare"], ["(default: 0.15)", "--pad", "(default: t1,t1ce,t2,flair,seg)"]),
                              (["sample"], ["--checkpoint CHECKPOINT", "model folder", "(default: 64)"])):
        r = subprocess.run([sys.executable, "-m", "workbench", *command, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        text = " ".join(r.stdout.split())
        for want in expected:
            assert " ".join(want.split()) in text, (command, want)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_run_help_lists_every_notebook_and_its_parameters():
    r = subprocess.run([sys.executable, "-m", "workbench", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("01_prepare_data", "02_train", "03_sample", "04_memorization", "05_match_browser",
                 "06_reader_study"):
        assert f"{name}:" in r.stdout
    assert "min_foreground = 0.15" in r.stdout and "max_images" in r.stdout


def test_empty_channels_and_bad_labels_name_the_flag(tmp_path, capsys):
    err = _one_line_error(capsys, "data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                          "--channels", "")
    assert "--channels '': give comma-separated channel names" in err
    err = _one_line_error(capsys, "search", "--queries", str(tmp_path), "--reference", str(tmp_path),
                          "--out", str(tmp_path / "m.parquet"), "--channels", "t1,,flair")
    assert "--channels 't1,,flair'" in err
    err = _one_line_error(capsys, "sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
                          "--labels", "a")
    assert "--labels 'a': give one integer class label" in err
    assert not (tmp_path / "o").exists()


def test_a_damaged_store_is_named_in_one_line(copy_store, capsys, tmp_path):
    empty = copy_store("empty")
    (empty / "images.npy").write_bytes(b"")  # 0 bytes
    err = _one_line_error(capsys, "search", "--queries", str(empty), "--reference", str(empty), "--out",
                          str(tmp_path / "m.parquet"))
    assert f"{empty / 'images.npy'}: unreadable or truncated (the file is empty)" in err
    listed = copy_store("listed")
    (listed / "store.json").write_text("[1, 2]")
    err = _one_line_error(capsys, "search", "--queries", str(listed), "--reference", str(listed), "--out",
                          str(tmp_path / "m.parquet"))
    assert f"{listed / 'store.json'}: holds a JSON list, not a store description" in err
    fortran = copy_store("fortran")
    images = np.load(fortran / "images.npy")
    np.save(fortran / "images.npy", np.asfortranarray(images))  # same shape and dtype, column-major bytes
    with pytest.raises(StoreError, match=r"images.npy: stored in Fortran \(column-major\) order"):
        SliceStore.open(fortran)


def test_search_out_is_checked_before_searching(phantom_store, tmp_path, capsys):
    store = str(phantom_store.path)
    folder = tmp_path / "m.parquet"
    folder.mkdir()
    err = _one_line_error(capsys, "search", "--queries", store, "--reference", store, "--out", str(folder))
    assert f"--out {folder}: is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]  # no temporary file left
    out = tmp_path / "n.csv"
    out.write_text("keep me")
    err = _one_line_error(capsys, "search", "--queries", store, "--reference", store, "--out", str(out))
    assert f"{out}: already exists (pass --overwrite to replace it)" in err and out.read_text() == "keep me"
    err = _one_line_error(capsys, "search", "--queries", store, "--reference", store, "--split", "TRAIN", "--out",
                          str(tmp_path / "x.csv"))
    assert "no images in split 'TRAIN'; its splits are ['test', 'train']" in err
    assert main(["search", "--queries", store, "--reference", store, "--split", "train", "--out", str(out),
                 "--overwrite"]) == 0
    assert out.read_text().startswith("query")


def test_a_store_with_an_unknown_kind_or_bad_channels_is_refused(phantom_store, tmp_path):
    for change, message in (({"kind": "patients"}, "kind is 'patients'"),
                            ({"channels": ["t1", "t1", "t2", "flair", "seg"]}, "channels must be a list of distinct")):
        path = tmp_path / change.__repr__().replace(" ", "")[:20].strip("{}:'\"[],")
        shutil.copytree(phantom_store.path, path)
        meta = json.loads((path / "store.json").read_text())
        meta.update(change)
        (path / "store.json").write_text(json.dumps(meta))
        with pytest.raises(StoreError, match=message):
            SliceStore.open(path)
    with pytest.raises(StoreError, match="kind must be one of"):
        with StoreWriter(tmp_path / "w", channels=["t1"], height=4, width=4, kind="fake"):
            pass
