"""A store's images read ahead of use, straight from the disk, by a few threads.

Why our own reader: the pruned search reads the rows of its tiles, a few hundred images at a time,
in an order known a few tiles ahead.  Through the page cache, one 256 KB read at a time of rows
not yet cached ran at 0.45 GB/s on the disk that (`fio`) gave 1.3 GB/s to one direct read at a
time and 2.0-2.5 GB/s to four or more; and asking the kernel for the next tiles' rows
(``posix_fadvise(WILLNEED)``, :meth:`SliceStore.prefetch`) did not keep the disk busy while a
tile was multiplied: at workload (b), k = 5, the tiles took 16.5-17.5 s with their 10.5 GB on disk
against 5.3 s from the page cache.  Read with ``O_DIRECT`` by THREADS threads (each waits in the
kernel with the GIL released; the disk's DMA fills the buffer), the next tiles' rows arrive while
one is multiplied: 5.5 s from disk (BENCHMARKS.md, issue 16 item 16).  At the BraTS scale the
store (131 GB) never fits in the page cache, so every search reads from disk.

Where ``O_DIRECT`` is not at hand (another platform, a store held in memory, a file system that
refuses it), :class:`AheadReader` falls back to the page cache: ``ask`` advises the kernel and
``get`` reads, as before.
"""
from __future__ import annotations

import errno
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import StoreError

#: alignment of O_DIRECT file offsets, lengths and buffers: the page size, which every logical
#: block size of a Linux disk divides
BLOCK = 4096
#: bytes per read request: a run of consecutive rows is read in requests of this size, so that
#: one long run keeps several threads busy
CHUNK = 4 * 2**20
#: reading threads.  At workload (b) 8 threads read the tiles' rows as fast as the tiles used
#: them; `fio` on that disk: 1 / 4 / 16 requests in flight gave 1.3 / 1.8 / 2.5 GB/s
THREADS = 8


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``(a, b)``: the runs of consecutive store rows ``rows[a:b]`` (each one step above the last),
    in the order given: one file read, or one read-ahead request, per run."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return list(zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(rows)]]).tolist()))


