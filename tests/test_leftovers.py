"""Nothing is lost and nothing leaks when runs are killed.

Found: ``train --overwrite`` deleted the previous model before training (killed after a few
steps, the finished model was gone), and killed runs left hidden temporary folders with raw
patient pixels that nothing reported or removed, so deleting a store did not delete all its
patient data.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.data import delete_store, find_temporaries, remove_temporaries
from workbench.data.atomic import atomic_dir, atomic_file
from workbench.data.store import SliceStore, StoreWriter
from workbench.data.temporaries import (ELSEWHERE, IN_USE, STALE, StaleTemporariesWarning, host_tag, parse_temporary,
                                        temporary_name)
from workbench.errors import StoreError
from workbench.models.checkpoint import load_model
from workbench.train import train_model

SIZE = 16
TINY = dict(model="ddpm", block_out_channels=(8, 16), norm_num_groups=4, batch_size=2, max_images=4,
            checkpoint_every=2, progress=False)


def _store(path, n=8, seed=1, kind="real"):
    rng = np.random.default_rng(seed)
    rows = [{"subject": f"s{i // 4}", "source": "x.nii.gz", "z": i % 4, "split": "train" if i < 6 else "test"}
            for i in range(n)]
    with StoreWriter(path, channels=["t1", "flair"], height=SIZE, width=SIZE, kind=kind) as w:
        w.append(rng.random((n, 2, SIZE, SIZE)).astype(np.float32), rows)
    return SliceStore.open(path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(beside: Path, pid: int, *, host: str | None = None) -> Path:
    """What a run with ``pid`` killed while writing ``beside`` leaves: a hidden folder with images."""
    tmp = temporary_name(beside)
    name = tmp.name.replace(f"-{os.getpid()}-", f"-{pid}-")
    if host is not None:
        name = name.replace(f"-{host_tag()}-", f"-{host}-")
    tmp = tmp.with_name(name)
    tmp.mkdir(parents=True)
    (tmp / "images.npy").write_bytes(b"\x93NUMPY" + b"\0" * 4096)  # stands for raw pixels
    return tmp


def _weights(folder):
    loaded = load_model(folder)
    return {f"{m}.{k}": v.clone() for m, net in loaded.modules.items() for k, v in net.state_dict().items()}


# -- temporaries: named after their writer, found, judged, removed ---------------------------------------
def test_a_temporary_name_says_which_process_on_which_machine_writes_it(tmp_path):
    tmp = temporary_name(tmp_path / "store")
    parts = parse_temporary(tmp)
    assert parts == {"target": tmp_path / "store", "pid": os.getpid(), "host": host_tag()}
    file_tmp = temporary_name(tmp_path / "matches.parquet")
    assert file_tmp.name.endswith(".parquet") and parse_temporary(file_tmp)["target"] == tmp_path / "matches.parquet"
    # names of the previous version (no machine) are still recognised
    assert parse_temporary(tmp_path / ".store.tmp-4711-0123abcd")["pid"] == 4711
    assert parse_temporary(tmp_path / ".marks.csv.lock") is None and parse_temporary(tmp_path / "store") is None


def test_stale_in_use_and_foreign_temporaries_are_told_apart(tmp_path):
    run = tmp_path / "run"
    stale = _leftover(run / "store", _dead_pid())
    mine = _leftover(run / "synthetic", os.getpid())
    foreign = _leftover(run / "model", _dead_pid(), host="abcdef" if host_tag() != "abcdef" else "fedcba")
    nested = _leftover(run / "model" / "checkpoints" / "step-0000002", _dead_pid())
    found = {t.path: t for t in find_temporaries(run)}
    assert set(found) == {stale, mine, foreign, nested}
    assert (found[stale].state, found[mine].state, found[foreign].state, found[nested].state) == \
        (STALE, IN_USE, ELSEWHERE, STALE)
    assert found[stale].size > 4096 and found[stale].target == run / "store"
    removed = remove_temporaries(run)
    assert {t.path for t in removed} == {stale, nested}
    assert mine.exists() and foreign.exists() and not stale.exists() and not nested.exists()
    assert {t.path for t in remove_temporaries(run, force=True)} == {foreign}
    assert mine.exists()  # a running process's temporary is never removed


def test_a_reused_pid_does_not_keep_a_temporary_alive(tmp_path):
    # the pid of this process, but the temporary was last written before this process started
    tmp = _leftover(tmp_path / "store", os.getpid())
    import psutil

    old = psutil.Process().create_time() - 3600
    os.utime(tmp / "images.npy", (old, old))
    os.utime(tmp, (old, old))
    assert find_temporaries(tmp_path)[0].state == STALE


def test_writing_into_a_folder_with_leftovers_warns_once(tmp_path):
    folder = tmp_path / "w"
    stale = _leftover(folder / "store", _dead_pid())
    with pytest.warns(StaleTemporariesWarning, match=rf"{folder}: 1 temporary output\(s\) of killed runs .* may hold "
                                                     rf"patient images\): {stale.name}; .*workbench clean {folder} --remove"):
        with atomic_file(folder / "a.json") as tmp:
            tmp.write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with atomic_dir(folder / "b") as tmp:  # the same folder again: no second warning
            (tmp / "x").write_text("x")


def test_atomic_file_refuses_a_folder_and_leaves_no_temporary(tmp_path):
    (tmp_path / "out.parquet").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        with atomic_file(tmp_path / "out.parquet") as tmp:
            tmp.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "new").write_text("new")
            assert (tmp_path / "out" / "old").exists()
            raise RuntimeError("killed")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old"] and len(list(tmp_path.iterdir())) == 1
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"] and len(list(tmp_path.iterdir())) == 1


# -- the command line: workbench clean, workbench delete ---------------------------------------------------
def test_workbench_clean_lists_and_removes_the_stale_ones(tmp_path, capsys):
    run = tmp_path / "run"
    _store(run / "store")
    stale = _leftover(run / "store", _dead_pid())
    mine = _leftover(run / "synthetic", os.getpid())
    assert main(["clean", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{stale}" in out and f"stale: process {parse_temporary(stale)['pid']} has ended" in out
    assert f"in use by running process {os.getpid()}" in out and "workbench clean" in out and stale.exists()
    assert main(["clean", str(run), "--remove"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not stale.exists() and mine.exists() and (run / "store" / "images.npy").exists()


def test_deleting_a_store_deletes_the_leftovers_of_its_killed_writes(tmp_path, capsys):
    store = _store(tmp_path / "store")
    beside = _leftover(tmp_path / "store", _dead_pid())
    inside = _leftover(tmp_path / "store" / "index", _dead_pid())
    other = _store(tmp_path / "other")
    assert main(["delete", str(store.path)]) == 0  # without --yes: a list, nothing deleted
    out = capsys.readouterr().out
    assert f"would delete {beside}" in out and f"would delete {store.path}" in out and "add --yes" in out
    assert beside.exists() and store.path.exists()
    assert main(["delete", str(store.path), "--yes"]) == 0
    assert not beside.exists() and not store.path.exists() and not inside.exists()
    assert SliceStore.open(other.path)  # another store beside it is untouched
    with pytest.raises(StoreError, match="not a SliceStore"):
        (tmp_path / "notes").mkdir()
        delete_store(tmp_path / "notes")
    assert main(["delete", str(tmp_path / "gone"), "--yes"]) == 2
    assert "nothing to delete" in capsys.readouterr().err


def test_delete_refuses_while_a_process_writes_a_new_version(tmp_path):
    store = _store(tmp_path / "store")
    _leftover(tmp_path / "store", os.getpid())
    with pytest.raises(StoreError, match=f"process {os.getpid()} is writing"):
        delete_store(store.path)
    assert store.path.exists()


# -- --overwrite keeps the old output until the new one is complete -----------------------------------------
CHILD = """
import sys, time
from workbench.data.store import SliceStore
from workbench.train import train_model
store, out = sys.argv[1], sys.argv[2]
train_model(SliceStore.open(store).where(split="train"), out, model="ddpm", steps=400, batch_size=2, max_images=4,
            checkpoint_every=2, block_out_channels=(8, 16), norm_num_groups=4, overwrite=True, progress=False,
            log_every=1, callback=lambda step, loss: time.sleep(0.2))
