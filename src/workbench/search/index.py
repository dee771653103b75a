"""CorrelationIndex: a reference prepared once for many searches (as FAISS builds an index once).

Preparing a reference means z-normalising every image (over the chosen channels and mask),
fitting an orthonormal basis to the reference's own principal directions and keeping, per image,
its codes in that basis with the bounds of :mod:`workbench.search.projection`, and, when it fits
in memory, a float32 (or bf16) copy of the unit vectors.  A pruned search bounds every pair from
the codes and evaluates only the survivors, as dense tiles (:mod:`workbench.search.tiles`); the
exact float64 rescore reads the few candidate images from the reference itself::

    index = CorrelationIndex(store.where(split="train"), channels=["t1", "flair"])
    index.save("runs/brats/train.index")
    ...
    index = CorrelationIndex.open("runs/brats/train.index")      # reopens the store it was built on
    values, indices = index.topk(synthetic, k=5)                 # method="auto": pruned or brute

On disk an index is a folder: ``basis.npy`` (D x d float32), ``codes.npy``, ``rho.npy``,
``slack.npy`` (per image), ``constant.npy``, ``check.npy`` (the codes of a few sampled images,
recomputed on opening to catch an edited store), ``vectors.npy`` (N x D, float32 or bf16 stored as
uint16, memory-mapped when opened; absent for an index too large to keep them), ``norms.npy``
(bf16), ``copy_norms.npy`` (with a float16 row copy, :mod:`workbench.search.rowcopy`, which lives
where it was written and is named in ``index.json``), ``mask.npy`` (if any) and ``index.json``.
The store and the row copy are found where they were, or else at the same place relative to the
index folder (a project folder moved or mounted elsewhere, :func:`locate`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ..progress import tqdm

from ..data.atomic import atomic_dir
from ..data.store import SliceStore, align_channels
from ..device import cached_figures, machine_key, resolve_device
from ..errors import WorkbenchError
from . import projection, pruned, tiles
from .bounds import NORMALISE_F32, screen_error_bound, split_norms
from .kernel import row_stats, screen_and_rescore
from .layout import pad_slices, padded_width, unpad_slices
from .normalise import normalise, prepare_queries
from .precision import pick_precision
from .result import SearchResult
from .rowcopy import RowCopy, RowCopyWriter, check_place, cluster_place
from .streaming import streamed_blocks
from .sources import BLOCK_BYTES, Selector, as_source, channel_index, iter_blocks, read_rows

METHODS = ("auto", "brute", "pruned")

INDEX_VERSION = 3  # 3: projection basis, codes and bounds; vectors optional
#: an index keeps its copy of the unit vectors in memory up to this size (else rows come from the store)
KEEP_VECTORS_BYTES = 2**30
#: ``method="auto"`` times the brute screen once per index: this many of its rows as queries
#: against BRUTE_PROBE_REFS of them (at most 128 MB of float32: the probe must not raise a large
#: search's peak memory)
BRUTE_PROBE_ROWS = 256
BRUTE_PROBE_REFS = 1024
#: where the brute probe's figures are kept per machine (``$XDG_CACHE_HOME/workbench/``)
PROBE_CACHE = "search-probe.json"
#: a cascade: with a basis of at least 2 x LEVEL1 directions, every pair is bounded from its first
#: LEVEL1 codes and only the survivors from all of them (pruned.py)
LEVEL1 = 256
#: images whose codes are recomputed on opening a saved index (an edited store is caught)
CHECK_ROWS = 8


def release_free_memory() -> None:
    """Hand the heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Why: glibc keeps the blocks a build freed, and a search in the same process then peaks above
    one in a fresh process: at workload (b) with a row copy, 2.86 GiB after the build against
    2.50 GiB after opening the saved index; the build's resident memory fell from 1.63 to
    1.22 GiB when trimmed, and the search's peak to 2.72 GiB (BENCHMARKS.md, issue 16 item 17)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: principal directions kept by default: BASIS_PER_ROOT x sqrt(N), from BASIS_MIN to BASIS_MAX
#: (:func:`default_basis_dim`)
BASIS_PER_ROOT = 6.5
BASIS_MIN, BASIS_MAX = 64, 1024


def default_basis_dim(n_reference: int) -> int:
    """Principal directions kept by default: 6.5 sqrt(N) for N reference images, in multiples of
    64, from 64 to 1,024.

    The query codes cost d / N of brute force (about 2 d / N in time: their products carry float64
    partial sums), and the pairs the bound leaves, evaluated as sampled products at a tenth of a
    dense product's speed, fall by a little more than half each time d doubles: the sum is least
    near d ~ N^0.45, so the basis grows as sqrt(N), not as N.  Measured on brain phantoms
    (``benchmarks/search_basis_dim.py``, BENCHMARKS.md issue 16 item 24), the best d was
    256-512 at 1,000 references, 320 at 2,459 and 320-512 at 6,216; N / 32, kept until then, gave
    64 at 2,459 references, where 6,216 queries took 6.9 s against 2.6 s at 320 (brute force 4.1-4.7 s)."""
    d = 64 * round(BASIS_PER_ROOT * math.sqrt(max(n_reference, 1)) / 64)
    return int(min(BASIS_MAX, max(BASIS_MIN, d)))