def pread_rows(filename, offset: int, row_bytes: int, rows: np.ndarray, flat: np.ndarray) -> None:
    """Read the file's ``rows`` (each ``row_bytes`` long, from byte ``offset``) into ``flat`` (uint8,
    rows in the order given) through the page cache: one ``pread`` per run of consecutive rows, and
    again where ``pread`` returned less.  A file that ends early raises StoreError naming it."""
    fd = os.open(filename, os.O_RDONLY)
    try:
        for a, b in row_runs(rows):
            want = (b - a) * row_bytes
            pos = offset + int(rows[a]) * row_bytes
            view = memoryview(flat[a * row_bytes:b * row_bytes])
            got = 0
            while got < want:  # pread may return less than asked for
                n = os.preadv(fd, [view[got:]], pos + got)
                if n <= 0:
                    raise StoreError(f"{filename}: file ends before row {int(rows[a]) + (got // row_bytes)} "
                                     "(truncated?)")
                got += n
    finally:
        os.close(fd)


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` whose first byte sits on a BLOCK boundary."""
    raw = np.empty(nbytes + BLOCK, dtype=np.uint8)
    skip = -raw.ctypes.data % BLOCK
    return raw[skip:skip + nbytes]


class AheadReader:
    """The images of a :class:`~workbench.data.store.SliceStore` (a view: positions map to store
    rows, channels picked) read ahead into buffers of its own.  Anything with a store's reading
    interface will do (``_images``, a ``.npy`` memmap of any dtype; ``rows``, ``path``,
    ``_channel_index``, ``prefetch``, ``read``, ``read_buffer``): the search's float16 row copy
    (:class:`~workbench.search.rowcopy.RowCopy`) is read so.

    ``ask(positions)`` starts reading the images at those view positions and returns at once;
    ``get(positions)`` returns them (in the file's dtype, as :meth:`SliceStore.read` would), waiting for the
    reads of an earlier ask, or reading them now if none was made.  What ``get`` returns is a view
    of a buffer that is reused after the next ``get``, or, with ``reuse=False``, a fresh array
    that the caller may keep (the disk fills it: no copy).  Gets must come in the order of their
    asks (an ask that is never got is dropped at the next ``get`` that matches a later one).

    Memory: at most ``depth + 1`` batches in flight, and with ``reuse`` at most ``depth + 2``
    buffers in all, each as large as the largest request.  Use it as a
    context manager, or call :meth:`close`: it waits for reads in flight (a buffer must not be
    freed while a thread writes to it) and stops the threads.
    """

    def __init__(self, store, depth: int = 2, *, threads: int = THREADS, direct: bool | None = None,
                 reuse: bool = True):
        self.store = store
        self.depth = max(0, int(depth))
        self.reuse = reuse
        images = store._images
        self._shape = images.shape[1:]
        self._dtype = images.dtype
        self._row_bytes = int(np.prod(self._shape)) * images.dtype.itemsize
        self._offset = images.offset if isinstance(images, np.memmap) else None
        self._fd = None
        if direct is not False and self._offset is not None and hasattr(os, "O_DIRECT"):
            try:
                self._fd = os.open(images.filename, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                if direct:
                    raise
        self.direct = self._fd is not None
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="store-readahead") if self.direct else None
        self._local = threading.local()
        self._pending: deque = deque()  # (positions, buffer, futures), in the order asked
        self._free: list = []  # buffers not in use
        self._current = None  # the buffer the last get returned
        self._count = 0  # buffers allocated, at most depth + 2
        self._plain = None  # the one buffer of the page-cache path

    # -- the interface -------------------------------------------------------------------------
    def ask(self, positions) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return
        if not self.direct:
            self.store.prefetch(positions)
            return
        if len(self._pending) > self.depth:
            return  # read when got
        buf = self._take(len(positions) * self._row_bytes)
        if buf is None:
            return
        self._pending.append((positions, buf, self._submit(positions, buf)))

    def get(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if not self.direct:
            if not self.reuse:
                return self.store.read(positions)
            if self._plain is None or len(self._plain) < len(positions):
                self._plain = None  # the old one goes before the larger one comes
                self._plain = self.store.read_buffer(max(len(positions), 1))
            return self.store.read(positions, self._plain)
        if self._current is not None:
            self._free.append(self._current)
            self._current = None
        match = next((i for i, e in enumerate(self._pending) if np.array_equal(e[0], positions)), None)
        if match is not None:
            for _ in range(match):
                self._release(self._pending.popleft())  # asked and never got
            _, buf, futures = self._pending.popleft()
        else:  # not asked (the first tile): read now, the asks after it stay in flight
            buf = self._take(len(positions) * self._row_bytes, force=True)
            futures = self._submit(positions, buf)
        try:
            for f in futures:
                f.result()
        except BaseException:
            self._wait(futures)
            self._free.append(buf)
            raise
        if self.reuse:
            self._current = buf
        else:  # the caller's to keep
            self._count -= 1
        full = buf[:len(positions) * self._row_bytes].view(self._dtype).reshape(len(positions), *self._shape)
        channels = self.store._channel_index
        return full if channels is None else np.ascontiguousarray(full[:, channels])

    def stream(self, batches, ahead: int):
        """Each of ``batches`` (arrays of positions) got in order, the next ``ahead`` (at most
        ``depth + 1``) asked for while the caller works on one."""
        batches = list(batches)
        for b in batches[:ahead]:
            self.ask(b)
        for j, b in enumerate(batches):
            got = self.get(b)
            if j + ahead < len(batches):
                self.ask(batches[j + ahead])
            yield got
            del got  # a fresh block (reuse=False) is the caller's alone while the next one is read

    def close(self) -> None:
        while self._pending:
            self._release(self._pending.popleft())
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._free, self._current, self._plain = [], None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- buffers and reads ---------------------------------------------------------------------
    def _take(self, nbytes: int, force: bool = False):
        """A free buffer of at least ``nbytes``: reused, grown, or new while fewer than depth + 2
        exist; None where all are in use (``force``: one more)."""
        fits = [i for i, b in enumerate(self._free) if len(b) >= nbytes]  # by index: arrays do not compare
        if fits:
            return self._free.pop(min(fits, key=lambda i: len(self._free[i])))
        if self._free:  # the smallest free one goes before a larger one comes
            self._free.pop(min(range(len(self._free)), key=lambda i: len(self._free[i])))
            self._count -= 1
        elif self._count >= self.depth + 2 and not force:
            return None
        self._count += 1
        return aligned_empty(-(-nbytes // BLOCK) * BLOCK)

    def _release(self, entry) -> None:
        _, buf, futures = entry
        self._wait(futures)
        self._free.append(buf)

    @staticmethod
    def _wait(futures) -> None:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:  # noqa: BLE001  a dropped read's error is not this caller's
                    pass

    def _submit(self, positions: np.ndarray, buf: np.ndarray) -> list:
        """Read requests, one per CHUNK of each run of consecutive store rows, into ``buf``."""
        rows = self.store.rows[positions]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.store._images)):
            raise StoreError(f"{self.store.path}: rows out of range 0..{len(self.store._images) - 1}")
        rb = self._row_bytes
        futures = []
        for a, b in row_runs(rows):
            start = self._offset + int(rows[a]) * rb
            for c in range(0, (b - a) * rb, CHUNK):
                n = min(CHUNK, (b - a) * rb - c)
                futures.append(self._pool.submit(self._read, buf[a * rb + c:a * rb + c + n], start + c))
        return futures

    def _read(self, dest: np.ndarray, pos: int) -> None:
        """Fill ``dest`` from the file at byte ``pos``: an aligned read straight into it where
        offset, length and address allow, else into this thread's scratch buffer, then copied."""
        lead = pos % BLOCK
        need = lead + len(dest)
        span = -(-need // BLOCK) * BLOCK
        if lead == 0 and span == len(dest) and dest.ctypes.data % BLOCK == 0:
            target = dest
        else:
            scratch = getattr(self._local, "scratch", None)
            if scratch is None or len(scratch) < span:
                scratch = self._local.scratch = aligned_empty(max(span, CHUNK + 2 * BLOCK))
            target = scratch[:span]
        view = memoryview(target)
        got = 0
        while got < need:
            try:
                n = os.preadv(self._fd, [view[got:]], pos - lead + got)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise StoreError(f"{self.store._images.filename}: read failed at byte {pos} ({err})") from None
                n = self._read_plain(view, got, pos - lead + got, need)  # O_DIRECT refused here
            if n <= 0:
                raise StoreError(f"{self.store._images.filename}: file ends before byte {pos - lead + need} "
                                 "(truncated store?)")
            got += n
        if target is not dest:
            dest[:] = target[lead:need]

    def _read_plain(self, view, got: int, pos: int, need: int) -> int:
        """A read through the page cache where the file system refused an O_DIRECT one."""
        fd = os.open(self.store._images.filename, os.O_RDONLY)
        try:
            return os.preadv(fd, [view[got:need]], pos)
        finally:
            os.close(fd)
