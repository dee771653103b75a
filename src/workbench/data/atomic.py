"""Write outputs under a temporary name and rename them when complete.

A killed run must never leave a file or folder that looks finished, and replacing an output
(``overwrite``) must keep the old one until the new one is complete, so every writer in the
workbench goes through these context managers.  Temporary names say which process on which
machine writes them (:mod:`workbench.data.temporaries`), so ``workbench clean`` can find what
killed runs left behind; every writer warns when the folder it writes into holds such leftovers.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

from ..errors import option_hint
from .temporaries import remove_path, temporary_name, warn_if_stale


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported.

    With it, a replaced output is never missing, not even for the instant between two renames.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return done


def replace_path(new: Path, path: Path) -> None:
    """Put the complete ``new`` (a file or folder) at ``path``, replacing what is there, then delete the old."""
    new, path = Path(new), Path(path)
    if not path.exists() and not path.is_symlink():
        os.replace(new, path)
        return
    if path.is_dir() != new.is_dir():
        what = "a folder" if path.is_dir() else "a file"
        raise IsADirectoryError(f"{path}: is {what}; cannot replace it with {'a folder' if new.is_dir() else 'a file'}")
    if not new.is_dir():
        os.replace(new, path)  # atomic for files
        return
    if _exchange(new, path):
        remove_path(new)  # `new` now holds the old output
        return
    old = temporary_name(path)  # fallback: two renames (the old output is missing for an instant)
    os.replace(path, old)
    os.replace(new, path)
    remove_path(old)


@contextlib.contextmanager
def atomic_dir(path, *, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was; with
    ``overwrite`` the old ``path`` stays in place until the new one is complete.

    >>> with atomic_dir("out/store") as tmp:   # doctest: +SKIP
    ...     (tmp / "images.npy").write_bytes(b"...")
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass {option_hint('overwrite')} to replace it)")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: is a file, not a folder; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    warn_if_stale(path.parent)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_path(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary file path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    warn_if_stale(path.parent)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
