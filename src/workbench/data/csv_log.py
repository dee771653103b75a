"""CSV logs written a row at a time as people work: reviewers' marks, reader-study answers.

A row is appended the moment a person gives it (flushed and fsynced, so it survives a closed
tab or a killed kernel), and several processes may write one log at the same instant: two
reviewers marking one run, or one reader in two browser tabs (two kernels).  So every write
holds an exclusive lock shared between processes:

* :func:`append_row` takes the lock, runs an optional ``check`` (for "was this item answered
  already?": it reads the file as it is on disk at that moment), writes the header only when
  the file is empty, then the row, and syncs, all before it lets go; no row is lost, the
  header is written once and a check-then-append cannot be interleaved with another writer's.
* :func:`read_complete` reads the log under the same lock, so it never sees half a row.

The lock: ``filelock`` on a hidden sidecar file (``.marks.csv.lock`` beside ``marks.csv``),
rather than ``fcntl.flock`` on the CSV itself.  Why:

* Windows: ``fcntl`` does not exist there; ``filelock`` uses ``msvcrt.locking`` on Windows and
  ``fcntl.flock`` elsewhere, and it is a well-kept library already installed (torch needs it).
* A killed kernel leaves no stale lock: both are operating-system locks, dropped with the
  process (unlike a lock *marker* file).  The price is the empty sidecar file that stays in the
  folder; it is hidden and must stay: deleting a lock file on release lets a waiter hold a lock
  on the deleted file while a newcomer locks a new one.  (Where ``flock`` is not implemented,
  ``filelock`` falls back to a marker file; a stale one then gives a clear "busy" error naming it.)
* NFS: ``fcntl.flock`` on the CSV would behave the same, since ``filelock`` uses it too: the
  Linux NFS client maps ``flock`` onto the server's byte-range locks, which work across machines
  where the server's lock service runs (not on ``nolock`` / ``local_lock`` mounts).  The CSV is
  opened after the lock is taken and closed (synced) before it is released, so NFS close-to-open
  consistency lets every writer see the rows of the one before.
* A reader who cannot make or open the lock file (a shared run folder they may only read) still
  reads: :func:`read_complete` then reads without the lock, and a row being written at that
  moment is left out like a cut-off one (below).

A writer killed in the middle of a row leaves a last line without its line end.  Such a row
was never reported as saved, so :func:`read_complete` leaves it out (with a warning naming the
file) and the next :func:`append_row` cuts it off before it writes: one lost click, not a log
that is refused from then on.  A file whose first line is not the header is never written to.

>>> append_row("runs/demo/marks.csv", ["synthetic", "verdict"], {"synthetic": 3, "verdict": "copy"})  # doctest: +SKIP
>>> pd.read_csv(io.BytesIO(read_complete("runs/demo/marks.csv", ["synthetic", "verdict"])))         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import WorkbenchError

LOCK_TIMEOUT = 30.0  # seconds; a write holds the lock for milliseconds
_POLL = 0.005


def lock_path(path) -> Path:
    """The sidecar lock file of log ``path``: ``<folder>/.<name>.lock``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path, *, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive lock of log ``path`` (shared between processes) for the block.

    Reentrant in one thread: a check run under :func:`append_row` may call :func:`read_complete`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one instance per lock file and thread, so a nested acquire counts up instead of waiting on itself
    lock = FileLock(lock_path(path), is_singleton=True, poll_interval=_POLL)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise WorkbenchError(f"{path}: busy, another process has held its lock {lock_path(path).name} for over "
                             f"{timeout:g} s; try again (if no workbench is running, delete that lock file)") from None
    try:
        yield
    finally:
        lock.release()


def _encode(values: Sequence) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)  # quotes commas, quotes and line breaks; ends with "\r\n"
    return buf.getvalue().encode("utf-8")


def _complete(raw: bytes, header: bytes, path: Path, *, warn: bool) -> tuple[bytes, bool]:
    """``raw`` without a last line that was cut off, and whether it had one.

    A file holding only part of the header (a writer killed while it wrote it) counts as empty.
    A file without any line end that is not part of the header is returned as it is: it is not
    a torn write but a foreign or damaged file, for the caller to refuse.
    """
    if raw.endswith(b"\n"):
        return raw, False
    keep = raw.rfind(b"\n") + 1
    if keep == 0 and not header.startswith(raw):
        return raw, False
    if warn and raw[keep:]:
        warnings.warn(f"{path}: left out an incomplete last line {raw[keep:][:80]!r} (a write that was cut off; "
                      f"it was never saved)", RuntimeWarning, stacklevel=3)
    return raw[:keep], True


def read_complete(path, columns: Sequence[str]) -> bytes:
    """The complete lines of log ``path`` (just the header when it is empty or its header was never finished).

    Read under the log's lock where one can be taken; a last line that was cut off is left out
    with a warning.  Whether the rest is a valid log is for the caller to check, e.g. with
    ``pandas.read_csv(io.BytesIO(...))``, which also decodes it (UTF-8).
    """
    path = Path(path)
    header = _encode(columns)
    try:
        with locked(path):
            raw = path.read_bytes()
    except OSError as err:  # no lock file to be had (a folder this user may only read): read without it
        if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
            raise
        raw = path.read_bytes()
    raw, _ = _complete(raw, header, path, warn=True)
    return raw or header


def append_row(path, columns: Sequence[str], row: dict, *, check: Callable[[], None] | None = None,
               timeout: float = LOCK_TIMEOUT) -> None:
    """Append ``row`` to log ``path`` under its lock, the header first when the file is empty; flushed and fsynced.

    ``check`` runs under the lock before anything is written: it may read the log (with
    :func:`read_complete`; it is the file as it is on disk now) and raise to refuse the row, as
    "already answered" does.  No other writer can come between the check and the append.
    A last line that a killed writer left without its line end is cut off first.  A file whose
    first line is not the header raises :class:`WorkbenchError` naming it, and is left as it is.
    """
    path = Path(path)
    columns = list(columns)
    header = _encode(columns)
    line = _encode([row.get(c, "") for c in columns])
    with locked(path, timeout=timeout):
        if check is not None:
            check()
        created = not path.exists()
        with open(path, "a+b") as fh:  # opened under the lock (NFS: close-to-open), appends at the end
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(max(size - 1, 0))
                if fh.read(1) != b"\n":  # a row (or the header) cut off by a killed writer
                    fh.seek(0)
                    kept, torn = _complete(fh.read(), header, path, warn=False)
                    if torn:
                        warnings.warn(f"{path}: cut off an incomplete last line left by a write that was "
                                      f"interrupted (it was never saved)", RuntimeWarning, stacklevel=2)
                        fh.truncate(len(kept))
                        size = len(kept)
            if size:
                fh.seek(0)
                first = fh.readline()
                if first.rstrip(b"\r\n") != header.rstrip(b"\r\n"):
                    raise WorkbenchError(f"{path}: its first line {first[:80]!r} is not the header "
                                         f"{header.rstrip().decode()!r}; it is damaged or not this log, so nothing "
                                         f"was written to it (move it aside to start again)")
            fh.write(line if size else header + line)
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a new file's name in ``folder`` durable too (POSIX; Windows cannot open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
