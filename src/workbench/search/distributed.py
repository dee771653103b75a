"""Exact top-k Pearson correlation on a Dask cluster: the reference store is sharded across workers.

:func:`topk_correlation_dask` cuts the reference (a SliceStore or a view of one) into contiguous
shards of view positions.  Each worker opens the store *by path*, takes the store rows of its
shard and runs the single-process search on it (streaming brute force, or a pruned search of an
index built there: the ``method`` of :func:`~workbench.search.topk_correlation`); the
queries travel once to every worker, the images of the reference never travel at all.  Every
shard returns its exact float64 top-k, so the merged top-k (value descending, ties by lower
index) is identical to the single-process search over the whole reference.  A distinct-subject
search (``distinct=``) asks each shard for its k best subjects' best matches too, rescoring only
what those need, and merges them (:func:`_merge`).

Running on a real cluster
-------------------------
1. **Put the store on shared storage** (NFS, Lustre, GPFS, a cloud file system...) mounted at the
   same path on every worker node, e.g. ``/shared/stores/brats``.  If it is mounted somewhere else
   on the workers, pass that path as ``worker_path=``.  Every worker re-opens the store itself and
   checks that its shape (and ``store.json``'s creation stamp) matches the client's, so a
   different store under the same path is caught instead of silently searched.

2. **Start a scheduler and workers**::

       # on the scheduler node
       dask scheduler                                    # listens on tcp://<host>:8786
       # on each worker node: N single-threaded worker processes
       dask worker tcp://scheduler-host:8786 --nworkers 4 --nthreads 1 --memory-limit 8GiB

   On SLURM, ``dask_jobqueue.SLURMCluster(cores=4, processes=4, memory="32GiB", ...)`` followed
   by ``cluster.scale(jobs=8)`` does the same through the queue.

3. **Connect and search** (from a notebook or a script)::

       from dask.distributed import Client
       from workbench.data.store import SliceStore
       from workbench.search.distributed import topk_correlation_dask

       client = Client("tcp://scheduler-host:8786")
       train = SliceStore.open("/shared/stores/brats").where(split="train")
       synthetic = SliceStore.open("runs/ddpm/samples")        # queries: read here, sent once
       result = topk_correlation_dask(synthetic, train, k=5, client=client, progress=True)

Memory and threads.  A worker holds the queries (float64, Q x C x H x W) plus one block of its
shard at a time (``block_size`` images, default about 256 MB of float32): the shard streams from
storage block by block, so a shard may be far larger than the worker's memory.  The per-query
candidate lists are small (k + 16 per query).  Torch runs inside each task with its own thread
pool: the Dask nanny starts worker processes with ``OMP_NUM_THREADS=1`` (and MKL / OpenBLAS
likewise), so ``--nthreads 1 --nworkers <cores>`` uses every core with one torch thread each,
which is the usual best choice for this matrix-product work.  With fewer, larger workers
(``--nworkers 1 --nthreads 1`` on a 16-core node) pass ``torch_threads=16`` so torch uses the
cores.  Workers with a CUDA GPU search on it (``device="auto"``); use one worker per GPU.
By default there are two shards per worker, so a slow worker does not hold up the end.

The compute layer does not need Dask: ``distributed`` is imported only when this function runs.
"""
from __future__ import annotations

import dataclasses
import socket
import traceback
import warnings

import numpy as np
import torch
from ..progress import tqdm

from ..data.store import SliceStore, align_channels
from ..errors import TooFewReferenceImages, WorkbenchError
from .index import METHODS, topk_pruned
from .kernel import label_best
from .result import SearchResult, mark_constant_queries
from .streaming import topk_streaming

#: shards per worker when ``shards`` is not given
SHARDS_PER_WORKER = 2
#: the options of ``topk_correlation`` that the search of each shard takes
SHARD_OPTIONS = ("device", "method", "channels", "mask", "precision", "block_size")


def _queries_array(queries) -> np.ndarray:
    if isinstance(queries, SliceStore):
        return queries.to_array()
    if isinstance(queries, torch.Tensor):
        return queries.detach().cpu().numpy()
    if isinstance(queries, np.ndarray):
        return queries
    raise WorkbenchError(f"queries: expected a numpy array, torch tensor or SliceStore, got {type(queries).__name__}")


def _shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges of ``range(n)``, sizes differing by at most one."""
    edges = [n * i // shards for i in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _pack_rows(rows: np.ndarray):
    """Store rows of a shard as ``(start, stop)`` when contiguous (the usual case), else the array."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return (int(rows[0]), int(rows[-1]) + 1)
    return rows


