"""SliceStore: the one object that carries images through the workbench.

On disk a store is a folder::

    store/
      images.npy        float32 array (N, C, H, W) of slices, or (N, C, D, H, W) of volumes,
                        values in [0, 1], read memory-mapped
      manifest.parquet  one row per image (see MANIFEST_COLUMNS)
      store.json        channels, which of them are label maps, image size, kind ("real" /
                        "synthetic"), provenance

Slices and volumes share one type.  Everything that reads a store (the reader, views, channel
selection, the search, which sees each image as one long vector) works on ``image_shape`` =
``(C, *spatial)`` and never on H and W by name, so a volume store is the same object with one
more spatial axis: ``spatial_dims`` says which.  A volume row is one subject's volume: its
manifest row has subject, source, split and label like a slice, and leaves ``z`` / ``prev`` /
``next`` empty (those link slices of a volume; :func:`workbench.data.volumes.axial_slice_store`
cuts a volume store into a slice store that has them).

Real training data, held-out test data and synthetic samples are all SliceStores, so the
search, the analysis and the widgets never care where images came from.

A store is written by :class:`StoreWriter`, which streams blocks of images into a temporary
folder and renames it when complete, so a killed run never leaves a store that looks finished
and building a store never needs the whole array in memory.  Reading is memory-mapped.

Example
-------
>>> with StoreWriter("out/store", channels=["t1", "flair"], height=64, width=64) as w:  # doctest: +SKIP
...     w.append(block, rows)            # block: (n, 2, 64, 64) float32, rows: list of dicts
>>> store = SliceStore.open("out/store")                                                 # doctest: +SKIP
>>> train = store.where(split="train")                                                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import StoreError
from .atomic import atomic_dir
from .readahead import AheadReader, pread_rows, row_runs
from .temporaries import ELSEWHERE, IN_USE, find_temporaries, remove_path

FORMAT_VERSION = 1
#: what a store holds: images of patients ("real") or images a model made ("synthetic")
KINDS = ("real", "synthetic")
IMAGES = "images.npy"
MANIFEST = "manifest.parquet"
META = "store.json"

#: Columns every manifest has. ``prev`` / ``next`` are the store rows of the z-1 / z+1 slice of
#: the same subject (nullable: <NA> when that slice is not in the store).  Synthetic rows leave
#: subject / source / z / prev / next empty and fill model / run / seed instead.
MANIFEST_COLUMNS = {
    "subject": "string",
    "source": "string",
    "z": "Int64",
    "split": "string",
    "label": "Int64",
    "prev": "Int64",
    "next": "Int64",
    "model": "string",
    "run": "string",
    "seed": "Int64",
}

#: Channel names (any case) that hold label maps, e.g. BraTS's tumour segmentation ``seg``: the
#: rule for writers that do not say which channels are labels, and for stores written before
#: store.json recorded ``label_channels``.
LABEL_CHANNEL_NAMES = ("seg", "segmentation", "mask", "label")


def default_label_channels(channels: Sequence[str]) -> list[str]:
    """The channels among ``channels`` that are label maps when nobody said which: those named
    in :data:`LABEL_CHANNEL_NAMES` (the one rule; a store records its own in store.json)."""
    return [str(c) for c in channels if str(c).lower() in LABEL_CHANNEL_NAMES]


# The .npy header is written last (N is only known at the end), into a fixed 128-byte slot
# reserved at the start of the file; the image data follows it.
_HEADER_BYTES = 128


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    )
    header = buf.getvalue()
    if len(header) != _HEADER_BYTES:  # only for absurd shapes (> 10^15 images)
        raise StoreError(f"cannot write a .npy header of {len(header)} bytes for shape {shape}")
    return header


def _normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col, dtype in MANIFEST_COLUMNS.items():
        if col not in df.columns:
            df[col] = pd.Series([pd.NA] * len(df), dtype=dtype)
        else:
            df[col] = df[col].astype(dtype)
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)


class StoreWriter:
    """Stream image blocks and manifest rows into a new store; finished only on a clean exit.

    Parameters
    ----------
    path : folder to create.
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]``).
    height, width : image size.
    depth : None for a store of 2D slices ``(N, C, H, W)``; the number of axial planes for a
        store of 3D volumes ``(N, C, depth, H, W)``.
    label_channels : names of the channels that hold label maps (segmentations: resampled with
        nearest neighbours, never intensity-jittered); None: :func:`default_label_channels`.
        Written to ``store.json`` as ``label_channels``.
    kind : ``"real"`` or ``"synthetic"``.
    meta : extra provenance written into ``store.json`` (source folder, options, seed...).
    overwrite : replace an existing store at ``path``.
    """

    def __init__(self, path, *, channels: Sequence[str], height: int, width: int,
                 kind: str = "real", meta: dict | None = None, overwrite: bool = False,
                 label_channels: Sequence[str] | None = None, depth: int | None = None):
        self.path = Path(path)
        self.channels = [str(c) for c in channels]
        if not self.channels or any(not c.strip() for c in self.channels):
            raise StoreError(f"{self.path}: channel names {self.channels} must be non-empty")
        if len(set(self.channels)) != len(self.channels):
            raise StoreError(f"{self.path}: channel names {self.channels} name a channel twice")
        labels = default_label_channels(self.channels) if label_channels is None else [str(c) for c in label_channels]
        unknown = [c for c in labels if c not in self.channels]
        if unknown:
            raise StoreError(f"{self.path}: label channel(s) {unknown} are not among the channels {self.channels}")
        self.label_channels = labels
        if kind not in KINDS:
            raise StoreError(f"{self.path}: kind must be one of {KINDS}, got {kind!r}")
        self.height, self.width = int(height), int(width)
        self.depth = None if depth is None else int(depth)
        spatial = (self.height, self.width) if self.depth is None else (self.depth, self.height, self.width)
        if min(spatial) < 1:
            raise StoreError(f"{self.path}: image size {spatial} must be positive")
        #: (C, H, W) or (C, D, H, W): the shape of one image
        self.image_shape = (len(self.channels), *spatial)
        self.kind = kind
        self.meta = dict(meta or {})
        self.overwrite = overwrite
        self._rows: list[dict] = []
        self._n = 0
        self._ctx = None
        self._tmp: Path | None = None
        self._fh = None

    def __enter__(self) -> "StoreWriter":
        self._ctx = atomic_dir(self.path, overwrite=self.overwrite)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp / IMAGES, "wb")
        self._fh.write(b"\0" * _HEADER_BYTES)
        return self

    def append(self, images: np.ndarray, rows: Iterable[dict] | pd.DataFrame) -> range:
        """Append a block ``(n, C, H, W)`` (or ``(n, C, D, H, W)`` for volumes) and its ``n``
        manifest rows; returns their store rows."""
        if self._fh is None:
            raise RuntimeError("StoreWriter.append outside its `with` block")
        images = np.asarray(images, dtype="<f4")
        want = self.image_shape
        if images.ndim == len(want):
            images = images[None]
        if images.ndim != len(want) + 1 or images.shape[1:] != want:
            what = "volumes" if self.depth is not None else "slices"
            raise StoreError(f"{self.path}: block of shape {images.shape} does not match (n, {', '.join(map(str, want))}) "
                             f"of this store of {what}")
        if not np.isfinite(images).all():
            raise StoreError(f"{self.path}: block has non-finite pixels")
        rows = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        if len(rows) != len(images):
            raise StoreError(f"{self.path}: {len(images)} images but {len(rows)} manifest rows")
        self._fh.write(np.ascontiguousarray(images).tobytes())
        self._rows.extend(rows)
        start = self._n
        self._n += len(images)
        return range(start, self._n)

    def __len__(self) -> int:
        return self._n

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if self._n == 0:
                    raise StoreError(f"{self.path}: no images were written; refusing to create an empty store")
                shape = (self._n, *self.image_shape)
                self._fh.seek(0)
                self._fh.write(_npy_header(shape))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                manifest = _normalise_manifest(pd.DataFrame(self._rows))
                manifest.to_parquet(self._tmp / MANIFEST, index=False)
                meta = {
                    "format_version": FORMAT_VERSION,
                    "id": uuid.uuid4().hex,  # tells a rebuilt store from the old one (indexes check it)
                    "kind": self.kind,
                    "channels": self.channels,
                    "label_channels": self.label_channels,
                    "shape": list(shape),
                    "dtype": "float32",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **self.meta,
                }
                (self._tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self._ctx.__exit__(exc_type, exc, tb)


class SliceStore:
    """A memory-mapped image array ``(N, C, H, W)`` (slices) or ``(N, C, D, H, W)`` (volumes) plus
    its manifest, or a view of some rows.

    Open one with :meth:`SliceStore.open`; take views with :meth:`where` / :meth:`take`.
    A view keeps ``rows``: the store rows it holds, in order, so positions in the view map back
    to store rows (and to the ``prev`` / ``next`` neighbour links, which are store rows).
    A view may also pick channels by name, in another order (:meth:`with_channels`): images are
    then read with those channels only, in that order.
    """

    def __init__(self, path: Path, images: np.ndarray, manifest: pd.DataFrame, meta: dict,
                 rows: np.ndarray | None = None, channel_index: Sequence[int] | None = None):
        self.path = Path(path)
        self._images = images
        self._manifest = manifest
        self.meta = meta
        self.rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
        # None: every channel of the file, in its order; else the file's channel positions to read
        self._channel_index = None if channel_index is None else [int(c) for c in channel_index]

    # -- opening and checking ---------------------------------------------------------------
    @classmethod
    def open(cls, path) -> "SliceStore":
        """Open a store folder, checking that its files agree with each other."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"{path}: no SliceStore here (folder does not exist)")
        for name in (META, IMAGES, MANIFEST):
            if not (path / name).is_file():
                raise StoreError(f"{path}: missing {name}; the store is incomplete or was not written by the workbench")
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{path / META}: unreadable ({err})") from None
        if not isinstance(meta, dict):
            raise StoreError(f"{path / META}: holds a JSON {type(meta).__name__}, not a store description "
                             f"(an object with channels, shape and kind)")
        if meta.get("kind", "real") not in KINDS:
            raise StoreError(f"{path / META}: kind is {meta.get('kind')!r}; expected one of {KINDS}")
        channels = meta.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) and c for c in channels) \
                or len(set(channels)) != len(channels):
            raise StoreError(f"{path / META}: channels must be a list of distinct names, got {channels!r}")
        labels = meta.get("label_channels", [])
        if not isinstance(labels, list) or not all(isinstance(c, str) and c in channels for c in labels):
            raise StoreError(f"{path / META}: label_channels must be a list of names among the channels "
                             f"{channels}, got {labels!r}")
        try:
            images = np.load(path / IMAGES, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            detail = "the file is empty" if isinstance(err, EOFError) else str(err)
            raise StoreError(f"{path / IMAGES}: unreadable or truncated ({detail})") from None
        try:
            manifest = pd.read_parquet(path / MANIFEST)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise StoreError(f"{path / MANIFEST}: unreadable ({err})") from None
        if images.ndim not in (4, 5) or images.dtype != np.float32:
            raise StoreError(f"{path / IMAGES}: expected float32 (N, C, H, W) slices or (N, C, D, H, W) volumes, "
                             f"found {images.dtype} {images.shape}")
        if not images.flags.c_contiguous:  # reads go through the file row by row: C order only
            raise StoreError(f"{path / IMAGES}: stored in Fortran (column-major) order; the workbench reads images "
                             f"row by row and needs C order (rewrite it with np.save(path, np.ascontiguousarray(a)))")
        if list(images.shape) != list(meta.get("shape", [])):
            raise StoreError(f"{path}: images.npy has shape {images.shape} but store.json says {meta.get('shape')}")
        if len(manifest) != images.shape[0]:
            raise StoreError(f"{path}: manifest has {len(manifest)} rows but images.npy holds {images.shape[0]} images")
        if len(meta.get("channels", [])) != images.shape[1]:
            raise StoreError(f"{path}: store.json names channels {meta.get('channels')} but images have {images.shape[1]}")
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise StoreError(f"{path / MANIFEST}: missing columns {missing}")
        n = len(manifest)
        for col in ("prev", "next"):
            links = manifest[col].dropna()
            if len(links) and (links.min() < 0 or links.max() >= n):
                raise StoreError(f"{path / MANIFEST}: column {col!r} points outside the store (0..{n - 1})")
        return cls(path, images, manifest, meta)

    # -- basic properties --------------------------------------------------------------------
    @property
    def channels(self) -> list[str]:
        names = list(self.meta["channels"])
        return names if self._channel_index is None else [names[i] for i in self._channel_index]

    @property
    def label_channels(self) -> list[str]:
        """Names of this view's channels that hold label maps (e.g. ``["seg"]``), in channel order.

        Read from ``store.json``'s ``label_channels``; a store written before it was recorded
        gets :func:`default_label_channels` of its channels.
        """
        recorded = self.meta.get("label_channels")
        labels = default_label_channels(self.meta["channels"]) if recorded is None else list(recorded)
        return [c for c in self.channels if c in labels]

    def channel_index(self, name: str) -> int:
        """Position of the channel ``name`` in this view's images (axis 1 of what :meth:`read` returns)."""
        channels = self.channels
        if name not in channels:
            raise StoreError(f"{self.path}: has no channel {name!r}; its channels are {channels}")
        return channels.index(name)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` for slices, ``(C, D, H, W)`` for volumes (C counts this view's channels)."""
        c, *spatial = self._images.shape[1:]
        return (c if self._channel_index is None else len(self._channel_index), *spatial)

    @property
    def spatial_dims(self) -> int:
        """2 for a store of slices, 3 for a store of volumes."""
        return self._images.ndim - 2

    @property
    def is_volume(self) -> bool:
        return self.spatial_dims == 3

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "real")

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"SliceStore({str(self.path)!r}, {len(self)} images of {self.image_shape}, channels={self.channels})"

    @property
    def manifest(self) -> pd.DataFrame:
        """Manifest rows of this view; the index is the store row."""
        return self._manifest.iloc[self.rows]

    # -- reading -------------------------------------------------------------------------------
    def __getitem__(self, i) -> np.ndarray:
        """Image(s) at view position(s) ``i`` as a float32 array (copies, never the memmap)."""
        if isinstance(i, slice):
            return self.read(np.arange(len(self))[i])
        if np.ndim(i) == 0:
            return self._read_store_rows(self.rows[[int(i)]])[0]
        return self.read(i)

    def read(self, positions, out: np.ndarray | None = None) -> np.ndarray:
        """Images at view positions (an array of ints), read in store order for locality.

        Reads go through the file (``pread`` of each run of consecutive rows), not the memory
        map: pages of a memory map stay counted in the process's resident memory, so streaming a
        store larger than RAM through the map would make the process look as large as the store.

        ``out``: a C-contiguous float32 array of at least ``len(positions)`` images of the file's
        shape (every channel), reused from read to read by a caller that reads many batches
        (:meth:`reader`'s page-cache path); the images are read into its first rows and a view of
        them is returned (a copy where this view picks channels).  Rows from the page cache came at
        6 GB/s into a reused buffer against 2.5 GB/s into a fresh one, whose every page faults in
        (BENCHMARKS.md, issue 16 item 14).
        """
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        return self._read_store_rows(rows, out)

    def read_buffer(self, n: int) -> np.ndarray:
        """An array that :meth:`read` can read ``n`` images into (``out``): every channel of the file."""
        return np.empty((n, *self._images.shape[1:]), dtype=np.float32)

    def read_rows(self, store_rows) -> np.ndarray:
        """Images at store rows (e.g. from the ``prev`` / ``next`` columns)."""
        return self._read_store_rows(np.asarray(store_rows, dtype=np.int64))

    def _read_store_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        full = self._read_full_rows(rows, out)
        if self._channel_index is None:
            return full
        return np.ascontiguousarray(full[:, self._channel_index])

    def prefetch(self, positions) -> None:
        """Ask the kernel to start reading the images at view ``positions`` into the page cache
        and return at once (``posix_fadvise(WILLNEED)`` on each run of consecutive rows): a later
        :meth:`read` of them waits less.  Nothing where the store is in memory or the platform
        has no ``posix_fadvise``.  The page-cache path of :meth:`reader`, where ``O_DIRECT`` is
        refused: the advice did not keep the disk busy while the search worked (at (b) the tiles
        took 16.5-17.5 s from disk so, 5.5 s read by the O_DIRECT threads: BENCHMARKS.md, issue 16
        item 16)."""
        images = self._images
        if not hasattr(os, "posix_fadvise") or not isinstance(images, np.memmap) or images.offset is None:
            return
        rows = np.sort(self.rows[np.asarray(positions, dtype=np.int64)])
        if not len(rows):
            return
        row_bytes = int(np.prod(images.shape[1:])) * 4
        fd = os.open(images.filename, os.O_RDONLY)
        try:
            for a, b in row_runs(rows):
                os.posix_fadvise(fd, images.offset + int(rows[a]) * row_bytes, (b - a) * row_bytes,
                                 os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def reader(self, depth: int = 2, **kw):
        """An :class:`~workbench.data.readahead.AheadReader` of this view's images: ``ask`` for
        the images of the next batches, ``get`` each batch, read from disk meanwhile by a few
        threads (``O_DIRECT``; the page cache where that is refused).  ``reuse=False``: every
        batch in a fresh array that the caller may keep."""
        return AheadReader(self, depth, **kw)

    def _read_full_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        images = self._images
        shape = images.shape[1:]
        if out is None:
            out = np.empty((len(rows), *shape), dtype=np.float32)
        else:
            if (out.dtype != np.float32 or not out.flags.c_contiguous or out.ndim < 1 or len(out) < len(rows)
                    or (len(out) and out[0].size != int(np.prod(shape)))):
                raise ValueError(f"out: expected a C-contiguous float32 array of at least {len(rows)} images of "
                                 f"{int(np.prod(shape))} values, got {out.dtype} {out.shape}")
            out = out[:len(rows)].reshape(len(rows), *shape)
        if not len(rows):
            return out
        if not isinstance(images, np.memmap) or images.offset is None:
            out[:] = images[rows]
            return out
        if rows.min() < 0 or rows.max() >= len(images):
            raise StoreError(f"{self.path}: rows out of range 0..{len(images) - 1}")
        row_bytes = int(np.prod(shape)) * 4
        pread_rows(images.filename, images.offset, row_bytes, rows, out.reshape(len(rows), -1).view(np.uint8).reshape(-1))
        return out

    def blocks(self, block_size: int, *, prefetch: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images)`` blocks of at most ``block_size`` images, streaming from disk;
        each block is a fresh array, the caller's to keep.

        With ``prefetch`` the next block is read while the caller works on the current one, so at
        most two blocks are in memory: by a few threads with ``O_DIRECT`` (:meth:`reader`; a
        streamed brute-force search of 1,000 queries against 16,000 4x128x128 rows on disk took
        11.6-12.4 s so against 16.0-18.4 s read through the page cache by a thread: BENCHMARKS.md,
        issue 16 item 16), or, where that is refused, by a background thread through the page cache
        (file reads release the GIL).
        """
        starts = range(0, len(self), block_size)
        positions = lambda a: np.arange(a, min(a + block_size, len(self)))  # noqa: E731
        read = lambda a: self.read(positions(a))  # noqa: E731
        if not prefetch or len(starts) < 2:
            for a in starts:
                yield a, read(a)
            return
        with self.reader(0, reuse=False) as reader:  # depth 0: one block in flight
            if reader.direct:
                stream = reader.stream(map(positions, starts), 1)
                for a in starts:
                    block = next(stream)
                    yield a, block
                    del block
                return
        with ThreadPoolExecutor(1, thread_name_prefix="store-prefetch") as pool:
            nxt = pool.submit(read, starts[0])
            for i, a in enumerate(starts):
                block = nxt.result()
                nxt = pool.submit(read, starts[i + 1]) if i + 1 < len(starts) else None
                yield a, block
                del block

    # -- views ---------------------------------------------------------------------------------
    def take(self, positions) -> "SliceStore":
        """A view of the images at the given view positions."""
        return SliceStore(self.path, self._images, self._manifest, self.meta,
                          self.rows[np.asarray(positions, dtype=np.int64)], self._channel_index)

    def all_rows(self) -> "SliceStore":
        """The view of every row of the store (with this view's channels), e.g. to read neighbours."""
        return SliceStore(self.path, self._images, self._manifest, self.meta, None, self._channel_index)

    def with_channels(self, names: Sequence[str]) -> "SliceStore":
        """A view that reads only the named channels, in the order given.

        >>> store.with_channels(["flair", "t1"]).channels       # doctest: +SKIP
        ['flair', 't1']
        """
        names = [names] if isinstance(names, str) else list(names)
        have = self.channels
        missing = [c for c in names if c not in have]
        if missing or not names or len(set(names)) != len(names):
            why = f"has no channel(s) {missing}" if missing else f"cannot select channels {names}"
            raise StoreError(f"{self.path}: {why}; its channels are {have}")
        base = list(range(len(self.meta["channels"]))) if self._channel_index is None else self._channel_index
        index = [base[have.index(c)] for c in names]
        return SliceStore(self.path, self._images, self._manifest, self.meta, self.rows,
                          None if index == list(range(self._images.shape[1])) else index)

    def where(self, **conditions) -> "SliceStore":
        """A view of the rows whose manifest columns equal the given values, e.g. ``where(split="train")``."""
        keep = np.ones(len(self), dtype=bool)
        m = self.manifest
        for col, value in conditions.items():
            if col not in m.columns:
                raise StoreError(f"{self.path}: manifest has no column {col!r}")
            if isinstance(value, (list, tuple, set, np.ndarray)):
                keep &= m[col].isin(list(value)).to_numpy(dtype=bool)
            else:
                keep &= (m[col] == value).fillna(False).to_numpy(dtype=bool)
        return self.take(np.flatnonzero(keep))

    def neighbours(self, position: int) -> tuple[int | None, int | None]:
        """Store rows of the z-1 and z+1 slices of the image at view ``position`` (None if absent)."""
        row = self._manifest.iloc[self.rows[int(position)]]
        return tuple(None if pd.isna(row[c]) else int(row[c]) for c in ("prev", "next"))

    def to_array(self) -> np.ndarray:
        """All images of this view in memory (only for small stores)."""
        return self.read(np.arange(len(self)))


def open_store(path) -> SliceStore:
    """Open a SliceStore folder (see :class:`SliceStore`)."""
    return SliceStore.open(path)


def align_channels(store, reference, *, what: str = "images"):
    """``store`` with its channels in ``reference``'s order, matched by name, never by position.

    Two stores prepared with ``--channels flair,t1`` and ``--channels t1,flair`` hold the same
    contrasts in another order; pairing them by position would correlate flair with t1 and
    under-report copies.  So a store whose channels are the reference's in another order is
    read reordered, and one with other channels is refused.  Arrays carry no names: they are
    returned as they are (their channels are taken to be in the reference's order).

    >>> synthetic = align_channels(synthetic, train)      # doctest: +SKIP
    """
    if not isinstance(store, SliceStore) or not isinstance(reference, SliceStore):
        return store
    mine, theirs = store.channels, reference.channels
    if mine == theirs:
        return store
    if sorted(mine) != sorted(theirs):
        missing, extra = [c for c in theirs if c not in mine], [c for c in mine if c not in theirs]
        detail = "; ".join(p for p in (f"missing {missing}" if missing else "",
                                       f"not in the reference: {extra}" if extra else "") if p)
        raise StoreError(f"{store.path}: {what} have channels {mine} but {reference.path} has {theirs} ({detail}); "
                         f"channels are matched by name, so both must hold the same contrasts")
    return store.with_channels(theirs)


def delete_store(path, *, force: bool = False, dry_run: bool = False) -> list[Path]:
    """Delete a store and every temporary its killed writes left (they may hold patient pixels).

    Deleting only the store folder would leave ``.store.tmp-*`` folders of killed ``prepare`` or
    ``--overwrite`` runs beside it, with raw images.  This removes those too.  A temporary that a
    running process is writing makes it refuse (stop that process first); one written on another
    machine needs ``force``.  Returns the paths deleted (or that would be, with ``dry_run``).

    >>> delete_store("runs/old/store")          # doctest: +SKIP
    """
    path = Path(path)
    temporaries = find_temporaries(path)
    if path.exists():
        if not path.is_dir() or not any((path / name).exists() for name in (META, IMAGES, MANIFEST)):
            raise StoreError(f"{path}: not a SliceStore (no {META}, {IMAGES} or {MANIFEST}); refusing to delete it")
    elif not temporaries:
        raise StoreError(f"{path}: no SliceStore here and no temporaries of one beside it; nothing to delete")
    busy = [t for t in temporaries if t.state == IN_USE]
    if busy:
        raise StoreError(f"{path}: process {busy[0].pid} is writing {busy[0].path.name} now; stop it first "
                         f"(nothing was deleted)")
    elsewhere = [t for t in temporaries if t.state == ELSEWHERE]
    if elsewhere and not force:
        raise StoreError(f"{path}: {elsewhere[0].path.name} was written on another machine, which may still be "
                         f"writing it; check, then delete with force (nothing was deleted)")
    # temporaries inside the store go with it; those beside it are removed one by one
    doomed = [t.path for t in temporaries if path not in t.path.parents] + ([path] if path.exists() else [])
    if not dry_run:
        for p in doomed:
            remove_path(p)
    return doomed