"""


def test_a_killed_train_overwrite_leaves_the_previous_model(tmp_path, capsys):
    store = _store(tmp_path / "store")
    model = tmp_path / "model"
    train_model(store.where(split="train"), model, steps=4, seed=0, **TINY)
    before = _weights(model)
    files = sorted(str(p.relative_to(model)) for p in model.rglob("*"))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store.path), str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not any(t.path.name.startswith(".model.tmp-") and list(t.path.glob("checkpoints/step-*"))
                  for t in find_temporaries(tmp_path)):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the new run wrote no checkpoint within 120 s"
        time.sleep(0.2)
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == files  # untouched while it trains
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((model / "training.json").read_text())["steps_done"] == 4
    # the killed run's temporary is found as stale, and removed on request
    stale = [t for t in find_temporaries(tmp_path) if t.state == STALE]
    assert len(stale) == 1 and stale[0].target == model
    assert main(["clean", str(tmp_path), "--remove"]) == 0
    assert not find_temporaries(tmp_path) and "removed 1" in capsys.readouterr().out


def test_a_failed_train_overwrite_leaves_the_previous_model_and_no_temporary(tmp_path):
    store = _store(tmp_path / "store")
    model = tmp_path / "model"
    train_model(store.where(split="train"), model, steps=4, seed=0, **TINY)
    before = _weights(model)

    def fail(step, loss):
        if step == 3:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        train_model(store.where(split="train"), model, steps=6, seed=1, overwrite=True, log_every=1, callback=fail,
                    **TINY)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert find_temporaries(tmp_path) == []
    train_model(store.where(split="train"), model, steps=6, seed=1, overwrite=True, **TINY)  # and a complete one replaces it
    assert json.loads((model / "training.json").read_text())["steps_done"] == 6
    assert find_temporaries(tmp_path) == []


def test_cli_messages_name_the_flags(tmp_path, capsys):
    store = _store(tmp_path / "store")
    model = tmp_path / "model"
    model.mkdir()
    (model / "x").write_text("x")
    assert main(["train", "--store", str(store.path), "--out", str(model), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace it" in err and "overwrite=True" not in err
    with pytest.raises(FileExistsError, match=r"pass overwrite=True to replace it"):
        train_model(store.where(split="train"), model, steps=1, **{k: v for k, v in TINY.items()})


KILLED_WRITER = """
import sys, time
import numpy as np
from workbench.data.store import StoreWriter
with StoreWriter(sys.argv[1], channels=["t1"], height=16, width=16, overwrite=True) as w:
    w.append(np.random.default_rng(0).random((64, 1, 16, 16), dtype=np.float32), [{"subject": "p1", "split": "train"}] * 64)
    print("written", flush=True)
    time.sleep(60)
"""


def test_a_killed_store_write_is_found_reported_on_the_next_write_and_deleted_with_the_store(tmp_path, capsys):
    old = _store(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "store")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        running = find_temporaries(tmp_path)
        assert [(t.state, t.pid, t.target) for t in running] == [(IN_USE, proc.pid, tmp_path / "store")]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = find_temporaries(tmp_path)
    assert [t.state for t in left] == [STALE] and (left[0].path / "images.npy").stat().st_size > 32 * 16 * 16 * 4  # raw pixels on disk
    assert SliceStore.open(old.path).shape == old.shape  # the old store is still whole
    with pytest.warns(StaleTemporariesWarning, match="may hold patient images"):
        _store(tmp_path / "other")  # the next write into that folder says so
    assert main(["delete", str(tmp_path / "store"), "--yes"]) == 0
    assert find_temporaries(tmp_path) == [] and not (tmp_path / "store").exists()
    assert (tmp_path / "other").exists()