class CorrelationIndex:
    """A reference prepared for repeated exact top-k searches.

    Parameters
    ----------
    reference : SliceStore (or view) or array ``(N, C, H, W)``; kept for the exact rescore.
    channels, mask : as in :func:`~workbench.search.topk_correlation`.
    precision : ``"bf16"``, ``"float32"`` or ``"auto"`` (float32 on the CPU, bf16 on CUDA): the
        precision of the copy of the unit vectors.  The pruned search's tiles multiply in float32,
        from a bf16 copy widened row by row (with a per-row bound, :attr:`row_error`); the brute
        screen multiplies in this precision.
    device : where searches run (``"auto"``: CUDA if available).
    basis : ``"pca"`` (fitted to a seeded sample of the reference, default) or ``"blocks"``
        (``block`` x ``block`` means, no fitting).
    basis_dim : number of principal directions kept (``"pca"``; default :func:`default_basis_dim`).
    keep_vectors : keep the copy of the unit vectors (``"auto"``: when it is under 1 GiB; else
        the tiles read their rows from the reference store, which keeps memory small).
    row_copy : a new ``.npy`` path: write a float16 copy of the unit rows there while building
        (half the store's size on disk; its rows grouped by cluster of their codes, one more pass
        over the copy), and let the pruned search's seeds and tiles read it instead of the store
        (half the bytes from disk; the float64 rescore still reads the store).
        For an index whose rows stay on disk (``keep_vectors`` False).  :mod:`.rowcopy`.
    row_copy_format : ``"float16"`` (default) or ``"int8"`` (a quarter of the store's size, in
        blocks of 256 pixels with a scale each; its wider bound sends more pairs to the rescore: as fast
        at workload (b) on a 2-core CPU, BENCHMARKS.md issue 16 item 26).
    """

    def __init__(self, reference, *, channels=None, mask=None, precision: str = "auto", device: str = "auto",
                 basis: str = "pca", basis_dim: int | None = None, block: int = 4, keep_vectors="auto", seed: int = 0,
                 progress: bool = False, row_copy=None, row_copy_format: str = "float16", _prepared=None):
        self.reference = as_source(reference, "reference")
        shape = tuple(self.reference.shape)
        if shape[0] == 0:
            raise WorkbenchError("empty reference: nothing to index")
        if basis not in projection.BASES:
            raise WorkbenchError(f"basis must be one of {projection.BASES}, got {basis!r}")
        basis_dim = default_basis_dim(shape[0]) if basis_dim is None else int(basis_dim)
        if basis_dim < 1 or block < 1:
            raise WorkbenchError(f"basis_dim and block must be >= 1, got {basis_dim} and {block}")
        self.image_shape = shape[1:]
        self.channel_index = channel_index(self.reference, channels, shape[1])
        self.select = Selector(self.image_shape, self.channel_index, mask)
        self.device = resolve_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.basis_name, self.block, self.seed = basis, int(block), int(seed)
        self.row_copy, self.copy_norms = None, None
        if _prepared is not None:
            for name, value in _prepared.items():
                setattr(self, name, value)
            return
        t0 = time.perf_counter()
        bytes_per = 2 if self.dtype == torch.bfloat16 else 4
        if keep_vectors == "auto":
            keep_vectors = row_copy is None and shape[0] * self.select.dim * bytes_per <= KEEP_VECTORS_BYTES
        if row_copy is not None and keep_vectors:
            raise WorkbenchError("row_copy serves an index whose rows stay on disk: it needs keep_vectors=False "
                                 "(or 'auto')")
        writer = RowCopyWriter(row_copy, shape[0], self.select.dim, row_copy_format) if row_copy is not None else None
        with writer if writer is not None else contextlib.nullcontext():  # a failed build leaves no copy
            self.basis = self._fit(basis, basis_dim)
            self.delta = projection.basis_delta(self.basis)
            block_size = max(1, BLOCK_BYTES // (8 * self.select.dim))
            vectors, constant, rho, slack, norms, stats, rho1, slack1 = [], [], [], [], [], [], [], []
            d = self.basis.shape[1]
            self.level1 = LEVEL1 if d >= 2 * LEVEL1 else None
            codes = torch.empty((shape[0], d), dtype=torch.float32)  # filled block by block: no second copy
            for start, images in tqdm(iter_blocks(self.reference, block_size), total=-(-shape[0] // block_size),
                                      desc="indexing", unit="block", disable=not progress):
                flat = self.select(images)
                stats.append(row_stats(flat))  # the rescore's mean and norm of each row
                # float32 normalisation (NORMALISE_F32 from exact, which every bound allows for) is
                # several times faster than float64; the bf16 screen's split norms need float64
                if self.dtype == torch.bfloat16 and keep_vectors:
                    x, c = normalise(flat, torch.float64)
                    err = 0.0
                else:
                    x, c = normalise(flat, torch.float32)
                    err = NORMALISE_F32
                if writer is not None:
                    writer.add(start, x)
                if keep_vectors and self.dtype == torch.float32:
                    if not vectors:  # filled block by block: no second copy
                        vectors.append(torch.empty((shape[0], self.select.dim), dtype=torch.float32))
                    vectors[0][start:start + len(x)] = x
                elif keep_vectors:
                    low = x.to(torch.float32).to(self.dtype)
                    norms.append(split_norms(x, low))  # the bf16 screen's per-pair error bound and padded layout
                    vectors.append(pad_slices(low))
                constant.append(c)
                cc, rr, ss, *first = projection.codes(x, self.basis, self.delta, err, prefix=self.level1)
                codes[start:start + len(cc)] = cc
                rho.append(rr)
                slack.append(ss)
                if first:
                    rho1.append(first[0][0])
                    slack1.append(first[0][1])
            place = None
            if writer is not None:  # the copy's rows grouped by cluster of their codes, about a tile each
                place = cluster_place(codes, tiles.tile_rows(self.select.dim), self.seed)
                self.copy_norms = torch.from_numpy(writer.finish(place))
        if writer is not None:
            self.row_copy = RowCopy(row_copy, shape[0], self.select.dim, place, row_copy_format)
        self.vectors = (vectors[0] if len(vectors) == 1 and self.dtype == torch.float32 else torch.cat(vectors)) \
            if vectors else None
        self.norms = torch.cat(norms) if norms else None
        self.constant = np.concatenate(constant)
        self.codes, self.rho, self.slack = codes, torch.cat(rho), torch.cat(slack)
        self.stats = np.concatenate(stats)
        self.rho1 = torch.cat(rho1) if rho1 else None
        self.slack1 = torch.cat(slack1) if slack1 else None
        self.check = self._check_rows()
        release_free_memory()
        self.build_seconds = time.perf_counter() - t0

    # -- preparing -------------------------------------------------------------------------------
    def _fit(self, basis: str, basis_dim: int) -> torch.Tensor:
        """The basis: block means, or principal directions fitted to a seeded sample of the
        reference and then refined by one step of subspace iteration over a larger one
        (:func:`projection.refine_basis`)."""
        if basis == "blocks":
            return projection.block_basis(self.select, self.image_shape, self.block)
        n = len(self.reference)
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(n, min(n, projection.BASIS_SAMPLE), replace=False))
        sample = torch.empty((len(rows), self.select.dim), dtype=torch.float32)
        live = np.zeros(len(rows), dtype=bool)
        for a, x, c in self._unit_rows(rows):
            sample[a:a + len(x)] = x
            live[a:a + len(x)] = ~c
        if not live.any():
            raise WorkbenchError("every sampled reference image is constant: no basis to fit")
        w = projection.fit_basis(sample[torch.from_numpy(live)] if not live.all() else sample, basis_dim)
        del sample
        more = min(n, projection.REFINE_PER_DIM * w.shape[1])
        if more <= len(rows):  # the sample was the whole reference, or as large as a refinement's
            return w
        # the basis's own sample is among the rows, so no direction it found can vanish.  Its rows
        # are read again rather than kept: held beside the basis and the step's product they would
        # add the sample's size to the build's peak (2.7 GB of float32 at 5 x 256 x 256)
        refine = np.union1d(rows, rng.choice(n, more, replace=False))
        return projection.refine_basis(w, (x for _, x, _ in self._unit_rows(refine)))

    def _unit_rows(self, rows: np.ndarray):
        """(start, float32 unit rows, constant) of the reference's images at sorted ``rows``, a
        block at a time."""
        step = max(1, BLOCK_BYTES // (8 * self.select.dim))
        for a in range(0, len(rows), step):
            x, c = normalise(self.select(read_rows(self.reference, rows[a:a + step])), torch.float32)
            yield a, x, c

    def _check_rows(self) -> np.ndarray:
        """Positions of the images whose codes are recomputed when the saved index is opened."""
        rng = np.random.default_rng(self.seed + 1)
        return np.sort(rng.choice(len(self.codes), min(len(self.codes), CHECK_ROWS), replace=False))

    def rows32(self, positions: np.ndarray) -> torch.Tensor:
        """Float32 unit vectors of the images at sorted ``positions`` (the tiles' rows in memory):
        views or copies of the index's float32 vectors, the bf16 copies widened to float32 (off by
        at most :attr:`row_error`), or, without vectors in memory, read from the store and
        normalised (the tiles read :meth:`raw_rows` there)."""
        if self.vectors is not None and self.dtype == torch.float32:
            if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
                return self.vectors[positions[0]:positions[-1] + 1]
            return self.vectors[torch.from_numpy(positions)]
        if self.vectors is not None:
            if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
                rows = self.vectors[positions[0]:positions[-1] + 1]
            else:
                rows = self.vectors[torch.from_numpy(positions)]
            return unpad_slices(rows, self.select.dim)
        return normalise(self._read_selected(positions), torch.float32)[0]

    def raw_rows(self, positions: np.ndarray) -> torch.Tensor:
        """The selected pixels of the images at sorted ``positions`` as stored (float32, not
        normalised: the tiles divide by the stored norms, ``tiles.raw_row_error``; a reference in
        another dtype is rounded to float32, which that bound covers).  The tiles read them through
        :meth:`raw_reader`."""
        return torch.from_numpy(np.ascontiguousarray(self._read_selected(positions), dtype=np.float32))

    def raw_reader(self, depth: int) -> "RawReader":
        """:meth:`raw_rows` for a stream of tiles (``RawReader.stream``), or, where the index has a
        ``row_copy``, the copy's unit rows (as stored: the products widen them): from a
        store (or the copy) the next tiles' rows are read ahead from disk
        by :class:`~workbench.data.readahead.AheadReader` while a tile is multiplied (at (b), rows
        on disk: the tiles 16.5-17.5 s through the page cache against 5.5 s; BENCHMARKS.md, issue
        16 item 16).  A context manager: leaving it waits for reads in flight."""
        return RawReader(self, depth)

    def _read_selected(self, positions: np.ndarray) -> np.ndarray:
        """The selected pixels of the reference images at ``positions``."""
        return self.select(read_rows(self.reference, positions))

    @property
    def row_error(self) -> torch.Tensor | None:
        """Per row (float64), the bound on a tile's error where the tiles read the bf16 copy of the
        unit vectors, or the float16 or int8 copy on disk (``row_copy``, :mod:`.rowcopy`, whose stored
        (hi, lo) bound it the same way); None where they read float32 rows (one bound for all
        pairs, ``tiles.tier_error_bound``).

        A tile multiplies the query rounded to float32, x32, with the row's bf16 copy y_h (exact in
        float32), in float32 slices: |x.y - fl(x32.y_h)| <= |x.y_l| + |(x - x32).y_h| + the
        accumulation error <= ||y_l|| + ||y_h|| tier_error_bound(D), every term of the float32
        bound being linear in the row's norm (y_l = y - y_h: the stored split norms)."""
        if self.vectors is None and self.row_copy is not None:  # the copy on disk (.rowcopy)
            norms = self.copy_norms
        elif self.vectors is None or self.dtype != torch.bfloat16:
            return None
        else:
            norms = self.norms
        if getattr(self, "_row_error", None) is None:
            hi, lo = norms[:, 0].double(), norms[:, 1].double()
            self._row_error = lo * (1 + 1e-6) + hi * tiles.tier_error_bound(self.select.dim)
        return self._row_error

    @property
    def from_disk(self) -> bool:
        """The tiles read rows from the reference (the kernel asked to fetch the next tiles' rows ahead)."""
        return self.vectors is None

    def __len__(self) -> int:
        return len(self.codes)

    def __repr__(self) -> str:
        prec = "bf16" if self.dtype == torch.bfloat16 else "float32"
        copy = f", {self.row_copy.fmt} row copy {self.row_copy.path}" if self.row_copy is not None else ""
        return (f"CorrelationIndex({len(self)} images, {self.select.dim} pixels each, {prec}, "
                f"{self.basis_name} basis of {self.basis.shape[1]}{copy})")

    # -- searching -------------------------------------------------------------------------------
    def topk(self, queries, k: int = 1, *, method: str = "auto", channels=None, mask=None,
             block_size: int | None = None, tile: int | None = None, progress: bool = False,
             by_label=None) -> SearchResult:
        """Exact top-k Pearson r of each query against the indexed reference.

        ``method="pruned"`` bounds every pair from the codes and evaluates the survivors as dense
        tiles (:mod:`workbench.search.tiles`); ``"brute"`` screens every pair at full size;
        ``"auto"`` computes the bounds and the exact seeds, times a sample of the tiles, and goes on by
        tiles where the rest would take less time than brute force takes by the index's probe of
        its brute screen on this machine (:meth:`brute_seconds`), else by brute force, which takes
        the seeds' exact values (:func:`pruned.tiled_search`).  All are exact.  ``stats["method"]``
        says which ran (``stats["auto"]`` why, with the figures) and ``stats["full_fraction"]`` the
        fraction of pairs evaluated at full size.  ``channels`` /
        ``mask``, if given, must be those the index was built with.  ``tile``: reference rows per
        tile of the pruned search (default :func:`tiles.tile_rows`: 64-512 by the image's size).
        ``by_label``: a distinct search's (:func:`~workbench.search.topk_correlation`): every method
        then rescores only what the top ``k_plain`` and each best label's best need.
        """
        if method not in METHODS:
            raise WorkbenchError(f"method must be one of {METHODS}, got {method!r}")
        self._check_selection(channels, mask)
        queries = as_source(align_channels(queries, self.reference, what="queries"), "queries")
        if tuple(queries.shape[1:]) != self.image_shape:
            raise WorkbenchError(f"queries have images of shape {tuple(queries.shape[1:])} but the index was built "
                                 f"on {self.image_shape}")
        if len(queries) == 0:
            raise WorkbenchError("empty queries: nothing to search")
        if not 1 <= k <= len(self):
            raise WorkbenchError(f"k={k} must be between 1 and the reference size {len(self)}")
        if tile is not None and tile < 1:
            raise WorkbenchError(f"tile must be >= 1 image, got {tile}")
        q64, const_q = prepare_queries(queries, self.select)
        auto = self._auto_figures(len(q64), k) if method == "auto" else None
        if method != "brute":
            result = pruned.tiled_search(q64, const_q, self, self.reference, self.select, k=k, dev=self.device,
                                         tile=tile, progress=progress, auto=auto, by_label=by_label)
            if auto is not None and "tile_rate" in auto:  # remembered for this index's next auto search of this shape
                self._tile_rates[(len(q64), k)] = auto["tile_rate"]
            if result is not None:
                if auto is not None:
                    note_probe(result, auto)
                    result.stats["auto"] = (f"pruned: the tiles evaluate {auto['fraction']:.1%} of the pairs; the rest "
                                            f"predicted {auto['pruned_rest_s']:.3g} s from a timed sample of them, "
                                            f"brute force {auto['brute_total_s']:.3g} s (its screen by the index's "
                                            f"probe, its rescore at the seeds' rate)")
                    auto.pop("known", None)
                    result.stats["auto_figures"] = clean_figures(auto)
                return result
        known = auto.pop("known", None) if auto is not None else None  # the seeds, exact: brute force takes them
        result = self._brute(q64, const_q, k, block_size, progress, known, by_label)
        if known is not None:  # the seeds were evaluated in float64 by this search too
            result.rescored += len(known[0])
        if auto is not None:
            if "tiles_at_rate_s" in auto:
                why = (f"the tiles would evaluate {auto['fraction']:.1%} of the pairs; at the rate an earlier "
                       f"search of this index measured they would take {auto['tiles_at_rate_s']:.3g} s, more "
                       f"than {pruned.AUTO_SKIP_MARGIN:g}x brute force's screen {auto['brute_s']:.3g} s (no sample taken)")
            elif "pruned_rest_s" in auto:
                why = (f"the tiles would evaluate {auto['fraction']:.1%} of the pairs; the rest predicted "
                       f"{auto['pruned_rest_s']:.3g} s from a timed sample of them, brute force "
                       f"{auto['brute_total_s']:.3g} s (its screen by the index's probe, its rescore at the "
                       f"seeds' rate)")
            else:
                why = (f"the tiles would evaluate {auto['fraction']:.1%} of the pairs "
                       f"(more than {pruned.AUTO_MAX_FRACTION:.0%})")
            result.stats["auto"] = f"brute: {why}"
            result.stats["auto_figures"] = clean_figures(auto)
            note_probe(result, auto)
        return result

    def brute_seconds(self, n_queries: int) -> float:
        """Predicted seconds of the brute-force screen of ``n_queries`` on this index (its rescore
        apart): the screen timed once (memoised, :meth:`probe`), scaled to n_queries x N pairs and
        N rows read."""
        probe = self.probe()
        return n_queries * len(self) * probe["pair_s"] + len(self) * probe["row_s"]

    def probe(self) -> dict:
        """What ``method="auto"`` measured of this index's brute search on this machine, once:
        ``pair_s`` (screen seconds per pair), ``row_s`` (per reference row read and normalised from
        the store, where the index keeps no copy), timed on BRUTE_PROBE_ROWS of its own rows as
        queries against as many references, read as the brute search reads them.

        Kept per machine and shape of the work (:meth:`probe_key`) in
        ``$XDG_CACHE_HOME/workbench/search-probe.json``, as the precision probe is: a rerun in a new
        process (papermill, ``workbench search --index``) does not pay it again (0.2 s at issue
        16's (a), 0.5 s at (b) from disk)."""
        if getattr(self, "_probe", None) is None:
            self._probe, self._probe_ran = cached_figures(PROBE_CACHE, self.probe_key(), self._probe_brute,
                                                          ("pair_s", "row_s"))
        return self._probe

    def probe_key(self) -> str:
        """What the brute probe's figures depend on: the machine (CPU or GPU, torch, threads), where
        the rows come from (kept vectors and their precision, an array, or a store's file system),
        and the probe's size.  Not the values: a probe of one store serves another of its shape."""
        if self.vectors is not None:
            source = f"vectors {str(self.dtype).removeprefix('torch.')}"
        elif isinstance(self.reference, SliceStore):
            source = f"store on device {os.stat(self.reference.path).st_dev}"
        else:
            source = "array"
        b, nq = self._probe_size()
        return f"{machine_key(self.device)}|{source}|D={self.select.dim}|{nq}x{b}"

    def _auto_figures(self, n_queries: int, k: int) -> dict:
        """The figures ``method="auto"`` weighs the tiles against (:func:`pruned.tiled_search`), with
        ``probe_s`` where this call ran the index's one-off probe (at (b) 0.6-0.9 s, read from disk:
        a search's stages did not show it; BENCHMARKS.md, issue 16 item 21)."""
        fresh, t0 = getattr(self, "_probe", None) is None, time.perf_counter()
        brute_s = self.brute_seconds(n_queries)
        if fresh and getattr(self, "_probe_ran", True):
            probe = {"probe_s": time.perf_counter() - t0}
        else:  # measured by this index before, or by an earlier process on this machine (its date)
            probe = {"probe_measured": self.probe().get("measured", "earlier in this process")}
        if self.vectors is not None and self.dtype == torch.bfloat16:
            # near a query's k-th best the bf16 screen's per-pair bound is about ||x_l|| + ||y_l||
            # (bounds.py): the query's taken as a typical row's.  A prediction, not a bound.
            lo = self.norms[:, 1].float()
            brute_eps = lo + lo.median() + lo * lo.median() + tiles.tier_error_bound(self.select.dim)
        else:
            brute_eps = screen_error_bound(self.select.dim, torch.float32)
        # an earlier auto search's measure of the tiles, with as many queries and the same k: a tile's
        # fixed cost weighs on few queries (a warm-up on 8 queries then sent k = 5 of 256 to brute
        # force at 0.19 s against 0.15 s pruned), and k sets how dense the tiles are
        if not hasattr(self, "_tile_rates"):
            self._tile_rates = {}
        rate = self._tile_rates.get((n_queries, k))
        return {"brute_s": brute_s, "brute_eps": brute_eps, **probe, **({} if rate is None else {"tile_rate": rate})}

    def _probe_size(self) -> tuple[int, int]:
        # references as a brute-force block holds them, up to 128 MB of float32; the first of them
        # as queries (a 256 x 256 probe over-predicted the full screen's cost per pair 3x at (b))
        b = min(len(self), BRUTE_PROBE_REFS, max(16, 2**27 // (4 * self.select.dim)))
        return b, min(b, BRUTE_PROBE_ROWS)

    def _probe_brute(self) -> dict:
        b, nq = self._probe_size()
        rows = np.arange(b)
        t0 = time.perf_counter()
        x32, const = normalise(self.select(read_rows(self.reference, rows)), torch.float32)
        read = time.perf_counter() - t0  # read and normalised: what a streamed brute search does per row
        q64, const_q = normalise(self.select(read_rows(self.reference, rows[:nq])), torch.float64)
        if self.vectors is not None:
            block = (rows, self.vectors[:b].to(self.device), self.constant[:b], None,
                     None if self.norms is None else self.norms[:b])
            dtype, lift = self.dtype, 0.0
        else:  # the streamed brute search: float32 rows normalised on the fly
            block = (rows, x32.to(self.device), const, None, None)
            dtype, lift = torch.float32, NORMALISE_F32
        del x32
        best = float("inf")
        for _ in range(2):  # a warm-up, then the screen's own time (its rescore excluded)
            with warnings.catch_warnings():  # constant probe rows are the search's business, not the probe's
                warnings.simplefilter("ignore")
                res = screen_and_rescore(q64, const_q, iter([block]), self.reference, self.select, k=1, n_reference=b,
                                         dtype=dtype, dev=self.device, progress=False, ref_lift=lift,
                                         stats=self.stats)
            best = min(best, res.stats["seconds"]["screen_s"]) if _ else best
        return {"pair_s": best / (nq * b), "row_s": read / b if self.vectors is None else 0.0}

    def _check_selection(self, channels, mask) -> None:
        if channels is not None:
            want = channel_index(self.reference, channels, self.image_shape[0])
            if want != (self.channel_index or list(range(self.image_shape[0]))):
                raise WorkbenchError(f"this index was built on channels {self.channel_index or 'all'} and cannot search "
                                     f"channels {list(channels)}: build an index with channels={list(channels)}")
        if mask is not None:
            other = Selector(self.image_shape, self.channel_index, mask).mask
            mine = self.select.mask
            if mine is None or other is None or not np.array_equal(mine, other):
                raise WorkbenchError("this index was built with another mask than the one asked for: build an index "
                                     "with that mask")

    def _brute(self, q64, const_q, k, block_size, progress, known=None, by_label=None) -> SearchResult:
        """Brute force; ``known``: exact pairs and a floor per query to start from (method="auto"'s
        seeds, :func:`~workbench.search.kernel.screen_and_rescore`)."""
        if self.vectors is None:  # nothing kept in memory: stream the reference, as topk_streaming does
            size = block_size or max(1, BLOCK_BYTES // (4 * self.select.dim))
            blocks = streamed_blocks(self.reference, self.select, size, torch.float32, self.device)
            result = screen_and_rescore(q64, const_q, blocks, self.reference, self.select, k=k,
                                        n_reference=len(self), dtype=torch.float32, dev=self.device, progress=progress,
                                        ref_lift=NORMALISE_F32, stats=self.stats, known=known, by_label=by_label)
            result.stats.update(method="brute", full_fraction=1.0)
            return result
        block_size = block_size or max(1, BLOCK_BYTES // (4 * self.select.dim))

        def blocks():
            # a small first block sets each query's running k-th best early: the bf16 screen's
            # offsets (kernel.py) then keep its rounding small for all later blocks
            first = min(block_size, 256)
            starts = [0, *range(first, len(self), block_size)] if len(self) > first else [0]
            for start in starts:
                stop = min(start + (first if start == 0 else block_size), len(self))
                yield (np.arange(start, stop), self.vectors[start:stop].to(self.device), self.constant[start:stop], None,
                       None if self.norms is None else self.norms[start:stop])

        result = screen_and_rescore(q64, const_q, blocks(), self.reference, self.select, k=k, n_reference=len(self),
                                    dtype=self.dtype, dev=self.device, progress=progress, stats=self.stats,
                                    known=known, by_label=by_label)
        result.stats["method"] = "brute"
        result.stats["full_fraction"] = 1.0
        return result

    # -- saving and opening ----------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the index folder (only for a SliceStore reference, which it reopens by path)."""
        if not isinstance(self.reference, SliceStore):
            raise WorkbenchError("only an index of a SliceStore can be saved: it reopens the store for the rescore")
        path = Path(path)
        final = path.resolve()  # where the folder will be: the store and the row copy are also found from it
        with atomic_dir(path, overwrite=overwrite) as tmp:
            if self.vectors is not None:
                v = self.vectors.cpu()
                raw = v.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else v.numpy()
                np.save(tmp / "vectors.npy", raw)
            if self.norms is not None:
                np.save(tmp / "norms.npy", self.norms.cpu().numpy())
            for name in ("basis", "codes", "rho", "slack") + (("rho1", "slack1") if self.level1 else ()):
                np.save(tmp / f"{name}.npy", getattr(self, name).cpu().numpy())
            np.save(tmp / "constant.npy", self.constant)
            np.save(tmp / "stats.npy", self.stats)
            np.save(tmp / "check.npy", self.check)
            if self.row_copy is not None:
                np.save(tmp / "copy_norms.npy", self.copy_norms.numpy())
                np.save(tmp / "copy_place.npy", self.row_copy.rows)
            if self.select.mask is not None:
                np.save(tmp / "mask.npy", self.select.mask.reshape(-1))
            meta = {
                "format_version": INDEX_VERSION,
                "precision": "bf16" if self.dtype == torch.bfloat16 else "float32",
                "store": str(self.reference.path.resolve()),
                "store_from_index": os.path.relpath(self.reference.path.resolve(), final),
                "store_id": self.reference.meta.get("id"),
                "store_shape": list(self.reference.meta["shape"]),
                "rows": self.reference.rows.tolist(),
                "store_channels": self.reference.channels,  # the view's channels, by name and order
                "channels": self.channel_index,
                "image_shape": list(self.image_shape),
                "pixels": self.select.dim,
                "basis": self.basis_name, "basis_dim": int(self.basis.shape[1]), "block": self.block,
                "delta": self.delta, "seed": self.seed, "vectors": self.vectors is not None, "level1": self.level1,
                "row_copy": str(self.row_copy.path.resolve()) if self.row_copy is not None else None,
                "row_copy_format": self.row_copy.fmt if self.row_copy is not None else None,
                "row_copy_from_index": (os.path.relpath(self.row_copy.path.resolve(), final)
                                        if self.row_copy is not None else None),
            }
            (tmp / "index.json").write_text(json.dumps(meta))
        return path

    @classmethod
    def open(cls, path, *, device: str = "auto") -> "CorrelationIndex":
        """Open a saved index and the store it was built on; check that they still match (the
        store's identity and shape, and the codes of a few images recomputed from the store)."""
        path = Path(path)
        try:
            meta = json.loads((path / "index.json").read_text())
            if meta.get("format_version") != INDEX_VERSION:
                raise WorkbenchError(f"{path}: index format {meta.get('format_version')} was written by another "
                                     f"version of the workbench (this one reads {INDEX_VERSION}); build the index again")
            names = ("basis", "codes", "rho", "slack") + (("rho1", "slack1") if meta.get("level1") else ())
            parts = {name: torch.from_numpy(np.load(path / f"{name}.npy")) for name in names}
            parts["level1"] = meta.get("level1")
            if not parts["level1"]:
                parts["rho1"] = parts["slack1"] = None
            parts["constant"] = np.load(path / "constant.npy")
            parts["check"] = np.load(path / "check.npy")
            parts["stats"] = np.load(path / "stats.npy")
            raw = np.load(path / "vectors.npy", mmap_mode="c") if meta["vectors"] else None
            parts["norms"] = (torch.from_numpy(np.load(path / "norms.npy"))
                              if meta["vectors"] and meta["precision"] == "bf16" else None)
            parts["copy_norms"] = torch.from_numpy(np.load(path / "copy_norms.npy")) if meta.get("row_copy") else None
            # the copy's order (absent from an index saved before copies were ordered: index order)
            place = np.load(path / "copy_place.npy") if (path / "copy_place.npy").is_file() else None
        except (OSError, ValueError, KeyError) as err:
            raise WorkbenchError(f"{path}: not a complete CorrelationIndex ({err})") from None
        store_path = locate(path, meta, "store", "reference store")
        store = SliceStore.open(store_path)
        if list(store.meta["shape"]) != meta["store_shape"] or store.meta.get("id") != meta["store_id"]:
            raise WorkbenchError(f"{path}: the store {store_path} has changed since the index was built (or is "
                                 "another store); build it again")
        reference = store.take(np.asarray(meta["rows"], dtype=np.int64))
        reference = reference.with_channels(meta.get("store_channels", store.channels))
        mask = None
        if (path / "mask.npy").is_file():
            n_ch = len(meta["channels"]) if meta["channels"] else meta["image_shape"][0]
            mask = np.load(path / "mask.npy").reshape(n_ch, *meta["image_shape"][1:])
        n = len(reference)
        if parts["stats"].shape != (n, 2) or parts["codes"].shape != (n, meta["basis_dim"]) or parts["basis"].shape != (meta["pixels"], meta["basis_dim"]):
            raise WorkbenchError(f"{path}: codes {tuple(parts['codes'].shape)} or basis {tuple(parts['basis'].shape)} do "
                                 f"not match the index ({n} images of {meta['pixels']} pixels, basis of "
                                 f"{meta['basis_dim']}); build it again")
        parts["vectors"] = None
        if raw is not None:
            width = padded_width(meta["pixels"]) if meta["precision"] == "bf16" else meta["pixels"]
            if raw.shape != (n, width):
                raise WorkbenchError(f"{path / 'vectors.npy'}: shape {raw.shape} does not match the index ({n}, {width})")
            vectors = torch.from_numpy(raw)
            if meta["precision"] == "bf16":
                vectors = vectors.view(torch.int16).view(torch.bfloat16) if raw.dtype == np.uint16 else vectors
            parts["vectors"] = vectors
        parts["delta"] = float(meta["delta"])
        parts["row_copy"] = None
        if meta.get("row_copy"):
            if parts["copy_norms"].shape != (n, 2):
                raise WorkbenchError(f"{path / 'copy_norms.npy'}: shape {tuple(parts['copy_norms'].shape)} does not "
                                     f"match the index ({n}, 2)")
            if place is not None:
                check_place(place, n, path / "copy_place.npy")
            fmt = meta.get("row_copy_format") or "float16"  # (an index saved before int8 copies: float16)
            parts["row_copy"] = RowCopy(locate(path, meta, "row_copy", f"{fmt} row copy"), n, meta["pixels"], place,
                                        fmt)
        index = cls(reference, channels=meta["channels"], mask=mask, precision=meta["precision"], device=device,
                    basis=meta["basis"], block=meta["block"], seed=meta["seed"], _prepared=parts)
        index._verify(path)
        return index

    def _verify(self, path) -> None:
        """Recompute the codes of the check images from the store: an edited store is refused."""
        rows = self.check
        x, _ = normalise(self.select(read_rows(self.reference, rows)), torch.float32)
        c, _, slack = projection.codes(x, self.basis, self.delta, NORMALISE_F32)
        gap = (c.double() - self.codes[torch.from_numpy(rows)].double()).norm(dim=1)
        if bool((gap > 4 * slack + 1e-5).any()):
            bad = rows[(gap > 4 * slack + 1e-5).numpy()]
            raise WorkbenchError(f"{path}: the images at positions {bad.tolist()} of the store {self.reference.path} no "
                                 f"longer match the index (the store was edited after the index was built); build it again")
        if self.row_copy is not None:
            # each copied row is within its stored lo of the exact unit row; x here is within
            # NORMALISE_F32 of it too
            copied = self.row_copy.unit_rows(rows).double()
            gap = (copied - x.double()).norm(dim=1)
            bad = rows[(gap > self.copy_norms[torch.from_numpy(rows), 1] + 2 * NORMALISE_F32 + 1e-6).numpy()]
            if len(bad):
                raise WorkbenchError(f"{self.row_copy.path}: the rows at positions {bad.tolist()} do not match the "
                                     f"store {self.reference.path} (the copy or the store was edited); build the index again")


#: ``method="auto"`` of :func:`~workbench.search.topk_correlation` builds an index and prunes
#: when the queries are many enough to pay for it.  Measured (BENCHMARKS.md, 2-core CPU): building
#: costs about as much as brute force for 3,000-5,000 queries (a pass over the reference and its
#: codes, N D d multiply-adds), and a pruned search saves 1.4 ms a query at 8,192 x 4x64x64 and
#: 40-57 ms at 80,000 x 4x128x128, so the index pays from about 6,000-7,000 queries on.
AUTO_MIN_QUERIES = 8192
AUTO_MIN_REFERENCE = 2048


def locate(index_path: Path, meta: dict, key: str, what: str) -> Path:
    """Where a saved index's ``key`` (its store or row copy) is now: where it was when the index was
    saved, else at the same place relative to the index folder (a project folder moved or mounted
    elsewhere with its stores and index inside: both paths are saved).  The store's identity and
    the index's check rows (:meth:`CorrelationIndex._verify`) refuse another store or copy found so."""
    was = Path(meta[key])
    if was.exists():
        return was
    rel = meta.get(f"{key}_from_index")
    moved = (index_path / rel).resolve() if rel else None
    if moved is not None and moved.exists():
        return moved
    where = f"nor at {moved}, where it would be had it moved with the index" if moved else "(moved or removed?)"
    raise WorkbenchError(f"{was}: the {what} of the index {index_path} is not there {where}; put it back, or build "
                         "the index again")


def note_probe(result, auto: dict) -> None:
    """The one-off probe's seconds among the result's stages, where this search ran it."""
    if "probe_s" in auto:
        result.stats.setdefault("seconds", {})["probe_s"] = round(auto["probe_s"], 4)


def clean_figures(auto: dict) -> dict:
    """``method="auto"``'s figures as plain numbers (a per-row bound is given by its median)."""
    return {key: float(v.median()) if torch.is_tensor(v) else v for key, v in auto.items()}


def index_pays(n_queries: int, n_reference: int) -> bool:
    """Whether ``method="auto"`` of an unprepared search builds an index (module constants)."""
    return n_queries >= AUTO_MIN_QUERIES and n_reference >= AUTO_MIN_REFERENCE


class RawReader:
    """The rows of :meth:`CorrelationIndex.raw_rows`, tile after tile (:meth:`CorrelationIndex.raw_reader`).

    ``stream`` yields float32 tensors that may be views of the reader's few buffers, each reused
    once the next is yielded (fresh memory for every batch of rows cost its page faults: from the
    page cache rows came at 6 GB/s into reused buffers against 2.5 GB/s into fresh ones;
    BENCHMARKS.md, issue 16 item 14)."""

    def __init__(self, index: CorrelationIndex, depth: int):
        self._index = index
        ref = index.reference
        self._copy = index.row_copy is not None and index.vectors is None
        self._reader = index.row_copy.reader(depth) if self._copy else ref.reader(depth) \
            if isinstance(ref, SliceStore) else None
    def stream(self, batches, ahead: int):
        """The rows of each of ``batches`` (positions: sorted, or in the row copy's order) in order,
        the next ``ahead`` (at most depth + 1) read meanwhile from a store or the row copy.  A row
        copy's rows come as they are stored, float16 (views of the reader's buffers), and the
        products widen them a few slices at a time (:func:`tiles.pair_product`)."""
        if self._reader is None:
            got = (read_rows(self._index.reference, b) for b in batches)
        else:
            got = self._reader.stream(batches, ahead)
        for rows in got:
            if self._copy:
                yield self._index.row_copy.as_rows(rows)
            else:
                yield torch.from_numpy(np.ascontiguousarray(self._index.select(rows), dtype=np.float32))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def topk_pruned(queries, reference, k: int = 1, *, device: str = "auto", channels=None, mask=None,
                precision: str = "auto", block_size: int | None = None, progress: bool = False,
                method: str = "pruned", by_label=None) -> SearchResult:
    """One search of a fresh index (``method="pruned"`` of :func:`~workbench.search.topk_correlation`,
    and ``"auto"`` where :func:`index_pays`).  For repeated searches build the index once yourself."""
    index = CorrelationIndex(reference, channels=channels, mask=mask, precision=precision, device=device)
    return index.topk(queries, k, method=method, block_size=block_size, progress=progress, by_label=by_label)
