"""Temporary outputs: how they are named, and finding the ones killed runs left behind.

Every writer in the workbench writes under a temporary name beside its target and renames it
when complete (:mod:`workbench.data.atomic`).  A run killed mid-write (SIGKILL, a power cut, a
closed laptop) leaves that temporary behind: a hidden folder such as
``.store.tmp-4711-3fa2c1-9b0e77d1`` that may hold raw patient pixels.  Nothing looks finished,
but the pixels are still on disk, so deleting a store must not leave them there.

A temporary's name says who wrote it::

    .<stem>.tmp-<pid>-<host>-<random><suffix>       host: 6 hex digits of the machine's name

so :func:`find_temporaries` can tell a stale one (its process has ended, or the pid now belongs
to a process started after the temporary was last written) from one that a running process is
still writing, which is never touched.  A temporary written on another machine (a shared folder
of a cluster) cannot be checked from here: it is listed as such and removed only when asked
with ``force``.  Names of earlier versions (``.<stem>.tmp-<pid>-<random><suffix>``) are read as
written on this machine.

>>> for t in find_temporaries("runs/demo"):                      # doctest: +SKIP
...     print(t.path, t.state, t.size)
>>> remove_temporaries("runs/demo")                              # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

#: a running process is writing it
IN_USE = "in use"
#: its process has ended: left by a killed or crashed run
STALE = "stale"
#: written on another machine: cannot be checked from here
ELSEWHERE = "other machine"

_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<pid>\d+)-(?:(?P<host>[0-9a-f]{6})-)?(?P<tag>[0-9a-f]{8})(?P<suffix>.*)$")


def host_tag() -> str:
    """Six hex digits naming this machine in temporary names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that says which process on which machine writes it."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{host_tag()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@dataclass(frozen=True)
class Temporary:
    """A temporary output found on disk."""

    path: Path
    target: Path  # what it would have become
    pid: int
    host: str | None  # None: a name of an earlier version (taken to be this machine's)
    state: str  # IN_USE, STALE or ELSEWHERE
    size: int  # bytes, everything under it
    modified: float  # seconds since the epoch, newest write under it

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.modified)


def parse_temporary(path: Path) -> dict | None:
    """The parts of a temporary's name (``target``, ``pid``, ``host``), or None for any other name."""
    m = _NAME.match(Path(path).name)
    if not m:
        return None
    return {"target": Path(path).with_name(m["stem"] + m["suffix"]), "pid": int(m["pid"]), "host": m["host"]}


def tree_stats(path: Path) -> tuple[int, float]:
    """Bytes under ``path`` (a file or folder tree) and the time of its newest write."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0, 0.0
    size, newest = (st.st_size if not path.is_dir() else 0), st.st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    s = os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    continue
                newest = max(newest, s.st_mtime)
                if name in files:
                    size += s.st_size
    return size, newest


def _state(pid: int, host: str | None, modified: float) -> str:
    if host is not None and host != host_tag():
        return ELSEWHERE
    try:
        import psutil

        started = psutil.Process(pid).create_time()
    except Exception:  # no such process (psutil.NoSuchProcess), or no permission to look: check plainly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return STALE
        except PermissionError:
            return IN_USE
        return IN_USE
    # the pid was reused by a process that started after the temporary was last written
    return STALE if started > modified + 1.0 else IN_USE


def _describe(path: Path) -> Temporary | None:
    parts = parse_temporary(path)
    if parts is None:
        return None
    size, modified = tree_stats(path)
    return Temporary(path, parts["target"], parts["pid"], parts["host"], _state(parts["pid"], parts["host"], modified),
                     size, modified)


def find_temporaries(folder, *, recursive: bool = True) -> list[Temporary]:
    """Temporary outputs under ``folder`` (not inside other temporaries), sorted by path.

    ``folder`` may also be a store (or any output) path: the temporaries of its earlier writes
    beside it (``.<name>.tmp-*``) and everything inside it are listed.
    """
    folder = Path(folder)
    found: list[Temporary] = []
    if folder.exists() or folder.parent.is_dir():
        # beside it: temporaries that would have become `folder` itself
        for sibling in (folder.parent.iterdir() if folder.parent.is_dir() else []):
            parts = parse_temporary(sibling)
            if parts is not None and parts["target"].name == folder.name:
                found.append(_describe(sibling))
    if folder.is_dir():
        for root, dirs, files in os.walk(folder):
            for name in list(dirs) + files:
                t = _describe(Path(root) / name)
                if t is not None:
                    found.append(t)
                    if name in dirs:
                        dirs.remove(name)  # do not list what is inside a temporary
            if not recursive:
                break
    return sorted((t for t in found if t is not None), key=lambda t: str(t.path))


def remove_temporaries(folder, *, force: bool = False, recursive: bool = True) -> list[Temporary]:
    """Remove the stale temporaries under ``folder`` (also other machines' with ``force``); return them.

    A temporary that a running process on this machine is writing is never removed.
    """
    removed = []
    for t in find_temporaries(folder, recursive=recursive):
        if t.state == STALE or (force and t.state == ELSEWHERE):
            remove_path(t.path)
            removed.append(t)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree (not following links)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


class StaleTemporariesWarning(UserWarning):
    """A folder being written into holds temporary outputs that killed runs left behind."""


_warned: set[str] = set()


def warn_if_stale(folder) -> None:
    """Warn (once per folder and set of leftovers, per process) when ``folder`` holds stale temporaries.

    Called by every atomic writer before it writes into ``folder``, so a user learns about
    leftover patient pixels where they work, not only by running ``workbench clean``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    # a listing of one folder per write: cheap; only names of temporaries are looked at further
    candidates = [p for p in folder.iterdir() if p.name.startswith(".") and parse_temporary(p) is not None]
    if not candidates:
        return
    stale = [t for t in map(_describe, candidates) if t is not None and t.state == STALE]
    key = str(folder.resolve()) + "|" + "|".join(sorted(t.path.name for t in stale))
    if stale and key not in _warned:
        _warned.add(key)
        names = ", ".join(t.path.name for t in stale[:3]) + (" ..." if len(stale) > 3 else "")
        warnings.warn(StaleTemporariesWarning(
            f"{folder}: {len(stale)} temporary output(s) of killed runs ({human_size(sum(t.size for t in stale))}; they "
            f"may hold patient images): {names}; list and remove them with `workbench clean {folder} --remove`"),
            stacklevel=4)