def _unpack_rows(rows) -> np.ndarray:
    if isinstance(rows, tuple):
        return np.arange(rows[0], rows[1], dtype=np.int64)
    return rows


def _same_kind(err: WorkbenchError, message: str) -> WorkbenchError:
    """A fresh error of ``err``'s class (StoreError stays a StoreError) with ``message``, no remote traceback."""
    try:
        return type(err)(message)
    except Exception:  # a subclass with a different constructor
        return WorkbenchError(message)


def _search_in_process(queries, shard, k: int, *, method: str = "auto", **options) -> SearchResult:
    """The single-process search of one shard, by ``method`` as ``topk_correlation`` chooses it."""
    search = topk_pruned if method == "pruned" else topk_streaming
    return search(queries, shard, k, progress=False, **options)


def _search_shard(path: str, rows, queries: np.ndarray, k: int, expect: dict, label: str,
                  torch_threads: int | None, options: dict):
    """Runs on a worker: open the store by path, search the shard's rows, return its local top-k.

    Returns the shard's SearchResult, or ``None`` when every image of the shard is constant.
    """
    try:
        from distributed import get_worker

        host = f"{get_worker().address} ({socket.gethostname()})"
    except Exception:  # pragma: no cover - run outside a worker
        host = socket.gethostname()
    try:
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        store = SliceStore.open(path)
        shape = list(store.shape)
        if shape != expect["shape"] or (expect["created"] is not None and store.meta.get("created") != expect["created"]):
            raise WorkbenchError(
                f"the store found at this path has shape {tuple(shape)} (created {store.meta.get('created')}) but the "
                f"client's has {tuple(expect['shape'])} (created {expect['created']}): is the same store mounted at "
                "this path on every worker?")
        shard = store.take(_unpack_rows(rows)).with_channels(expect.get("channels", store.channels))
        kk = min(k, len(shard))
        with warnings.catch_warnings():  # constant-image warnings are merged and issued once by the client
            warnings.simplefilter("ignore")
            try:
                res = _search_in_process(queries, shard, kk, **options)
            except TooFewReferenceImages as err:
                # fewer than kk non-constant images in this shard is fine (the other shards hold the
                # rest; the client checks the total): search for as many as there are
                if err.available == 0:
                    return None
                kk = err.available
                res = _search_in_process(queries, shard, kk, **options)
        if res.by_label is not None and kk >= len(shard) - len(res.constant_reference):
            # every image of the shard was in its list: every label it holds is among its answer's,
            # so a query is done here even with fewer than k labels (_merge)
            res.by_label = (*res.by_label[:2], np.ones(len(res.by_label[2]), dtype=bool))
        return res
    except Exception as err:
        where = f"{path}: {label} failed on worker {host}"
        if isinstance(err, WorkbenchError):
            msg = str(err)
            msg = msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg  # name the path once
            raise _same_kind(err, f"{where}: {msg}") from None
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        at = f" (at {frame.filename}:{frame.lineno})" if frame else ""
        raise WorkbenchError(f"{where}: {type(err).__name__}: {err}{at}") from None


