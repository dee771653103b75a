"""CorrelationIndex: a reference prepared once for many searches (as FAISS builds an index once).

Preparing a reference means z-normalising every image (over the chosen channels and mask) and
keeping a low-precision copy of the unit vectors.  A search then only multiplies: the screen
reads the prepared copy, and the exact float64 rescore reads the few candidate images from the
reference itself.  An index can be saved beside its SliceStore and opened again::

    index = CorrelationIndex(store.where(split="train"), channels=["t1", "flair"], precision="bf16")
    index.save("runs/brats/train.index")
    ...
    index = CorrelationIndex.open("runs/brats/train.index")      # reopens the store it was built on
    values, indices = index.topk(synthetic, k=5)

On disk an index is a folder: ``vectors.npy`` (N x D, float32 or bf16 stored as uint16,
memory-mapped when opened), ``constant.npy``, ``mask.npy`` (if any) and ``index.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from ..progress import tqdm

from ..data.atomic import atomic_dir
from ..data.store import SliceStore, align_channels
from ..device import resolve_device
from ..errors import WorkbenchError
from . import pruned
from .bounds import split_norms
from .kernel import exact_pairs, screen_and_rescore
from .layout import pad_slices, padded_width
from .normalise import normalise, prepare_queries
from .precision import pick_precision
from .result import SearchResult
from .sources import BLOCK_BYTES, Selector, as_source, channel_index, iter_blocks

METHODS = ("auto", "brute", "pruned")

INDEX_VERSION = 2  # 2: bf16 indexes store split norms (norms.npy) and padded slices


class CorrelationIndex:
    """Normalised low-precision copy of a reference, for repeated exact top-k searches.

    Parameters
    ----------
    reference : SliceStore (or view) or array ``(N, C, H, W)``; kept for the exact rescore.
    channels, mask : as in :func:`~workbench.search.topk_correlation`.
    precision : ``"bf16"``, ``"float32"`` or ``"auto"``: the precision of the prepared copy.
    device : where searches run (``"auto"``: CUDA if available).
    """

    def __init__(self, reference, *, channels=None, mask=None, precision: str = "auto", device: str = "auto",
                 block: int = 4, progress: bool = False, _prepared=None):
        self.reference = as_source(reference, "reference")
        shape = tuple(self.reference.shape)
        if shape[0] == 0:
            raise WorkbenchError("empty reference: nothing to index")
        self.image_shape = shape[1:]
        self.channel_index = channel_index(self.reference, channels, shape[1])
        self.select = Selector(self.image_shape, self.channel_index, mask)
        self.device = resolve_device(device)
        self.dtype = pick_precision(precision, self.device, prepared=True)
        if block < 1:
            raise WorkbenchError(f"block must be >= 1 pixel, got {block}")
        self.block = int(block)
        ids, self.m = pruned.block_ids(self.select, self.image_shape, self.block)
        self._ids = torch.from_numpy(ids)
        self._counts = torch.bincount(self._ids, minlength=self.m).to(torch.float64)
        if _prepared is not None:
            self.vectors, self.constant, self.coarse, self.resid, self.norms = _prepared
            return
        block_size = max(1, BLOCK_BYTES // (8 * self.select.dim))
        vectors, constant, coarse, resid, norms = [], [], [], [], []
        for _, images in tqdm(iter_blocks(self.reference, block_size), total=-(-shape[0] // block_size),
                              desc="indexing", unit="block", disable=not progress):
            x64, c = normalise(self.select(images), torch.float64)
            low = x64.to(torch.float32).to(self.dtype)
            vectors.append(low)
            if self.dtype == torch.bfloat16:  # the screen's per-pair error bound and padded layout
                norms.append(split_norms(x64, low))
                vectors[-1] = pad_slices(low)
            constant.append(c)
            cc, rr = pruned.coarse(x64, self._ids, self._counts, self.m)
            coarse.append(cc)
            resid.append(rr)
        self.vectors = torch.cat(vectors)
        self.constant = np.concatenate(constant)
        self.coarse = torch.cat(coarse)
        self.resid = torch.cat(resid)
        self.norms = torch.cat(norms) if norms else None

    def __len__(self) -> int:
        return len(self.vectors)

    def __repr__(self) -> str:
        prec = "bf16" if self.dtype == torch.bfloat16 else "float32"
        return f"CorrelationIndex({len(self)} images, {self.select.dim} pixels each, {prec})"

    def topk(self, queries, k: int = 1, *, method: str = "auto", block_size: int | None = None,
             progress: bool = False) -> SearchResult:
        """Exact top-k Pearson r of each query against the indexed reference.

        ``method="brute"`` screens every pair at full size; ``"pruned"`` first bounds every pair
        from block means (:mod:`workbench.search.pruned`) and screens only the pairs whose bound
        reaches a proven lower bound on the k-th best.  Both are exact.  ``"auto"`` is
        ``"brute"``: pruning leaves ~2-7 % of pairs on brain slices, but its screen still runs
        over whole columns of the block, so it is not faster yet (BENCHMARKS.md).
        ``stats["full_fraction"]`` is the fraction of pairs evaluated at full size.
        """
        if method not in METHODS:
            raise WorkbenchError(f"method must be one of {METHODS}, got {method!r}")
        queries = as_source(align_channels(queries, self.reference, what="queries"), "queries")
        if tuple(queries.shape[1:]) != self.image_shape:
            raise WorkbenchError(f"queries have images of shape {tuple(queries.shape[1:])} but the index was built "
                                 f"on {self.image_shape}")
        if len(queries) == 0:
            raise WorkbenchError("empty queries: nothing to search")
        if not 1 <= k <= len(self):
            raise WorkbenchError(f"k={k} must be between 1 and the reference size {len(self)}")
        q64, const_q = prepare_queries(queries, self.select)
        block_size = block_size or max(1, BLOCK_BYTES // (4 * self.select.dim))

        survivors = None
        if method == "pruned":
            cq, rq = pruned.coarse(q64, self._ids, self._counts, self.m)
            bounds = pruned.upper_bounds(cq, rq, self.coarse, self.resid, self.m)
            bounds[torch.from_numpy(const_q)] = -np.inf
            survivors, _ = pruned.prune(
                bounds, lambda qi, ri: exact_pairs(q64, self.reference, self.select, qi, ri), k,
                np.flatnonzero(self.constant))
            survivors[torch.from_numpy(const_q)] = False
            del bounds

        def blocks():
            # a small first block sets each query's running k-th best early: the bf16 screen's
            # offsets (kernel.py) then keep its rounding small for all later blocks
            first = min(block_size, 256)
            starts = [0, *range(first, len(self), block_size)] if len(self) > first else [0]
            for start in starts:
                stop = min(start + (first if start == 0 else block_size), len(self))
                cols = np.arange(start, stop)
                if survivors is None:  # contiguous rows: a view, no copy
                    yield (cols, self.vectors[start:stop].to(self.device), self.constant[start:stop], None,
                           None if self.norms is None else self.norms[start:stop])
                    continue
                mask = survivors[:, start:stop]
                keep = mask.any(dim=0).numpy()
                if not keep.any():  # every pair of this block is pruned
                    continue
                cols, mask = cols[keep], mask[:, torch.from_numpy(keep)]
                # copies the surviving rows off the memory map (and onto the GPU) while streaming
                sel = torch.from_numpy(cols)
                yield (cols, self.vectors[sel].to(self.device), self.constant[cols], mask,
                       None if self.norms is None else self.norms[sel])

        result = screen_and_rescore(q64, const_q, blocks(), self.reference, self.select, k=k, n_reference=len(self),
                                    dtype=self.dtype, dev=self.device, progress=progress)
        n_pairs = len(q64) * len(self)
        result.stats["method"] = "brute" if survivors is None else "pruned"
        result.stats["full_fraction"] = 1.0 if survivors is None else float(survivors.sum()) / max(n_pairs, 1)
        return result

    # -- saving and opening ----------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the index folder (only for a SliceStore reference, which it reopens by path)."""
        if not isinstance(self.reference, SliceStore):
            raise WorkbenchError("only an index of a SliceStore can be saved: it reopens the store for the rescore")
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            v = self.vectors.cpu()
            raw = v.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else v.numpy()
            np.save(tmp / "vectors.npy", raw)
            np.save(tmp / "constant.npy", self.constant)
            np.save(tmp / "coarse.npy", self.coarse.cpu().numpy())
            np.save(tmp / "resid.npy", self.resid.cpu().numpy())
            if self.norms is not None:
                np.save(tmp / "norms.npy", self.norms.cpu().numpy())
            if self.select.mask is not None:
                np.save(tmp / "mask.npy", self.select.mask.reshape(-1))
            meta = {
                "format_version": INDEX_VERSION,
                "precision": "bf16" if self.dtype == torch.bfloat16 else "float32",
                "store": str(self.reference.path.resolve()),
                "store_id": self.reference.meta.get("id"),
                "store_shape": list(self.reference.meta["shape"]),
                "rows": self.reference.rows.tolist(),
                "store_channels": self.reference.channels,  # the view's channels, by name and order
                "channels": self.channel_index,
                "image_shape": list(self.image_shape),
                "pixels": self.select.dim,
                "block": self.block,
            }
            (tmp / "index.json").write_text(json.dumps(meta))
        return path

    @classmethod
    def open(cls, path, *, device: str = "auto") -> "CorrelationIndex":
        """Open a saved index and the store it was built on; check that they still match."""
        path = Path(path)
        try:
            meta = json.loads((path / "index.json").read_text())
            if meta.get("format_version") != INDEX_VERSION:
                raise WorkbenchError(f"{path}: index format {meta.get('format_version')} was written by another "
                                     f"version of the workbench (this one reads {INDEX_VERSION}); build the index again")
            raw = np.load(path / "vectors.npy", mmap_mode="c")
            constant = np.load(path / "constant.npy")
            coarse = torch.from_numpy(np.load(path / "coarse.npy"))
            resid = torch.from_numpy(np.load(path / "resid.npy"))
            norms = torch.from_numpy(np.load(path / "norms.npy")) if meta["precision"] == "bf16" else None
        except (OSError, ValueError) as err:
            raise WorkbenchError(f"{path}: not a complete CorrelationIndex ({err})") from None
        store = SliceStore.open(meta["store"])
        if list(store.meta["shape"]) != meta["store_shape"] or store.meta.get("id") != meta["store_id"]:
            raise WorkbenchError(f"{path}: the store {meta['store']} has changed since the index was built; build it again")
        reference = store.take(np.asarray(meta["rows"], dtype=np.int64))
        reference = reference.with_channels(meta.get("store_channels", store.channels))
        mask = None
        if (path / "mask.npy").is_file():
            n_ch = len(meta["channels"]) if meta["channels"] else meta["image_shape"][0]
            mask = np.load(path / "mask.npy").reshape(n_ch, *meta["image_shape"][1:])
        width = padded_width(meta["pixels"]) if meta["precision"] == "bf16" else meta["pixels"]
        if raw.shape != (len(reference), width):
            raise WorkbenchError(f"{path / 'vectors.npy'}: shape {raw.shape} does not match the index ({len(reference)}, {width})")
        vectors = torch.from_numpy(raw)
        if meta["precision"] == "bf16":
            vectors = vectors.view(torch.int16).view(torch.bfloat16) if raw.dtype == np.uint16 else vectors
        return cls(reference, channels=meta["channels"], mask=mask, precision=meta["precision"], device=device,
                   block=meta["block"], _prepared=(vectors, constant, coarse, resid, norms))


def topk_pruned(queries, reference, k: int = 1, *, device: str = "auto", channels=None, mask=None,
                precision: str = "auto", block_size: int | None = None, progress: bool = False) -> SearchResult:
    """One pruned search (``method="pruned"`` of :func:`~workbench.search.topk_correlation`): index
    ``reference``, then search it with pruning.  For repeated searches build the index once yourself."""
    index = CorrelationIndex(reference, channels=channels, mask=mask, precision=precision, device=device)
    return index.topk(queries, k, method="pruned", block_size=block_size, progress=progress)
