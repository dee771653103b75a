"""A float16 or int8 copy of the reference's unit rows on disk, for the pruned search's seeds and tiles.

Why: at the BraTS scale (1,000 x 100,000 x 5x256x256, a 131 GB store) no page cache holds the
reference, so every search reads its rows from disk, and there the tiles wait on the disk: at
workload (b), k = 5, 10.5 GB of rows in 5.2-5.7 s at about 1.9 GB/s, the disk's pace, while the
products took a fraction of that (BENCHMARKS.md, issue 16 items 16-17).  A float16 copy of the
unit rows is half the bytes.  The float64 rescore still reads the store itself, so the answer is
the same.  The copy costs half the store's size on disk and one pass to write while the index is
built; it is asked for (``CorrelationIndex(row_copy=path)``), never made silently.

Rigour.  Row u = fl16(x32), x32 the float32 unit row the index computed (off the exact unit row
y by at most ``NORMALISE_F32``).  Stored per row, in float64: ``hi`` = ||u|| and ``lo`` =
NORMALISE_F32 + ||x32 - u||.  A tile multiplies the query rounded to float32 with u widened
(exactly) to float32, in float32 slices, and is off the true r by at most
lo + hi * tiles.tier_error_bound(D): the bound of the bf16 copy (``CorrelationIndex.row_error``),
with ||y - u|| <= lo.  fl16 keeps 11 bits, bf16 8: the bound is about 8x tighter than a bf16
copy's.  Entries below float16's normal range lose relative precision, not the bound: ||x32 - u||
is measured, not assumed.

An int8 copy (``fmt="int8"``) is a quarter of the store's bytes: each block of INT8_BLOCK
pixels of a row holds int8 values q and one float32 scale s (its largest |value| / 127), and the
products read the row widened to w = fl32(q * s), one IEEE product per value, which the writer
computes the same way: ``lo`` = NORMALISE_F32 + ||x32 - w|| is measured on the very values the
tiles use, so the bound is as rigorous as the float16 copy's, only wider: ||x32 - w|| is about
0.4 % of the row (against 0.02 % in float16), and more pairs reach the float64 rescore, which
reads the store.  Measured at workload (b) with the true k-th best (BENCHMARKS.md, issue 16 item
26): of the 23,139 rows the projection bound leaves at k = 5, 4,919 pass the int8 tier (3,535 the
float16 one), and a search took as long as with the float16 copy: its tiles read half the bytes
and, no longer waiting on the disk, wait on their products, while the rescore reads more rows from
the store.  So float16 stays the default, and int8 is the choice where disk space or a slow disk
counts (at the BraTS scale 33 GB against 65 GB).  A block's scale is kept only in float32's
normal range (``INT8_TINY``): else the block is stored as zeros, its values all in ``lo``, so that
no product is subnormal (a CPU that flushes subnormals to zero would widen it otherwise than the
writer did).

The file is a ``.npy`` of (N, D) float16, or of (N, B x (INT8_BLOCK + 4)) uint8 bytes for an int8
copy of B blocks a row (the B scales, then the B x INT8_BLOCK values, the last block padded with
zeros), written under a temporary name beside it
(:func:`~workbench.data.atomic.atomic_file`: ``workbench clean`` finds what a killed build left,
which holds patients' pixels) and renamed when complete.

Order.  The copy's rows are grouped by cluster of their codes (:func:`cluster_place`: k-means on
the first CLUSTER_CODES codes, clusters of about a tile), and the tiles of a search are cut from
the copy's order: a query's surviving rows are similar images, so they fall into fewer tiles, and
each tile reads its queries once for more of their pairs.  At (b), k = 5, the 135,989 tile pairs
fell from 55,962 (query, tile) combinations in store order to 11,288 (BENCHMARKS.md, issue 16
item 18).  ``RowCopy.rows`` maps each index position to its row in the copy.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import atomic_file
from ..data.readahead import AheadReader, pread_rows
from ..data.temporaries import temporary_name
from ..errors import WorkbenchError
from .bounds import NORMALISE_F32

#: rows whose norms are taken together (float64 copies of 64 rows)
CHUNK = 64
#: the formats of a row copy
FORMATS = ("float16", "int8")
#: pixels that share one scale in an int8 copy (a divisor of tiles.TIER_CHUNK, so that a tile's
#: slices are whole blocks).  Per row, ||x32 - w|| was 0.0077 (median); blocks of 256 gave 0.0044
#: and of 64 0.0040 for four times the scales' bytes (workload (b), BENCHMARKS.md issue 16 item 26)
INT8_BLOCK = 256
#: an int8 block whose largest |value| / 127 is below this is stored as zeros (module docstring)
INT8_TINY = 2.0 ** -100

#: codes the copy's clusters are found on (the first principal directions), and rows moved at a
#: time when the copy is put in cluster order
CLUSTER_CODES = 64
REORDER_ROWS = 256


def row_layout(fmt: str, dim: int) -> tuple[np.dtype, int]:
    """The numpy dtype and width of a copy's stored row of ``dim`` pixels in format ``fmt``."""
    if fmt == "float16":
        return np.dtype(np.float16), dim
    if fmt == "int8":
        return np.dtype(np.uint8), -(-dim // INT8_BLOCK) * (INT8_BLOCK + 4)
    raise WorkbenchError(f"a row copy's format is one of {FORMATS}, got {fmt!r}")


def encode(x32: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stored, wide)``: the copy's stored rows of the float32 unit rows ``x32`` (float16, or
    an int8 copy's bytes) and the float32 rows the products will read from them."""
    if fmt == "float16":
        u = x32.to(torch.float16)
        return u, u.float()
    m, dim = x32.shape
    nb = -(-dim // INT8_BLOCK)
    x = torch.zeros((m, nb * INT8_BLOCK), dtype=torch.float32)
    x[:, :dim] = x32
    x = x.view(m, nb, INT8_BLOCK)
    scale = x.abs().amax(dim=2) / 127
    scale[~(scale >= INT8_TINY)] = 0.0  # (a NaN scale too: no such row reaches a copy, but never store one)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe[:, :, None]).clamp_(-127, 127).to(torch.int8)
    q[scale == 0] = 0
    raw = torch.empty((m, nb * (INT8_BLOCK + 4)), dtype=torch.uint8)
    raw[:, :4 * nb].view(torch.float32).copy_(scale)
    raw[:, 4 * nb:].view(torch.int8).copy_(q.view(m, -1))
    return raw, Int8Rows(raw, dim).float()


class Int8Rows:
    """Rows of an int8 copy as read (their bytes, a uint8 tensor), widened to float32 by
    :meth:`widen`; ``rows[i]`` selects rows, ``.to(device)`` moves them, like a tensor's."""

    dtype = torch.int8

    def __init__(self, raw: torch.Tensor, dim: int):
        self.raw, self.dim, self.blocks = raw, dim, -(-dim // INT8_BLOCK)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.raw), self.dim)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, rows) -> "Int8Rows":
        return Int8Rows(self.raw[rows], self.dim)

    def to(self, device) -> "Int8Rows":
        return Int8Rows(self.raw.to(device), self.dim)

    def float(self) -> torch.Tensor:
        return self.widen(0, self.dim)

    def widen(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Columns ``start:stop`` as float32, fl32(q * s) value by value (into ``out`` where given)."""
        m, nb, b = len(self.raw), self.blocks, INT8_BLOCK
        b0, b1 = start // b, -(-stop // b)
        q = self.raw[:, 4 * nb + b0 * b:4 * nb + b1 * b].view(torch.int8).view(m, b1 - b0, b)
        scale = self.raw[:, :4 * nb].view(torch.float32)[:, b0:b1, None]
        whole = start == b0 * b and stop == b1 * b and out is not None
        w = out.view(m, b1 - b0, b) if whole else torch.empty((m, b1 - b0, b), dtype=torch.float32,
                                                              device=self.raw.device)
        w.copy_(q)  # int8 to float32, exact
        w.mul_(scale)  # one IEEE product a value: the writer's (encode)
        if whole:
            return out
        w = w.view(m, -1)[:, start - b0 * b:stop - b0 * b]
        return w if out is None else out.copy_(w)


def widen(rows, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Columns ``start:stop`` of a tile's rows as float32: float32 or float16 rows (a float16
    copy's, widened exactly) or an int8 copy's (:class:`Int8Rows`); into ``out`` where given."""
    if isinstance(rows, Int8Rows):
        return rows.widen(start, stop, out)
    part = rows[:, start:stop]
    return part.float() if out is None else out.copy_(part)


def cluster_place(codes: torch.Tensor, rows_per_cluster: int, seed: int = 0) -> np.ndarray:
    """Each row's place in the copy (a permutation of ``range(len(codes))``): rows grouped by their
    k-means cluster (scikit-learn, seeded) on the first CLUSTER_CODES ``codes``, clusters of about
    ``rows_per_cluster`` rows, in store order within each cluster."""
    from sklearn.cluster import KMeans

    n = len(codes)
    n_clusters = max(1, min(n, round(n / max(1, rows_per_cluster))))
    if n_clusters == 1:
        return np.arange(n)
    x = codes[:, :CLUSTER_CODES].double().numpy()
    labels = KMeans(n_clusters, n_init=1, max_iter=20, random_state=seed).fit_predict(x)
    order = np.argsort(labels, kind="stable")  # the copy's rows, as index positions
    place = np.empty(n, dtype=np.int64)
    place[order] = np.arange(n)
    return place


def check_place(place: np.ndarray, n: int, where) -> np.ndarray:
    """``place`` as int64 if it is a permutation of ``range(n)``, else a WorkbenchError naming ``where``."""
    place = np.asarray(place)
    if place.shape != (n,) or place.dtype.kind not in "iu" or not np.array_equal(np.sort(place), np.arange(n)):
        raise WorkbenchError(f"{where}: not the order of a row copy of {n} rows; build the index again")
    return place.astype(np.int64)


class RowCopy:
    """An open row copy: the reading interface of a store (``_images``, ``rows``, ``path``,
    ``read``, ``read_buffer``, ``prefetch``) so that :class:`~workbench.data.readahead.AheadReader`
    reads it ahead with ``O_DIRECT`` like the store's rows; positions are the index's."""

    def __init__(self, path, n: int, dim: int, place: np.ndarray | None = None, fmt: str = "float16"):
        self.path, self.fmt, self.dim = Path(path), fmt, dim
        dtype, width = row_layout(fmt, dim)
        try:
            self._images = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise WorkbenchError(f"{self.path}: cannot open the index's {fmt} row copy ({err}); build the index "
                                 "again") from None
        if self._images.dtype != dtype or self._images.shape != (n, width):
            raise WorkbenchError(f"{self.path}: a row copy of {self._images.dtype} {self._images.shape}, the index "
                                 f"needs a {fmt} copy, {dtype} ({n}, {width}); build the index again")
        self.rows = np.arange(n) if place is None else check_place(place, n, self.path)  # index position -> copy row
        self._channel_index = None

    def __len__(self) -> int:
        return len(self._images)

    def read(self, positions, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``positions`` as stored (float16, or an int8 copy's bytes: :meth:`as_rows`), into
        ``out`` where given (a view of it): read from the
        file one run of consecutive rows at a time, not through the memmap, whose touched pages
        would count in the process's resident memory."""
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = self.read_buffer(len(positions))
        out = out[:len(positions)]
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise WorkbenchError(f"{self.path}: rows out of range 0..{len(self) - 1}")
        pread_rows(self.path, self._images.offset, self._images.shape[1] * self._images.itemsize,
                   self.rows[positions], out.reshape(-1).view(np.uint8))
        return out

    def read_buffer(self, n: int) -> np.ndarray:
        return np.empty((n, self._images.shape[1]), dtype=self._images.dtype)

    def as_rows(self, stored: np.ndarray):
        """Rows as :meth:`read` gives them, for the products: a float16 tensor, or :class:`Int8Rows`."""
        rows = torch.from_numpy(stored)
        return rows if self.fmt == "float16" else Int8Rows(rows, self.dim)

    def unit_rows(self, positions) -> torch.Tensor:
        """The float32 rows the products read for ``positions`` (widened)."""
        return widen(self.as_rows(self.read(positions)), 0, self.dim)

    def prefetch(self, positions) -> None:
        """Nothing: where ``O_DIRECT`` is refused, the reader's page-cache path reads on ``get``."""

    def reader(self, depth: int = 2) -> AheadReader:
        return AheadReader(self, depth)


class RowCopyWriter:
    """Writes a row copy block by block (:meth:`add`, in order); :meth:`finish` completes it and
    returns the per-row ``(hi, lo)`` (module docstring), by index position, and puts the rows in
    the order ``place`` where given.  A context manager: the copy appears at ``path`` only when
    finished inside the block, and a block that raises leaves nothing."""

    def __init__(self, path, n: int, dim: int, fmt: str = "float16"):
        self.path, self.fmt = Path(path), fmt
        self._dtype, self._width = row_layout(fmt, dim)
        if self.path.suffix != ".npy":
            raise WorkbenchError(f"{self.path}: the row copy is a .npy file; give a path ending in .npy")
        if self.path.exists():
            raise WorkbenchError(f"{self.path} exists: give a new path for the row copy (or remove the old one)")
        self._n, self._dim, self._next = n, dim, 0
        self.norms = np.zeros((n, 2))
        self._stack = contextlib.ExitStack()
        self._file = None

    def __enter__(self):
        self._tmp = self._stack.enter_context(atomic_file(self.path))
        # written through the file, not a memmap: a memmap's written pages count in the process's
        # resident memory (the build of (b)'s copy peaked at 11.5 GiB so)
        self._file = self._stack.enter_context(open(self._tmp, "wb"))
        self._header(self._file)
        return self

    def _header(self, f) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(self._dtype.newbyteorder("<")),
                                                 "fortran_order": False, "shape": (self._n, self._width)})

    def add(self, start: int, x32: torch.Tensor) -> None:
        """The float32 unit rows ``x32`` of positions ``start`` on (blocks in order)."""
        if start != self._next:
            raise WorkbenchError(f"{self.path}: rows {start}.. given after rows up to {self._next}: blocks must come in order")
        self._next = start + len(x32)
        # the norms in float64, CHUNK rows at a time (float64 copies of a whole block took 0.5 GB
        # more at (b)); x32 - w in float64 is exact or within 2^-53 of it, and (1 + 1e-9) covers
        # that and the float64 rounding of the sums (D u64 < 1e-10 up to D = 10^6)
        for a in range(0, len(x32), CHUNK):
            stored, wide = encode(x32[a:a + CHUNK], self.fmt)
            stored.numpy().tofile(self._file)
            lo = (x32[a:a + CHUNK].double() - wide.double()).norm(dim=1).numpy()
            self.norms[start + a:start + a + len(wide), 0] = wide.double().norm(dim=1).numpy() * (1 + 1e-9)
            self.norms[start + a:start + a + len(wide), 1] = (NORMALISE_F32 + lo) * (1 + 1e-9)

    def finish(self, place: np.ndarray | None = None) -> np.ndarray:
        if self._next != self._n:
            raise WorkbenchError(f"{self.path}: {self._next} of {self._n} rows written")
        self._file.flush()
        if place is not None:
            self._reorder(check_place(place, self._n, self.path))
        else:
            os.fsync(self._file.fileno())  # on disk before it is renamed, not written back during the first searches
        self._stack.close()  # the file closed, then renamed into place
        return self.norms

    def _reorder(self, place: np.ndarray) -> None:
        """Rewrite the rows (written in index order) into the order ``place``, REORDER_ROWS at a
        time through a second temporary file, which then takes the first one's name."""
        order = np.argsort(place)  # the index positions of the copy's rows, in the copy's order
        row_bytes = self._width * self._dtype.itemsize
        offset = self._file.tell() - self._n * row_bytes
        ordered = temporary_name(self.path)
        buf = np.empty(REORDER_ROWS * row_bytes, dtype=np.uint8)
        try:
            with open(ordered, "wb") as f:
                self._header(f)
                for a in range(0, self._n, REORDER_ROWS):
                    rows = order[a:a + REORDER_ROWS]
                    part = buf[:len(rows) * row_bytes]
                    pread_rows(self._tmp, offset, row_bytes, rows, part)
                    part.tofile(f)
                f.flush()
                os.fsync(f.fileno())
            self._file.close()  # (closing it again on leaving is harmless)
            os.replace(ordered, self._tmp)  # renamed into place by finish, as an unordered copy would be
        except BaseException:
            Path(ordered).unlink(missing_ok=True)
            raise

    def __exit__(self, *exc):
        self._stack.__exit__(*exc)  # after finish: nothing left; on an error: the temporary removed