def topk_correlation_dask(queries, reference, k: int = 1, *, client, shards: int | None = None,
                          progress: bool = False, worker_path=None, torch_threads: int | None = None,
                          by_label=None, **options) -> SearchResult:
    """:func:`~workbench.search.topk_correlation` with the reference sharded over a Dask cluster.

    Parameters
    ----------
    queries : numpy array / torch tensor ``(Q, C, H, W)`` or ``(Q, H, W)``, or a SliceStore;
        read into memory here and sent once to every worker (they should be small).
    reference : a SliceStore or a view of one (``store.where(split="train")``), on storage that
        every worker can read at ``reference.path`` (or at ``worker_path``).
    k : matches per query.
    client : a ``dask.distributed.Client``.
    shards : how many pieces to cut the reference into (default: two per worker, at most one
        per image).  Each is searched by one task.
    progress : show a progress bar over finished shards.
    worker_path : where the workers find the store, if not at ``reference.path`` on them.
    torch_threads : call ``torch.set_num_threads`` in each task (default: leave it alone).
    **options : passed on to the search of each shard: ``device``, ``method``, ``channels``,
        ``mask``, ``precision``, ``block_size`` (as in ``topk_correlation``).
    by_label : the distinct search's ``(codes, k_labels, k_plain)``
        (:func:`~workbench.search.topk_correlation`): each shard rescores only what its top
        ``k_plain`` and its k best labels' bests need, and the shards' answers are merged (a label
        whose best lies in a shard that did not list it is behind k labels there, so behind k labels
        overall); the result holds the top ``k_plain`` and ``by_label``.

    Returns
    -------
    SearchResult, identical to ``topk_correlation(queries, reference, k)``: ``indices`` are
    positions in ``reference`` (the view), ``constant_reference`` too.  The counters are summed
    over the shards: ``pairs`` is Q x N as before, and ``rescored`` counts every shard's float64
    rescores, so it is larger than a single-process search's (each shard keeps its own
    candidates).  ``stats`` holds the shards' common entries, per-query counts summed, and
    ``shards``.

    >>> client = Client("tcp://scheduler:8786")                                            # doctest: +SKIP
    >>> train = SliceStore.open("/shared/store").where(split="train")                      # doctest: +SKIP
    >>> values, indices = topk_correlation_dask(synthetic, train, k=5, client=client)      # doctest: +SKIP
    """
    if not isinstance(reference, SliceStore):
        raise WorkbenchError(
            f"reference: the Dask search needs a SliceStore (or a view of one) on storage that every worker can "
            f"read, got a {type(reference).__name__}; write it with StoreWriter to a shared folder and pass "
            "SliceStore.open(path), or call topk_correlation without client= to search in this process")
    unknown = sorted(set(options) - set(SHARD_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected options {unknown} (the search of a shard takes {', '.join(SHARD_OPTIONS)})")
    method = options.get("method", "auto")
    if method not in METHODS:
        raise WorkbenchError(f"method must be 'auto', 'brute' or 'pruned', got {method!r}")
    queries = align_channels(queries, reference, what="queries")  # paired by channel name, never by position
    from distributed import as_completed  # imported here: the compute layer does not need Dask

    q = _queries_array(queries)
    if q.ndim == 3:
        q = q[:, None]
    if q.ndim not in (4, 5):
        raise WorkbenchError(f"queries: expected images (N, C, H, W) or (N, H, W), or volumes (N, C, D, H, W), "
                             f"got shape {q.shape}")
    n = len(reference)
    if q.shape[1:] != tuple(reference.image_shape):
        raise WorkbenchError(f"queries have images of shape {q.shape[1:]} but reference images are {tuple(reference.image_shape)}")
    if n == 0 or len(q) == 0:
        raise WorkbenchError("empty queries or reference: nothing to search")
    if not 1 <= k <= n:
        raise WorkbenchError(f"k={k} must be between 1 and the reference size {n}")
    if shards is None:
        n_workers = len(client.nthreads()) or 1  # workers connected now
        shards = SHARDS_PER_WORKER * n_workers
    shards = int(shards)
    if shards < 1:
        raise WorkbenchError(f"shards={shards}: need at least one shard")
    shards = min(shards, n)  # every shard holds at least one image
    bounds = _shard_bounds(n, shards)

    path = str(worker_path if worker_path is not None else reference.path)
    expect = {"shape": list(reference.meta.get("shape", [])), "created": reference.meta.get("created"),
              "channels": reference.channels}  # a view may read some channels, in its own order
    q_future = client.scatter(np.ascontiguousarray(q), broadcast=True, hash=False)  # a fresh key per call
    futures = {}
    for i, (a, b) in enumerate(bounds):
        label = f"shard {i + 1}/{shards} (view positions {a}..{b - 1}, {b - a} images)"
        shard_options = dict(options)
        if by_label is not None:  # the shard's positions a..b-1 are its rows 0..b-a-1
            shard_options["by_label"] = (np.asarray(by_label[0])[a:b], *by_label[1:])
        fut = client.submit(_search_shard, path, _pack_rows(reference.rows[a:b]), q_future, k, expect, label,
                            torch_threads, shard_options, pure=False)
        futures[fut] = (i, label)

    parts: list = [None] * shards  # SearchResult per shard, None for a shard of constant images
    bar = tqdm(total=shards, desc="searching shards", unit="shard", disable=not progress)
    try:
        for fut in as_completed(list(futures)):
            i, label = futures[fut]
            try:
                parts[i] = fut.result()
            except WorkbenchError as err:  # raised on the worker, message already names path and shard
                raise _same_kind(err, str(err)) from None
            except Exception as err:  # the task never ran or its worker died (KilledWorker, ...)
                raise WorkbenchError(f"{path}: {label} failed: {type(err).__name__}: {err}") from None
            bar.update(1)
    finally:
        bar.close()
        for fut in futures:
            fut.cancel()
        q_future.release()
    return _merge(parts, bounds, k, len(q), n, by_label)


def _merge(parts: list, bounds: list[tuple[int, int]], k: int, nq: int, n: int, by_label=None) -> SearchResult:
    """Concatenate the shards' local top-k (indices offset to view positions) and keep the best k.

    ``parts[i]`` is shard i's SearchResult, or None when all its images are constant.  With
    ``by_label`` the shards returned their top ``k_plain`` and their k best labels' bests: those are
    merged too (:func:`~workbench.search.kernel.label_best` over every shard's labels' bests), and
    a query is done where every shard was and k labels were found.
    """
    done = [(p, a) for p, (a, _) in zip(parts, bounds) if p is not None]
    const_r = np.concatenate([np.asarray(p.constant_reference, dtype=np.int64) + a for p, a in done]
                             + [np.arange(a, b, dtype=np.int64) for p, (a, b) in zip(parts, bounds) if p is None])
    const_r = np.sort(const_r)
    n_valid = n - len(const_r)
    if n_valid < k:
        raise TooFewReferenceImages(f"k={k} but only {n_valid} reference images are non-constant", k=k, available=n_valid)
    if len(const_r):
        warnings.warn(f"{len(const_r)} reference image(s) are constant (zero variance) and cannot be matched: "
                      f"{const_r[:10].tolist()}", stacklevel=3)
    values = np.concatenate([np.asarray(p.values, dtype=np.float64) for p, _ in done], axis=1)
    indices = np.concatenate([np.where(p.indices >= 0, p.indices + a, -1) for p, a in done], axis=1)
    const_q = np.asarray(done[0][0].constant_queries, dtype=bool)  # the same in every shard
    # value descending, ties by the lower index: the order of the single-process search
    keys = np.where(indices >= 0, indices, np.iinfo(np.int64).max)
    order = np.lexsort((keys, -values), axis=1)[:, :k if by_label is None else by_label[2]]
    values = np.take_along_axis(values, order, 1)
    indices = np.take_along_axis(indices, order, 1)
    mark_constant_queries(values, indices, const_q)
    out = {"values": values, "indices": indices, "constant_queries": const_q, "constant_reference": const_r}
    if by_label is not None:
        if any(p.by_label is None for p, _ in done):
            raise AssertionError("a shard's search ignored by_label")
        lv = np.concatenate([p.by_label[0] for p, _ in done], axis=1)
        li = np.concatenate([np.where(p.by_label[1] >= 0, p.by_label[1] + a, -1) for p, a in done], axis=1)
        qi = np.repeat(np.arange(nq), li.shape[1]).reshape(li.shape)
        found = li >= 0
        bv, bi, enough = label_best(qi[found], li[found], lv[found], np.asarray(by_label[0]), by_label[1], nq,
                                    np.full(nq, -np.inf))
        bv[const_q], bi[const_q] = -np.inf, -1
        out["by_label"] = (bv, bi, enough & np.logical_and.reduce([p.by_label[2] for p, _ in done]))
    for f in dataclasses.fields(SearchResult):  # counters (pairs, rescored...) add up over the shards
        if f.name in out or f.name == "by_label":
            continue
        got = [getattr(p, f.name) for p, _ in done]
        if all(isinstance(g, (int, np.integer)) for g in got):
            out[f.name] = int(sum(got))
        elif f.name == "stats" and all(isinstance(g, dict) for g in got):
            out[f.name] = _merge_stats(got)
        else:
            out[f.name] = got[0]
    if "pairs" in out:
        out["pairs"] = nq * n  # shards of constant images searched nothing but count as screened
    return SearchResult(**out)


def _merge_stats(stats: list[dict]) -> dict:
    """One stats dict: per-query counts summed over shards, equal entries kept, differing ones listed."""
    merged = {}
    for key in dict.fromkeys(k for s in stats for k in s):
        vals = [s[key] for s in stats if key in s]
        if key.endswith("_per_query"):
            merged[key] = float(sum(vals))
        elif all(v == vals[0] for v in vals):
            merged[key] = vals[0]
        else:
            merged[key] = sorted(set(vals), key=str) if all(isinstance(v, str) for v in vals) else vals
    merged["shards"] = len(stats)
    return merged
