"""Write outputs under a temporary name and rename them when complete.

A killed run must never leave a file or folder that looks finished, so every writer in the
workbench goes through these two context managers.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import uuid
from pathlib import Path


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_dir(path, *, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was.

    >>> with atomic_dir("out/store") as tmp:   # doctest: +SKIP
    ...     (tmp / "images.npy").write_bytes(b"...")
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _tmp_sibling(path)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary file path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def append_csv_row(path, columns, row: dict) -> None:
    """Append one row to a CSV log (header first if the file is new), flushed and fsynced.

    For logs written a row at a time as people work (reviewers' marks, reader-study answers):
    an appended, synced row survives a closed tab or a killed kernel.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())
