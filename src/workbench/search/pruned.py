"""The pruned search: projection bounds for every pair, then dense tiles of the survivors.

Bounds alone do not make a search fast: on brain slices the survivors of the novel queries touch
most reference rows, so a search that evaluates them pair by pair reads the whole reference at
gather speed (BENCHMARKS.md, issue 3).  Here survivors are evaluated as tiles
(:mod:`workbench.search.tiles`: their plans and products):

1. **Bounds.** Every pair gets an upper bound on r from the index's codes
   (:mod:`workbench.search.projection`): one Q x N x d product, or, for a large basis, a cascade:
   the first ``level1`` codes for every pair and all d only for the pairs that survive those.
   Steps 1-2 and the survivors of step 3 go a group of queries at a time where all the bounds
   would take more than HOLD_BOUNDS_BYTES: each group's are computed once, held to its survivors.
2. **Seeds.** Each query's k + SEED_EXTRA references of highest projected r (c_x.c_y) are
   evaluated first, exactly (the float64 kernel of the rescore, :func:`~workbench.search.kernel.exact_pairs`);
   the k-th best of them is tau, a lower bound on the query's true k-th best.  Projected r
   ranks near-copies and neighbouring slices well, so tau lands close to the truth, and the
   seeds are most of the pairs the rescore needs (BENCHMARKS.md).
3. **Tiles.** Every pair whose bound reaches tau survives.  For each tile of consecutive rows
   (:func:`~.tiles.tile_rows`: 64-512), the queries with a survivor there and the rows with a
   survivor there form one dense float32 product (slices of TIER_CHUNK pixels, error at most
   :func:`~.tiles.tier_error_bound`; a bf16 index's rows are widened to float32, each off by at
   most its ``row_error``), or, where under SPARSE_DENSITY of those pairs survive, the surviving
   pairs alone are computed in the same slices (:func:`~.tiles.pair_product`, a sampled product):
   the survivors are scattered, 0.16 % of the pairs at (b) against 3.1 % in dense tiles.  Rows
   are read only for these tiles, in index order; from disk, threads read the next tiles' rows
   (O_DIRECT) while one is multiplied, and the rows enter the products as stored, divided by the
   index's mean and norm of each row (:func:`~.tiles.raw_row_error`).
4. **Rescore.** Pairs whose float32 interval reaches the k-th best lower end are rescored in
   float64, beside the seeds; the top k is the float64 brute-force top k.

Every pair of the true top k has r >= its query's true k-th best >= tau, so its bound reaches tau
and it is evaluated in step 2 or 3: the answer is exact.  Reference order matters (survivors of a
query must share tiles); store order (subject, then slice) groups them as well as k-means on the
codes did on brain phantoms, and ball bounds per k-means cluster pruned almost nothing
(BENCHMARKS.md), so the index keeps store order and has no cluster level.

The search is a class (:class:`PrunedSearch`, one per search) so that each step reads as a method
over the state the steps share; :class:`TileRunner` holds what the tiles evaluated.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from ..errors import TooFewReferenceImages
from ..progress import tqdm
from . import projection, tiles
from .bounds import ieee_float32
from .kernel import exact_pairs, kth_largest, label_best, label_keep, labelled_floor, top_of
from .result import SearchResult, mark_constant_queries
from .tiles import (TIER_CHUNK, Tile, chunked, pair_plan, pair_product, pair_product_by_rows,
                    plan_pairs, plan_work, predict_tiles, raw_row_error, seeds_and_bounds, split_sample,
                    tier_error_bound, tile_plan, tile_product, tile_rows)

#: seeds per query beyond k: its k + SEED_EXTRA references of highest projected r are evaluated
#: first, and the k-th best of them sets the query's threshold tau
SEED_EXTRA = 1
#: seed pairs evaluated in float64 to time the float64 kernel where the seeds are float32 (``by_label``)
RATE_PAIRS = 512
#: (pair, slice) entries of one sampled product where the sampled tiles of a stage are evaluated
#: together (rows in memory): bounds its pattern (about 20 bytes an entry)
MERGED_ENTRIES = 2**22
#: ``method="auto"`` goes brute without sampling where the tiles would evaluate more than this
#: fraction of the pairs (a tile's pair costs 2-9x a brute-force pair, BENCHMARKS.md)
AUTO_MAX_FRACTION = 0.5
#: ``method="auto"`` also goes brute without sampling where the tiles, at the seconds per pair that
#: an earlier search of the same index measured on its sample (``auto["tile_rate"]``), would take
#: this many times brute force's screen: a sample is lost where it goes brute
#: (at (a), k = 50, bf16 rows: 51-53 ms of a 0.39 s search that brute force alone did in 0.30-0.32 s;
#: BENCHMARKS.md, issue 16 item 21)
AUTO_SKIP_MARGIN = 1.5
#: the float32 bounds of a group of queries x N references are held from the seeds to the survivors
#: up to this size; larger searches go a group of queries at a time (at workload (b), 1,000 x 80,000,
#: holding all of them took 320 MB of a peak near the 3 GB target; computing them a second time for
#: the survivors instead, as until issue 16 item 22, cost 0.3-0.5 s)
HOLD_BOUNDS_BYTES = 128 * 2**20
#: rows read from disk: while a tile is multiplied, the rows of the next PREFETCH_TILES + 1 tiles are
#: read (``CorrelationIndex.raw_reader``: O_DIRECT, by a few threads, into buffers of the reader's own,
#: at most PREFETCH_TILES + 2 of them).  At (b),
#: k = 5, rows on disk, the tiles took 5.5 s so against 16.5-17.5 s when the kernel was asked for
#: them (posix_fadvise) and they were read through the page cache in the search's own thread
#: (BENCHMARKS.md, issue 16 item 16; a thread reading through the page cache had taken the
#: products' second core for its copies, item 13)
PREFETCH_TILES = 2
#: ... and reading a float16 row copy (``row_copy``): one tile fewer, so that its reading buffers
#: and the rows widened to float32 take no more memory than a search reading the store.  At (b),
#: k = 5, rows on disk, in one script: 512-row tiles 1 ahead 6.9-7.6 s, peak 2.33 GiB; 0 ahead
#: 8.8-10.9 s, 2.28 GiB; 1,024-row tiles 0 ahead 7.1-7.7 s, 2.52 GiB (the store 2 ahead:
#: 10.3-10.7 s, 2.32 GiB; BENCHMARKS.md, issue 16 item 17)
COPY_PREFETCH_TILES = 1


def unique_pairs(qi: torch.Tensor, ri: torch.Tensor, si: torch.Tensor | None, n: int):
    """Each evaluated (query, reference) pair once: ``(qi, ri, si)`` without repeats, or, with
    ``si`` None, the positions that keep the first of each."""
    _, once = np.unique(qi.numpy() * n + ri.numpy(), return_index=True)
    once = torch.from_numpy(once)
    return once if si is None else (qi[once], ri[once], si[once])


def kth_lower(values: torch.Tensor, qi: torch.Tensor, nq: int, k: int) -> torch.Tensor:
    """Per query, the k-th largest of ``values`` over its pairs (-inf with fewer than k pairs):
    :func:`~workbench.search.kernel.kth_largest` on tensors."""
    return torch.from_numpy(kth_largest(values.numpy(), qi.numpy(), nq, k))


class TileRunner:
    """Evaluates plans of tiles (step 3, and a distinct search's float32 seeds) and keeps the
    evaluated pairs that may still matter: ``got_q``, ``got_r``, ``got_s`` (lists of CPU tensors:
    query, reference position, value), ``evaluated`` (pairs in all).

    ``qc`` is the queries' float32 layout (:func:`~.tiles.chunked`); ``eps`` the tiles' error bound
    for every pair, or ``row_eps`` one per reference row (float64, CPU); ``raw``
    ``(qsum, mean, norm)`` where rows from disk enter the products as stored
    (:func:`~.tiles.raw_row_error`); ``whole`` the index's float32 unit rows where the sampled
    tiles' pairs are taken from them in place; ``ahead`` tiles of rows are read ahead where
    ``streamed``."""

    def __init__(self, ref, qc: torch.Tensor, dev, dim: int, eps: float, row_eps: torch.Tensor | None, raw,
                 whole: torch.Tensor | None, streamed: bool, ahead: int, progress: bool):
        self.ref, self.qc, self.dev, self.dim = ref, qc, dev, dim
        self.eps, self.row_eps = eps, row_eps
        self.row_eps_dev = None if row_eps is None else row_eps.to(dev)  # float64
        self.raw, self.whole, self.streamed, self.ahead, self.progress = raw, whole, streamed, ahead, progress
        self.const_dev = torch.from_numpy(ref.constant).to(dev)  # constant references: never candidates
        # empty to start with, so that a search with nothing to evaluate (every query constant) still concatenates
        self.got_q, self.got_r = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
        self.got_s = [torch.zeros(0, dtype=torch.float64)]
        self.evaluated = 0
        self.gathered = [None]  # the tiles' query gathers, one buffer reused (tile_product)
        self.widened = [None]  # a row copy's rows widened a few slices at a time, one buffer reused (pair_product)
        # seconds and pairs of every product of sampled tiles taken together (``whole``): auto's rate
        # for the rest of such tiles.  One product's fixed cost weighs on a small sample: at (a), k = 200,
        # a sample of 946 pairs cost 5.9 us a pair against 1.7 over a whole stage, predicted 0.42 s for
        # the rest against 0.13 s by the larger sample before the seeds, and auto switched to brute
        # force after the seeds (1.13-1.33 s; brute force alone 0.80 s: BENCHMARKS.md, issue 16 item 14)
        self.merged_tally = [0.0, 0]

    def pair_eps(self, ri: torch.Tensor):
        """The error bound of the tiles' values of the pairs on reference rows ``ri`` (CPU)."""
        return self.eps if self.row_eps is None else self.row_eps[ri]

    def pairs_of(self, tile: Tile):
        """A tile's pairs as (query, reference position), queries ascending."""
        qi, lr = tile.pair_index(self.dev)
        return qi, torch.from_numpy(tile.rows).to(self.dev)[lr]

    def product(self, tile: Tile, r32: torch.Tensor):
        """``(qi, ri, s)``: the tile's evaluated pairs (query, reference position) and their values."""
        qi, lr = tile.pair_index(self.dev)
        if tile.pairs is None:  # every pair, as a (queries x rows) product, then pair by pair
            s = tile_product(self.qc, tile.queries.to(self.dev), r32.float(), self.gathered).reshape(-1)  # a row copy's widened
        else:
            s = pair_product(self.qc, qi, lr, r32, self.widened)
        return qi, torch.from_numpy(tile.rows).to(self.dev)[lr], s

    def keep(self, qi: torch.Tensor, ri: torch.Tensor, s: torch.Tensor, floor: torch.Tensor | None):
        """Keep the evaluated pairs that may still reach a k-th place (all, before tau is known)."""
        if self.raw is not None:  # (x32.y - m S) / n in float64 (raw_row_error); constant rows are set to -inf below
            qsum, raw_mean, raw_norm = self.raw
            s = s.double().sub_(qsum[qi] * raw_mean[ri]).div_(raw_norm[ri])
        self.evaluated += s.numel()
        s[self.const_dev[ri]] = -math.inf  # a span may hold constant references
        if floor is None:
            keep = s > -math.inf
        else:
            e = self.eps if self.row_eps is None else self.row_eps_dev[ri]
            # s >= tau - e compared in float64 (s is exact there): s + e rounded to float32 could
            # fall below tau by a rounding the bound does not cover
            keep = s >= floor[qi] - e
        self.got_q.append(qi[keep].cpu())
        self.got_r.append(ri[keep].cpu())
        self.got_s.append(s[keep].double().cpu())

    def run(self, plan: list, floor: torch.Tensor | None, desc: str, times: list | None = None):
        """Evaluate the plan's tiles in order.  Rows from disk are read ahead, the next
        PREFETCH_TILES + 1 tiles' rows (COPY_PREFETCH_TILES + 1 from a row copy) while a tile is
        multiplied (``raw_reader``).
        In memory (``whole``), the sampled tiles' pairs are evaluated together, in products of up
        to MERGED_ENTRIES (pair, slice) entries.  ``times``: a list that receives each tile's
        seconds, in plan order (the sampled tiles evaluated together share theirs by pairs)."""
        seconds = {}
        merged = [j for j, t in enumerate(plan) if t.pairs is not None] if self.whole is not None else []
        with tqdm(total=len(plan), desc=desc, unit="tile", disable=not self.progress) as bar:
            if merged:
                t0 = time.perf_counter()
                parts = [self.pairs_of(plan[j]) for j in merged]
                qi, ri = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                order = torch.sort(ri, stable=True).indices  # each product's pairs over a range of rows
                qi, ri = qi[order], ri[order]
                step = max(1, MERGED_ENTRIES // max(1, self.dim // TIER_CHUNK))
                for a in range(0, len(qi), step):
                    self.keep(qi[a:a + step], ri[a:a + step],
                              pair_product_by_rows(self.qc, qi[a:a + step], ri[a:a + step], self.whole), floor)
                spent = time.perf_counter() - t0
                total = sum(len(p[0]) for p in parts)
                self.merged_tally[0] += spent
                self.merged_tally[1] += total
                for j, p in zip(merged, parts):
                    seconds[j] = spent * len(p[0]) / max(total, 1)
                bar.update(len(merged))
            skip = set(merged)
            todo = [j for j in range(len(plan)) if j not in skip]
            with self.ref.raw_reader(self.ahead) if self.streamed else contextlib.nullcontext() as reader:
                rows = reader.stream([plan[j].rows for j in todo], self.ahead + 1) if self.streamed else None
                for j in todo:
                    t0 = time.perf_counter()
                    r32 = next(rows) if self.streamed else self.ref.rows32(plan[j].rows)
                    self.keep(*self.product(plan[j], r32.to(self.dev)), floor)
                    seconds[j] = time.perf_counter() - t0
                    bar.update(1)
        if times is not None:
            times.extend(seconds[j] for j in range(len(plan)))


class PrunedSearch:
    """One exact top-k search by the four steps of the module docstring (:func:`tiled_search`
    gives the arguments; :meth:`search` runs it).  The stages' seconds go to ``clock``."""

    def __init__(self, q64: torch.Tensor, const_q: np.ndarray, ref, reference, select, *, k: int, dev,
                 tile: int | None, progress: bool, stacklevel: int, auto: dict | None, by_label):
        self.q64, self.const_q, self.ref, self.reference, self.select = q64, const_q, ref, reference, select
        self.k, self.dev, self.progress, self.stacklevel, self.auto, self.by_label = k, dev, progress, stacklevel, auto, by_label
        self.nq, self.n = len(q64), len(ref.codes)
        self.in_memory = not getattr(ref, "from_disk", False)
        # rows from disk are read ahead (ref.raw_reader): the float16 row copy's where the index has one
        self.copied = not self.in_memory and getattr(ref, "row_copy", None) is not None
        self.place = ref.row_copy.rows if self.copied else None  # the tiles are cut in the copy's (cluster) order
        self.tile = tile or tile_rows(select.dim)
        self.n_valid = self.n - int(ref.constant.sum())
        if self.n_valid < k:
            raise TooFewReferenceImages(f"k={k} but only {self.n_valid} reference images are non-constant", k=k,
                                        available=self.n_valid)
        self.stats_rows = getattr(ref, "stats", None)  # each stored row's mean and norm (the rescore's)
        self.clock = {"start": time.perf_counter()}

    def lap(self, name: str):
        """The seconds since the last lap, added to stage ``name``'s."""
        now = time.perf_counter()
        self.clock[name] = self.clock.get(name, 0.0) + now - self.clock.pop("last", self.clock["start"])
        self.clock["last"] = now

    def exact(self, qi: torch.Tensor, ri: torch.Tensor) -> np.ndarray:
        """The pairs' r in float64, by the rescore's kernel."""
        return exact_pairs(self.q64, self.reference, self.select, qi.numpy(), ri.numpy(), self.stats_rows)

    def search(self) -> SearchResult | None:
        """The four steps in order: the result, or None where ``method="auto"`` hands over to brute force."""
        self.codes_and_layout()
        self.seeds_and_survivors()
        plan = self.plan()
        if self.auto is not None:
            plan = self.weigh_auto(plan)
            if plan is None:
                return None
        self.tiles_sampled = sum(t.pairs is not None for t in plan)
        self.runner.run(plan, self.tau_dev, "searching tiles")
        self.lap("tiles_s")
        return self.rescore()

    def codes_and_layout(self):
        """Step 1's query codes, and the queries' float32 layout for the tiles (:class:`TileRunner`)."""
        ref, dev, q64, select = self.ref, self.dev, self.q64, self.select
        self.level1 = level1 = getattr(ref, "level1", None)
        qdev = q64.to(dev)  # float64: the codes and the tiles' layout round it to float32 block by block
        if level1:  # a cascade: bounds from the first level1 codes for every pair, the rest per tile
            cq, rho_q, slack_q, (rho1_q, slack1_q) = projection.codes(qdev, ref.basis.to(dev), ref.delta, prefix=level1)
            self.first = (cq[:, :level1].contiguous(), rho1_q, slack1_q, ref.codes[:, :level1], ref.rho1, ref.slack1)
        else:
            cq, rho_q, slack_q = projection.codes(qdev, ref.basis.to(dev), ref.delta)
            self.first = (cq, rho_q, slack_q, ref.codes, ref.rho, ref.slack)
        self.cascade = (cq, rho_q, slack_q) if level1 else None
        self.lap("codes_s")
        eps = tier_error_bound(select.dim)
        # a bf16 index's rows are bf16 copies of the unit vectors (a row copy's on disk float16 ones):
        # each row's tiles are off by at most its own bound (ref.row_error, per row), else one bound for all pairs
        row_eps = getattr(ref, "row_error", None)
        # rows from disk (without a row copy) enter the tiles as stored, with the index's mean and norm
        # of each row (raw_row_error): normalising each tile's rows took 2.1 s of (b)'s 17 s (BENCHMARKS.md, item 14)
        raw_rows = not self.in_memory and not self.copied and self.stats_rows is not None
        self.streamed = raw_rows or self.copied
        qc = chunked(qdev)
        raw = None
        if raw_rows:
            row_eps = raw_row_error(select.dim, self.stats_rows)
            st = torch.as_tensor(np.asarray(self.stats_rows), dtype=torch.float64)
            # S = sum(x32) per query in float64 (raw rows), x32 the float32 rounding of the query that the
            # layout qc holds: exact to far below the bound's 1e-12; from the contiguous float64 rows on
            # the CPU, 64 at a time, by numpy's float32-to-float64 sum (torch's sum with dtype=float64 took
            # 0.4-0.8 s at (b), numpy's 0.08-0.1 s; the same sum over the slices of qc 0.75 s)
            qsum = torch.from_numpy(np.concatenate([np.add.reduce(q64[a:a + 64].float().numpy(), axis=1,
                                                                  dtype=np.float64)
                                                    for a in range(0, len(q64), 64)])).to(dev)
            raw = (qsum, st[:, 0].to(dev), st[:, 1].to(dev))
        self.raw_rows, self.row_eps = raw_rows, row_eps
        del qdev
        self.live = torch.from_numpy(~self.const_q).to(dev)
        # in memory, float32 rows filling whole slices: the sampled tiles' pairs are taken from the index's
        # rows in place (global positions), all tiles of a stage in a few products (pair_product_by_rows); per
        # tile, gathering their rows and one small product each cost more than the pairs at (a)
        whole = None
        # read from the module at each search: benchmarks/search_gpu.py widens it for one row of its table
        self.sparse_here = torch.device(dev).type in tiles.SPARSE_DEVICES
        if self.sparse_here and self.in_memory and row_eps is None and select.dim % TIER_CHUNK == 0:
            whole = getattr(ref, "vectors", None)
            whole = whole.to(dev) if whole is not None and whole.dtype == torch.float32 else None
        self.whole = whole
        self.runner = TileRunner(ref, qc, dev, select.dim, eps, row_eps, raw, whole, self.streamed,
                                 COPY_PREFETCH_TILES if self.copied else PREFETCH_TILES, self.progress)
        self.lap("codes_s")  # with the codes, the queries' layout for the tiles (qc) and their sums

    def float_seeds_tau(self, sq: torch.Tensor, sr: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """The seeds ``(sq, sr)`` of queries a:b evaluated as float32 tiles (kept as evaluated pairs,
        those that may reach a k-th place), and per query the k-th largest of their lower ends."""
        run, by_label = self.runner, self.by_label
        n0 = len(run.got_q)
        run.run(pair_plan(sq.numpy(), sr.numpy(), self.tile, self.in_memory, self.sparse_here, self.place), None,
                "seeding tiles")
        gq, gr, gs = (torch.cat(x[n0:]) if len(x) > n0 else x[0] for x in (run.got_q, run.got_r, run.got_s))
        e = run.pair_eps(gr)
        t = kth_lower(gs - e, gq - a, b - a, self.k)
        # below the k-th best label's best and the plain top's, where the seeds hold k labels
        t = torch.from_numpy(labelled_floor(t.numpy(), (gq - a).numpy(), gr.numpy(), (gs - e).numpy(), by_label,
                                            b - a))
        near = gs >= t[gq - a] - e  # as TileRunner.keep keeps the tiles' pairs against tau
        for x, y in ((run.got_q, gq), (run.got_r, gr), (run.got_s, gs)):
            del x[n0:]
            x.append(y[near])
        return t

    def seeds_and_survivors(self):
        """Steps 1-2 and the survivors of step 3, a group of queries at a time: the bounds, the seeds
        and tau, and ``surv`` (queries x whole tiles, bool), the pairs whose bound reaches tau.

        The seeds, each query's m references of highest projected r, are evaluated exactly, in
        float64 by the rescore's own kernel: every seed is a real pair, so the k-th best of a
        query's m distinct seeds is a lower bound on its true k-th best (tau), and the seeds are
        most of the final rescore's pairs, whose rows are so read once (at (b), k = 5, 5,001 of
        its 5,401 pairs: as float32 tiles of the row copy and then rescored from the store, seeds
        and rescore took 1.9 s, exactly 0.9 s; BENCHMARKS.md, issue 16 item 20).
        Constant references have bound -inf and every live query a finite tau, so they never
        survive; constant queries are cut; the seeds are left out.
        Each group's Q_g x N bounds are held from the seeds to the survivors (at most
        HOLD_BOUNDS_BYTES): at (b) all 1,000 queries' bounds are 320 MB of a peak near the 3 GB
        target, and computing them a second time for the survivors cost 0.3 s.
        A distinct search (``by_label``) rescores only a few of a query's top k' (k' of 129 on brain
        phantoms, about 10 of them rescored): its seeds are float32 products like the tiles', and
        tau the k-th largest of their lower ends, still a lower bound on the true k-th best (exact
        seeds took 8.5 s of 14.6 s at 6,000 x 6,216, k' = 129; BENCHMARKS.md, issue 16 item 25)."""
        nq, n, k, dev, by_label, first = self.nq, self.n, self.k, self.dev, self.by_label, self.first
        m = min(k + SEED_EXTRA, self.n_valid)
        self.float_seeds = by_label is not None
        label_seeds = None
        if self.float_seeds and len(np.unique(by_label[0])) >= by_label[1]:
            # each query's k_plain + 1 best projected and the best projected of its k_labels + 1 best
            # labels: the labels' level then holds from the seeds on (labelled_floor); with fewer
            # labels than asked for (a Dask shard's), the k + 1 best projected as ever
            m = min(by_label[2] + SEED_EXTRA, self.n_valid)
            label_seeds = (torch.from_numpy(np.asarray(by_label[0], dtype=np.int64)).to(dev), by_label[1] + SEED_EXTRA)
        per_group = max(1, HOLD_BOUNDS_BYTES // (4 * n))
        n_tiles = -(-n // self.tile)
        surv = torch.zeros((nq, n_tiles * self.tile), dtype=torch.bool, device=dev)  # padded to whole tiles
        seed_q, seed_r, seed_s, taus = [], [], [], []
        seen_q, seen_r = [], []  # every seed, exact or float32
        for a in range(0, nq, per_group):
            g = slice(a, min(a + per_group, nq))
            ub, seeds, _ = seeds_and_bounds((*(x[g] for x in first[:3]), *first[3:]), self.ref.constant,
                                            self.const_q[g], dev, m, label_seeds)
            self.lap("bounds_s")
            q_live = torch.nonzero(self.live[g], as_tuple=True)[0].cpu()
            seen_q.append(q_live.repeat_interleave(seeds.shape[1]) + a)
            seen_r.append(seeds[q_live.to(dev)].reshape(-1).cpu())
            if self.float_seeds:
                taus.append(self.float_seeds_tau(seen_q[-1], seen_r[-1], a, g.stop))
            else:
                seed_q.append(seen_q[-1])
                seed_r.append(seen_r[-1])
                seed_s.append(torch.from_numpy(self.exact(seed_q[-1], seed_r[-1])))
                taus.append(kth_lower(seed_s[-1], seed_q[-1] - a, g.stop - a, k))  # -inf for constant queries
            self.lap("seeds_s")
            torch.ge(ub, taus[-1].float().to(dev)[:, None], out=surv[g, :n])
            del ub
            self.lap("survivors_s")
        self.seed_q, self.seed_r, self.seed_s = (
            torch.cat(x) if x else torch.zeros(0, dtype=dt)
            for x, dt in ((seed_q, torch.long), (seed_r, torch.long), (seed_s, torch.float64)))
        self.seen_q, self.seen_r, self.tau = torch.cat(seen_q), torch.cat(seen_r), torch.cat(taus)
        self.tau_dev = self.tau.to(dev)
        self.seed_rows = len(np.unique(self.seen_r.numpy()))
        self.surv = surv

    def plan(self) -> list:
        """Step 3's survivors (the seeds left out) planned as tiles."""
        surv = self.surv
        del self.surv
        surv[~self.live] = False
        surv[self.seen_q.to(self.dev), self.seen_r.to(self.dev)] = False
        plan = tile_plan(surv, self.tau_dev, self.ref, self.cascade, self.tile, self.sparse_here, self.place)
        del surv
        self.work = plan_pairs(plan)
        self.lap("survivors_s")
        self.rows_read = int(sum(len(t.rows) for t in plan))
        self.n_planned = len(plan)  # the tiles beyond the seeds, the sample of method="auto" included
        return plan

    def pairs_so_far(self):
        """Every evaluated pair once, ``(qi, ri, si, ei, exact)``: value, its error bound, and
        whether it is an exact seed (bound 0; its value kept over a tile's: a dense tile may
        evaluate a seed pair again, and a pair counted twice could lift the k-th best above the
        truth)."""
        run = self.runner
        qi = torch.cat([self.seed_q, *run.got_q])
        ri = torch.cat([self.seed_r, *run.got_r])
        si = torch.cat([self.seed_s, *run.got_s])
        at = unique_pairs(qi, ri, None, self.n)  # the first of each: a seed's exact value
        qi, ri, si = qi[at], ri[at], si[at]
        exact = at < len(self.seed_q)
        ei = torch.zeros(len(qi), dtype=torch.float64) + run.pair_eps(ri)
        ei[exact] = 0
        return qi, ri, si, ei, exact

    def weigh_auto(self, plan: list) -> list | None:
        """``method="auto"``: the rest of the plan where the pruned search should finish first,
        None where brute force should take over (the figures in ``auto``, :func:`tiled_search`).

        Where brute force goes on, it takes the seeds' exact values and their k-th best as each
        query's floor (kernel.screen_and_rescore): the seeds are its rescore's pairs too, so they
        are decided after, not before (a check before them, on samples of the seeds and of tiles
        planned on projected r, went brute at (a), k = 1-5, bf16, 40-70 % slower than either)."""
        auto, run, nq, k = self.auto, self.runner, self.nq, self.k
        work = self.work
        auto["known"] = (self.seed_q.numpy(), self.seed_r.numpy(), self.seed_s.numpy(), self.tau)
        auto["fraction"] = (work + len(self.seed_q)) / max(nq * self.n, 1)
        if auto["fraction"] > AUTO_MAX_FRACTION:
            return None
        at_rate = None if auto.get("tile_rate") is None else auto["tile_rate"] * plan_work(plan)
        if at_rate is not None and at_rate > AUTO_SKIP_MARGIN * auto["brute_s"]:
            auto["tiles_at_rate_s"] = at_rate
            return None
        # the tiles' cost on this machine, measured on a strided sample of them (their pairs kept):
        # each tile's seconds fitted as a fixed cost plus a cost per pair, which predicts the rest
        # (a cost per pair alone misjudged the rest by a third where the sample's tiles were larger)
        sample, plan = split_sample(plan, by_queries=not self.streamed)
        times = []
        run.run(sample, self.tau_dev, "sampling tiles", times)
        spent = float(sum(times))
        done = plan_pairs(sample)
        auto["tile_rate"] = spent / max(plan_work(sample), 1)  # seconds per pair (sampled ones weighted): kept by the index
        sampled = [t for t in plan if t.pairs is not None]
        if self.whole is not None and sampled and run.merged_tally[1]:  # evaluated together: at the rate of all so far
            dense = [(t, sec) for t, sec in zip(sample, times) if t.pairs is None]
            rest = [t for t in plan if t.pairs is None]
            rest_s = run.merged_tally[0] / run.merged_tally[1] * plan_pairs(sampled)
            if rest:
                rest_s += predict_tiles(*zip(*dense), rest) if dense else predict_tiles(sample, times, rest)
        else:
            rest_s = predict_tiles(sample, times, plan)
        auto.update(sample_pairs=done, sample_tiles=len(sample), sample_s=spent, tiles_s=spent + rest_s)
        # each path's rescore beyond the seeds (both have them): the pairs evaluated so far (the
        # seeds, and the sample scaled to the whole plan) that each path's bound could not rule
        # out, at the seeds' measured seconds a pair (the index's probe, one pair per row spread
        # over the reference, took 40-45 us a pair at (a), seeds sharing rows and queries 10-25 us)
        t1 = time.perf_counter()
        qi, ri, si, ei, exact = self.pairs_so_far()
        scale = torch.where(exact, 1.0, work / max(done, 1)).double()
        level = kth_lower(si - ei, qi, nq, k)[qi]
        e_b = auto["brute_eps"][ri] if torch.is_tensor(auto["brute_eps"]) else auto["brute_eps"]
        auto["rescore_pairs"] = int((((si + ei >= level) & ~exact) * scale).sum())
        auto["brute_rescore_pairs"] = int((((si + e_b >= level - e_b) & ~exact) * scale).sum())
        # both paths rescore what their bounds leave: brute force pays for the pairs beyond the tiles'
        pruned_rest = auto["tiles_s"] - spent
        if self.float_seeds:  # the float64 kernel's rate timed on a few seeds
            t2, few = time.perf_counter(), slice(0, min(len(self.seen_q), RATE_PAIRS))
            self.exact(self.seen_q[few], self.seen_r[few])
            auto["exact_pair_s"] = (time.perf_counter() - t2) / max(1, few.stop)
        else:
            auto["exact_pair_s"] = self.clock["seeds_s"] / max(1, len(self.seed_q))
        brute = auto["brute_s"] + max(0, auto["brute_rescore_pairs"] - auto["rescore_pairs"]) * auto["exact_pair_s"]
        auto.update(pruned_rest_s=pruned_rest, brute_total_s=brute, weigh_s=time.perf_counter() - t1)
        if pruned_rest > brute:  # the seeds and the sample are spent either way
            return None
        return plan

    def rescore(self) -> SearchResult:
        """Step 4: the pairs whose interval reaches the k-th best lower end, rescored in float64
        (the seeds are exact), and the result with its stats."""
        nq, k, by_label, const_q = self.nq, self.k, self.by_label, self.const_q
        qi, ri, si, ei, exact = self.pairs_so_far()
        level = kth_lower(si - ei, qi, nq, k)
        if by_label is not None:  # every pair below the labels' level is below tau too (float_seeds_tau)
            level = torch.from_numpy(labelled_floor(level.numpy(), qi.numpy(), ri.numpy(), (si - ei).numpy(), by_label,
                                                    nq))
        keep = (si + ei) >= level[qi]
        k_out, labelled = k, None
        if by_label is not None:  # only what the plain top k_plain and each best label's best need
            codes, k_labels, k_out = by_label
            at = torch.nonzero(keep).squeeze(1)
            wanted = label_keep(qi[at].numpy(), ri[at].numpy(), (si - ei)[at].numpy(), (si + ei)[at].numpy(), codes,
                                k_labels, k_out, nq)
            keep[at[torch.from_numpy(~wanted)]] = False
        todo = keep & ~exact
        si[todo] = torch.from_numpy(self.exact(qi[todo], ri[todo]))
        values, indices = top_of(qi[keep].numpy(), ri[keep].numpy(), si[keep].numpy(), k_out, nq)
        if by_label is not None:
            # every pair left out has r below its query's level or tau (unevaluated and dropped ones)
            labelled = label_best(qi[keep].numpy(), ri[keep].numpy(), si[keep].numpy(), codes, k_labels, nq,
                                  torch.maximum(level, self.tau).numpy())
            labelled[0][const_q], labelled[1][const_q] = -np.inf, -1  # no r: as the plain answer marks them
        mark_constant_queries(values, indices, const_q, stacklevel=self.stacklevel)
        self.lap("rescore_s")
        rescored = len(self.seed_q) + int(todo.sum())
        return SearchResult(values, indices, const_q, np.flatnonzero(self.ref.constant), pairs=nq * self.n,
                            rescored=rescored, stats=self.stats(rescored), by_label=labelled)

    def stats(self, rescored: int) -> dict:
        """The result's ``stats``: what the search did, and each stage's seconds."""
        ref, run, row_eps = self.ref, self.runner, self.row_eps
        self.clock.pop("start"), self.clock.pop("last")
        n_pairs = self.nq * self.n
        screened = run.evaluated + len(self.seed_q)
        precision = ("float32" if row_eps is None else "raw rows, float32 products" if self.raw_rows
                     else f"{ref.row_copy.fmt} row copy, float32 products" if self.copied
                     else "bf16 rows, float32 products")
        return {"method": "pruned", "basis": ref.basis_name, "basis_dim": int(ref.basis.shape[1]), "tile": self.tile,
                "precision": precision, "device": str(self.dev),
                "error_bound": run.eps if row_eps is None else float(row_eps.max()),
                "bound": "uniform" if row_eps is None else "per row", "pixels": self.select.dim,
                "screened_pairs": screened, "full_fraction": screened / max(n_pairs, 1),
                "tiles_evaluated": self.n_planned, "tiles_sampled": self.tiles_sampled,
                "level1": self.level1, "candidates_per_query": rescored / max(self.nq, 1),
                "seed_pairs": len(self.seen_q), "seeds": "float32" if self.float_seeds else "exact",
                "rows_read": self.rows_read + self.seed_rows,
                "seconds": {key: round(v, 4) for key, v in self.clock.items()}}


@ieee_float32()
def tiled_search(q64: torch.Tensor, const_q: np.ndarray, ref, reference, select, *, k: int, dev, tile: int | None = None,
                 progress: bool = False, stacklevel: int = 4, auto: dict | None = None,
                 by_label=None) -> SearchResult | None:
    """Exact top-k by the four steps of the module docstring (:class:`PrunedSearch`).

    ``ref`` carries the index's parts: ``basis``, ``delta``, ``codes``, ``rho``, ``slack``,
    ``constant`` (numpy bool) and ``rows32(positions)``, the float32 unit vectors of sorted
    reference positions.

    ``auto`` (``method="auto"``): a dict holding, from the index's probe, ``brute_s`` (the predicted
    seconds of a brute-force screen) and ``brute_eps`` (its error bound: a number, or per reference
    row).  The float64 evaluation's cost per pair is measured on the seeds (``exact_pair_s``), the
    tiles' on a sample of them (every AUTO_SAMPLE_STRIDE-th tile of the plan, kept), and each
    path's rescore predicted from the pairs evaluated so far that its bound cannot rule out; where
    the rest of the pruned search would take longer than brute force, or the tiles would evaluate
    more than AUTO_MAX_FRACTION of all pairs, this returns None, having spent the bounds, the seeds
    and the sample, and leaves the seeds in the dict (``known``: pairs, exact values and each
    query's k-th best of them) for brute force to take.  ``tile_rate`` (seconds per pair of
    :func:`~.tiles.plan_work`), where given, is an earlier search's measure of the tiles on the same
    index: where the tiles at that rate would take AUTO_SKIP_MARGIN times the brute screen, this
    returns None without a sample.  The dict receives what was measured and predicted (a sample's
    ``tile_rate`` included).

    ``by_label``: ``(codes, k_labels, k_plain)`` (a distinct search's, as
    :func:`~workbench.search.kernel.screen_and_rescore` takes it): the seeds are float32 tiles of
    each query's best projected references and of its best labels' (:func:`~.tiles.seeds_and_bounds`),
    tau and the final level the labels' (:func:`~workbench.search.kernel.labelled_floor`), and the
    rescore keeps only the pairs that may be the top ``k_plain`` or a label's best among the
    ``k_labels`` best labels (:func:`~workbench.search.kernel.label_keep`); the result holds the top
    ``k_plain`` and ``by_label`` (:func:`~workbench.search.kernel.label_best`).
    """
    return PrunedSearch(q64, const_q, ref, reference, select, k=k, dev=dev, tile=tile, progress=progress,
                        stacklevel=stacklevel, auto=auto, by_label=by_label).search()
