"""Compare exact top-k Pearson correlation search methods on the same data, in one run.

    .venv/bin/python benchmarks/search.py                  # 64x64 and 128x128, 256 queries x 8,192 references
    .venv/bin/python benchmarks/search.py --size 64 --json runs/bench-search.json
    .venv/bin/python benchmarks/search.py --quick          # smoke run: 32 queries x 1,024 references
    .venv/bin/pip install -r requirements-bench.txt        # optional: the FAISS row

Methods, each timed on a *prepared* reference with the preparation timed separately:

- ``scipy pearsonr loop``: what the studies did, one ``scipy.stats.pearsonr`` call per pair.  Timed
  on a random sample of pairs and extrapolated to all Q x N pairs (its top-k is not computed).
- ``numpy float64``: z-normalised float64 matrices, one matrix product, top-k.  The ground truth
  every other method is compared with (top-k ordered by r, ties to the lower index).
- ``torch float32``: the same in float32 with ``torch.topk`` (not exact: reported as it comes).
- ``FAISS IndexFlatIP``: inner product on z-normalised float32 vectors (faiss-cpu, optional).
- ``workbench topk_correlation``: our exact search (low-precision screen + float64 rescore) as a
  function on the raw reference array: it normalises the reference in every call (no prepare).
- ``workbench CorrelationIndex``: our search on a prepared index: brute (screen + rescore),
  pruned (projection bounds from a basis fitted to the reference, survivors as dense float32
  tiles, float64 rescore; issue 16) and auto (what ``method="auto"`` chose).  The notes give the
  basis, the rows read and the seconds of each stage.  The scale workload (issue 16's (b)) is
  ``benchmarks/search_scale.py``.

Reported per method: prepare seconds, search seconds (queries normalised inside the search),
pairs per second, GFLOP/s = 2 Q N D / search seconds (D = C H W pixels per image; for a pruned
search this is the *effective* rate of the full-size problem), that rate as a percentage of the
measured fp32 and bf16 torch matmul peaks, the fraction of the full-size Q x N x D work the
method evaluated, and agreement with float64: top-1 (same best index) and top-k (same k indices
in the same order), in % of queries, plus the largest |r - r_float64| over the reported top-k.

Workload.  Brain phantom subjects (``workbench.data.phantom``, default 84 of seed 0) sliced into
a SliceStore of t1, t1ce, t2, flair at 64x64 or 128x128, split by subject into train (80) and
test (4).  The reference is a seeded random subset of the training slices (about 8,300 of them
by default, all distinct real slices), **augmented** only when there are fewer training slices
than references asked for (``--quick``, or a smaller ``--subjects``; the header says how many):
each extra image is a training slice flipped left-right with probability 1/2, rolled by a
non-zero integer shift of at most 4 px (at 64; scaled with the size) and with each channel's
intensity scaled by U(0.85, 1.15), clipped to [0, 1] (all seeded).  The original slices come
first, then the augmented rounds.  Queries: half planted near-copies of original training
slices in the reference (each channel scaled by U(0.95, 1.05), plus Gaussian noise of sd 0.02,
clipped to [0, 1]), half novel slices of held-out subjects.  Phantom NIfTIs and stores are
cached under ``runs/bench-cache/`` (git-ignored), so only the first run pays for them.

Run it on an otherwise idle machine: timings of a shared CPU are not figures for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import inspect
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
import torch

import workbench
import workbench.search as wsearch
from workbench.data.phantom import write_brain_phantom
from workbench.data.prepare import prepare_brats_store
from workbench.data.store import SliceStore

CHANNELS = ["t1", "t1ce", "t2", "flair"]
CACHE = Path("runs/bench-cache")


# -- machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


#: OpenBLAS kernels by the instructions they need (the names OpenBLAS's ``OPENBLAS_CORETYPE`` takes).
OPENBLAS_CORES = (("SkylakeX", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}), ("Haswell", {"avx2", "fma"}))


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def faiss_module():
    """faiss, imported with its bundled OpenBLAS told which kernel this CPU can run.

    faiss-cpu 1.15.1's wheel bundles OpenBLAS 0.3.15, which predates the AMX Xeons of BENCHMARKS.md:
    it cannot name them and falls back to its generic "Prescott" (SSE3) kernel, so FAISS flat ran
    there at 26-47 GFLOP/s against torch float32's 194 (SkylakeX kernel: 179). A baseline slowed by
    its packaging would flatter our speed-ups, so before faiss is imported (OpenBLAS reads
    ``OPENBLAS_CORETYPE`` when it loads) this names the kernel it would pick if it knew the CPU,
    from the instructions the CPU has; a value already set is kept. ``faiss_blas_core`` says which
    kernel it then runs.
    """
    if "OPENBLAS_CORETYPE" not in os.environ and "faiss" not in sys.modules:
        flags = cpu_flags()
        core = next((name for name, needs in OPENBLAS_CORES if needs <= flags), None)
        if core:
            os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss  # noqa: PLC0415
        return faiss
    except ImportError:
        return None


def faiss_blas_core() -> str | None:
    """The kernel faiss's bundled OpenBLAS runs (e.g. "SkylakeX"), or None where that cannot be told."""
    faiss = faiss_module()
    if faiss is None:
        return None
    import ctypes  # noqa: PLC0415
    libs = sorted((Path(faiss.__file__).parent.parent / "faiss_cpu.libs").glob("libopenblas*"))
    try:
        get = ctypes.CDLL(str(libs[0])).openblas_get_corename
    except (IndexError, OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    return get().decode()


def machine_info() -> dict:
    faiss = faiss_module()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem_gib() or 0, 1),
        "amx_bf16": "amx_bf16" in cpu_flags() if Path("/proc/cpuinfo").exists() else None,
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__, "scipy": scipy.__version__, "faiss": getattr(faiss, "__version__", None),
        "faiss_blas_core": faiss_blas_core(),
        "workbench": getattr(workbench, "__version__", None), "gpu": torch.cuda.is_available(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def matmul_peak(dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n @ n x n torch matmul in ``dtype`` (after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# -- data ------------------------------------------------------------------------------------
def phantom_store(size: int, subjects: int, n_test: int, seed: int) -> SliceStore:
    """The cached phantom SliceStore at ``size`` (generating NIfTIs and the store on first use)."""
    src = CACHE / f"phantom-seed{seed}-n{subjects}"
    if not (src / "README.txt").is_file():
        t0 = time.perf_counter()
        write_brain_phantom(src, subjects=subjects, seed=seed, overwrite=True, progress=False)
        print(f"  generated {subjects} phantom subjects in {src} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = CACHE / f"store{size}-seed{seed}-n{subjects}-test{n_test}"
    if (out / "store.json").is_file():
        try:
            return SliceStore.open(out)
        except Exception as err:  # a damaged cache: rebuild it
            print(f"  cached store {out} unusable ({err}); rebuilding", flush=True)
    t0 = time.perf_counter()
    store = prepare_brats_store(src, out, channels=CHANNELS, size=size, n_test=n_test, seed=seed, overwrite=True,
                                progress=False)
    print(f"  sliced into {out}: {len(store)} slices ({time.perf_counter() - t0:.0f} s)", flush=True)
    return store


def augment(images: np.ndarray, rng: np.random.Generator, size: int, out: np.ndarray) -> None:
    """Write augmented copies of ``images`` into ``out``: flip, non-zero shift, per-channel scale."""
    n, c = images.shape[:2]
    max_shift = max(1, round(4 * size / 64))
    flips = rng.random(n) < 0.5
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    shifts[(shifts == 0).all(axis=1), 1] = 1  # never a pure intensity change of an original
    scales = rng.uniform(0.85, 1.15, size=(n, c, 1, 1)).astype(np.float32)
    for i in range(n):
        img = images[i, :, :, ::-1] if flips[i] else images[i]
        out[i] = np.roll(img, tuple(shifts[i]), axis=(1, 2))
    out *= scales
    np.clip(out, 0, 1, out=out)


def build_workload(size: int, n_queries: int, n_reference: int, subjects: int, n_test: int, seed: int) -> dict:
    store = phantom_store(size, subjects, n_test, seed)
    train = store.where(split="train").to_array()
    n_train = len(train)
    test = store.where(split="test").to_array()
    rng = np.random.default_rng([seed, size])
    n_planted = n_queries // 2
    n_novel = n_queries - n_planted
    if len(test) < n_novel:
        raise SystemExit(f"only {len(test)} held-out slices for {n_novel} novel queries: raise --subjects or --test-subjects")
    reference = np.empty((n_reference, *train.shape[1:]), dtype=np.float32)
    if n_reference <= len(train):
        keep = np.sort(rng.choice(len(train), n_reference, replace=False))
        reference[:] = train[keep]
        n_orig = n_reference
    else:
        n_orig = len(train)
        reference[:n_orig] = train
        pos = n_orig
        while pos < n_reference:
            m = min(len(train), n_reference - pos)
            augment(train[:m], rng, size, reference[pos:pos + m])
            pos += m
    del train
    if n_planted > n_orig:
        raise SystemExit(f"{n_planted} planted queries but only {n_orig} original training slices")
    planted_src = np.sort(rng.choice(n_orig, n_planted, replace=False))
    planted = reference[planted_src] * rng.uniform(0.95, 1.05, size=(n_planted, reference.shape[1], 1, 1)).astype(np.float32)
    planted += rng.normal(0, 0.02, size=planted.shape).astype(np.float32)
    np.clip(planted, 0, 1, out=planted)
    novel = test[np.sort(rng.choice(len(test), n_novel, replace=False))]
    queries = np.ascontiguousarray(np.concatenate([planted, novel]))
    return {
        "queries": queries, "reference": reference, "planted_src": planted_src, "n_planted": n_planted,
        "data": {
            "store": str(store.path), "image_shape": list(reference.shape[1:]), "pixels": int(np.prod(reference.shape[1:])),
            "subjects": subjects, "test_subjects": n_test, "seed": seed,
            "train_slices": int(n_train),
            "test_slices": int(len(test)), "reference": n_reference, "reference_original": int(n_orig),
            "reference_augmented": int(n_reference - n_orig), "queries": n_queries, "planted": n_planted, "novel": n_novel,
        },
    }


# -- helpers ---------------------------------------------------------------------------------
def znorm(images: np.ndarray, dtype, chunk: int = 256) -> np.ndarray:
    """Z-normalised unit rows (N, D) in ``dtype``, computed in ``dtype`` chunk by chunk (one output array)."""
    flat = images.reshape(len(images), -1)
    out = np.empty(flat.shape, dtype=dtype)
    for a in range(0, len(flat), chunk):
        x = out[a:a + chunk]
        x[:] = flat[a:a + chunk]
        x -= x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        norm[norm == 0] = 1
        x /= norm
    return out


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the k largest, descending, ties to the lower index."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def row(method: str, **fields) -> dict:
    base = {"method": method, "prepare_s": None, "search_s": None, "pairs_per_s": None, "gflops": None,
            "pct_fp32_peak": None, "pct_bf16_peak": None, "fraction": None, "top1_pct": None, "topk_pct": None,
            "max_abs_dr": None, "notes": "", "stats": None}
    base.update(fields)
    return base


class Bench:
    """Runs the methods on one workload and compares each with the float64 result."""

    def __init__(self, work: dict, k: int, peaks: dict, warmup: int = 8, repeats: int = 1):
        self.q, self.r = work["queries"], work["reference"]
        self.nq, self.nr = len(self.q), len(self.r)
        self.dim = int(np.prod(self.r.shape[1:]))
        self.k, self.peaks, self.repeats = k, peaks, repeats
        self.q_warm = self.q[:min(warmup, self.nq)]
        self.truth = None  # (values, indices) of float64

    def finish(self, method, prep, search, values=None, indices=None, fraction=1.0, **extra) -> dict:
        flops = 2.0 * self.nq * self.nr * self.dim
        out = row(method, prepare_s=prep, search_s=search, pairs_per_s=self.nq * self.nr / search,
                  gflops=flops / search / 1e9, fraction=fraction, **extra)
        out["pct_fp32_peak"] = 100 * out["gflops"] / self.peaks["fp32_gflops"]
        out["pct_bf16_peak"] = 100 * out["gflops"] / self.peaks["bf16_gflops"]
        if indices is not None and self.truth is not None:
            tv, ti = self.truth
            indices, values = np.asarray(indices), np.asarray(values, dtype=np.float64)
            out["top1_pct"] = 100 * float(np.mean(indices[:, 0] == ti[:, 0]))
            out["topk_pct"] = 100 * float(np.mean((indices == ti).all(axis=1)))
            out["max_abs_dr"] = float(np.max(np.abs(values - tv)))
        return out

    def search_timed(self, fn):
        """Warm up on a few queries, then the best of ``repeats`` timed calls on all queries (one if slow)."""
        fn(self.q_warm)
        best, res = math.inf, None
        for _ in range(self.repeats):
            res, sec = timed(fn, self.q)
            best = min(best, sec)
            if sec > 20:  # a slow search is timed once
                break
        return res, best

    # -- the methods -------------------------------------------------------------------------
    def numpy_float64(self) -> dict:
        ref, prep = timed(znorm, self.r, np.float64)
        k = self.k

        def search(q):
            return topk_rows(znorm(q, np.float64) @ ref.T, k)

        (values, indices), sec = self.search_timed(search)
        self.truth = (values, indices)
        self._ref64 = ref  # kept for checking the scipy sample, then dropped
        return self.finish("numpy float64 brute (ground truth)", prep, sec, values, indices,
                           notes="defines the top-k (ties to the lower index)")

    def scipy_loop(self, n_pairs: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        qi = rng.integers(0, self.nq, n_pairs)
        ri = rng.integers(0, self.nr, n_pairs)
        qflat, rflat = self.q.reshape(self.nq, -1), self.r.reshape(self.nr, -1)
        for a in range(min(20, n_pairs)):  # warm-up
            scipy.stats.pearsonr(qflat[qi[a]], rflat[ri[a]])
        got = np.empty(n_pairs)
        t0 = time.perf_counter()
        for a in range(n_pairs):
            got[a] = scipy.stats.pearsonr(qflat[qi[a]], rflat[ri[a]]).statistic
        per_pair = (time.perf_counter() - t0) / n_pairs
        out = self.finish("scipy pearsonr loop (extrapolated)", 0.0, per_pair * self.nq * self.nr, fraction=1.0,
                          notes=f"{n_pairs:,} pairs timed ({per_pair * 1e6:.0f} µs/pair), extrapolated to {self.nq * self.nr:,}; "
                                "top-k not computed")
        ref64 = getattr(self, "_ref64", None)
        if ref64 is not None:
            exact = np.einsum("ij,ij->i", znorm(self.q[qi], np.float64), ref64[ri])
            out["sample_max_abs_dr"] = float(np.max(np.abs(got - exact)))
            out["notes"] += f"; sample max |r - r_float64| {out['sample_max_abs_dr']:.1e}"
        return out

    def drop_float64(self) -> None:
        self._ref64 = None
        gc.collect()

    def torch_float32(self) -> dict:
        ref, prep = timed(lambda: torch.from_numpy(znorm(self.r, np.float32)))
        k = self.k

        def search(q):
            s = torch.from_numpy(znorm(q, np.float32)) @ ref.T
            return torch.topk(s, k, dim=1)

        res, sec = self.search_timed(search)
        out = self.finish("torch float32 brute", prep, sec, res.values.double().numpy(), res.indices.numpy(),
                          notes="not exact: float32 products, torch.topk order")
        del ref
        return out

    def faiss_flat(self) -> dict:
        faiss = faiss_module()
        if faiss is None:
            return row("FAISS IndexFlatIP", notes="faiss-cpu not installed (pip install -r requirements-bench.txt)")
        faiss.omp_set_num_threads(os.cpu_count() or 1)

        def prepare():
            index = faiss.IndexFlatIP(self.dim)
            index.add(znorm(self.r, np.float32))
            return index

        index, prep = timed(prepare)
        k = self.k

        def search(q):
            return index.search(znorm(q, np.float32), k)

        (values, indices), sec = self.search_timed(search)
        out = self.finish(f"FAISS IndexFlatIP {faiss.__version__}", prep, sec, values, indices,
                          notes="not exact: float32 inner products of z-normalised vectors; OpenBLAS "
                                f"kernel {faiss_blas_core()}")
        index.reset()
        return out

    def ours_function(self, precision: str) -> dict:
        k = self.k
        kw = {"method": "brute"} if "method" in inspect.signature(wsearch.topk_correlation).parameters else {}

        def search(q):
            return wsearch.topk_correlation(q, self.r, k, device="cpu", precision=precision, **kw)

        res, sec = self.search_timed(search)
        return self.finish(f"workbench topk_correlation, {precision} (unprepared)", None, sec, res.values, res.indices,
                           fraction=fraction_from(res.stats, self.nq * self.nr, brute=True), stats=clean(res.stats),
                           rescored=res.rescored, notes=stats_note(res.stats, self.nr) + "; normalises the reference in each call")

    def ours_index(self, precision: str, methods: list[str]) -> list[dict]:
        """One CorrelationIndex per precision (prepare timed once), searched with each method."""
        names = [f"workbench CorrelationIndex {m}, {precision}" for m in methods]
        index_cls = getattr(wsearch, "CorrelationIndex", None)
        if index_cls is None:
            return [row(n, notes="not available yet (workbench.search.CorrelationIndex missing)") for n in names]
        topk_params = inspect.signature(index_cls.topk).parameters
        init_params = inspect.signature(index_cls).parameters
        if "method" in topk_params:
            where = "topk"
        elif "method" in init_params:
            where = "init"  # an index built for one method: prepared once per method
        else:
            where = None
        rows, index, prep = [], None, None
        for method, name in zip(methods, names):
            if where is None and method != "brute":
                rows.append(row(name, notes="not available yet (no method= option on CorrelationIndex or its topk)"))
                continue
            init_kw = {"precision": precision, **({"method": method} if where == "init" else {})}
            topk_kw = {"method": method} if where == "topk" else {}
            try:
                if index is None or where == "init":
                    index = None
                    gc.collect()
                    index, prep = timed(index_cls, self.r, **init_kw)
                k = self.k
                res, sec = self.search_timed(lambda q: index.topk(q, k=k, **topk_kw))
            except TypeError as err:  # an option the installed version does not take
                rows.append(row(name, notes=f"not available yet (TypeError: {err})"))
                continue
            stats = getattr(res, "stats", {}) or {}
            note = stats_note(stats, self.nr)
            if method != "auto" and stats.get("method") not in (None, method):
                note += f"; ran as {stats['method']}!"
            if where == "topk" and rows and rows[-1].get("prepare_s") is not None:
                note += "; same index as the row above"
            rows.append(self.finish(name, prep, sec, res.values, res.indices,
                                    fraction=fraction_from(stats, self.nq * self.nr, brute=method == "brute"),
                                    stats=clean(stats), rescored=getattr(res, "rescored", None), notes=note))
        del index
        gc.collect()
        return rows


def fraction_from(stats: dict, pairs: int, brute: bool):
    """Fraction of the full-size Q x N x D work evaluated, from a search's stats if it says."""
    for key in ("fraction_evaluated", "evaluated_fraction", "full_fraction", "work_fraction", "fraction"):
        if key in stats and stats[key] is not None:
            return float(stats[key])
    for key in ("pairs_evaluated", "pairs_screened", "screened_pairs"):
        if key in stats and stats[key] is not None:
            return float(stats[key]) / pairs
    return 1.0 if brute else None


def clean(stats: dict) -> dict:
    out = {}
    for key, v in (stats or {}).items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out


def stats_note(stats: dict, n_ref: int) -> str:
    parts = []
    if "precision" in stats:
        parts.append(f"{stats['precision']} screen")
    if "candidates_per_query" in stats:
        c = stats["candidates_per_query"]
        parts.append(f"{c:.1f} candidates/query rescored ({100 * c / n_ref:.2f} % of N)")
    if "error_bound" in stats:
        parts.append(f"eps {stats['error_bound']:.2g}" + (" worst case, per-pair bounds" if stats.get('bound') == 'per pair' else ''))
    if "basis" in stats:
        parts.append(f"{stats['basis']} basis of {stats['basis_dim']}, tiles of {stats['tile']}, "
                     f"{stats['rows_read']:,} rows read")
    if isinstance(stats.get("seconds"), dict):
        parts.append("s: " + ", ".join(f"{key[:-2]} {v:.3f}" for key, v in stats["seconds"].items()))
    if "auto" in stats:
        parts.append(f"auto chose {stats['auto']}")
    return ", ".join(parts)


# -- report ----------------------------------------------------------------------------------
def fmt(v, spec: str, dash: str = "—") -> str:
    return dash if v is None else format(v, spec)


def markdown(rows: list[dict], k: int) -> str:
    lines = [f"| method | prepare s | search s | pairs/s | GFLOP/s | % fp32 peak | % bf16 peak | fraction evaluated "
             f"| top-1 agree % | top-{k} agree % | max \\|Δr\\| | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        pairs = r["pairs_per_s"]
        lines.append("| " + " | ".join([
            r["method"], fmt(r["prepare_s"], ".2f"), fmt(r["search_s"], ".3f") if (r["search_s"] or 0) < 100 else fmt(r["search_s"], ",.0f"),
            "—" if pairs is None else f"{pairs:.3g}", fmt(r["gflops"], ".1f"), fmt(r["pct_fp32_peak"], ".0f"),
            fmt(r["pct_bf16_peak"], ".0f"), fmt(r["fraction"], ".3g"),
            fmt(r["top1_pct"], ".1f", "extrapolated" if "scipy" in r["method"] else "—"),
            fmt(r["topk_pct"], ".1f", "extrapolated" if "scipy" in r["method"] else "—"),
            fmt(r["max_abs_dr"], ".1e"), r["notes"].replace("|", "\\|"),
        ]) + " |")
    return "\n".join(lines)


def run_workload(size: int, args, peaks: dict) -> dict:
    print(f"\n## Workload {size}x{size}: {args.queries} queries x {args.reference:,} references of 4x{size}x{size}", flush=True)
    t_start = time.perf_counter()
    work, t_data = timed(build_workload, size, args.queries, args.reference, args.subjects, args.test_subjects, args.seed)
    d = work["data"]
    print(f"  data ready in {t_data:.0f} s: reference = {d['reference_original']:,} training slices (of {d['train_slices']:,}) + "
          f"{d['reference_augmented']:,} augmented; {d['planted']} planted + {d['novel']} novel queries "
          f"(held-out pool {d['test_slices']})", flush=True)
    bench = Bench(work, args.k, peaks, repeats=args.repeats)
    wanted = set(args.methods.split(","))
    rows = []

    def add(method, *a):
        try:
            out = method(*a)
        except Exception as err:  # one broken method must not lose the others' figures
            out = row(f"{method.__name__} {' '.join(map(str, a))}".strip(), notes=f"failed: {type(err).__name__}: {err}")
        for r in out if isinstance(out, list) else [out]:
            rows.append(r)
            print(f"  {r['method']}: prepare {fmt(r['prepare_s'], '.2f')} s, search {fmt(r['search_s'], '.3f')} s, "
                  f"top-1 {fmt(r['top1_pct'], '.1f')} %, top-k {fmt(r['topk_pct'], '.1f')} %  {r['notes']}", flush=True)

    rows.append(bench.numpy_float64())  # always: the ground truth
    print(f"  {rows[0]['method']}: prepare {rows[0]['prepare_s']:.2f} s, search {rows[0]['search_s']:.3f} s", flush=True)
    tv, ti = bench.truth
    n_p = work["n_planted"]
    found = int((ti[:n_p, 0] == work["planted_src"]).sum())
    sanity = {"planted_found_top1": found, "planted_top1_r_median": float(np.median(tv[:n_p, 0])),
              "novel_top1_r_median": float(np.median(tv[n_p:, 0])), "novel_top1_r_max": float(np.max(tv[n_p:, 0]))}
    print(f"  float64: {found}/{n_p} planted copies found as top-1 (median r {sanity['planted_top1_r_median']:.4f}); "
          f"novel median top-1 r {sanity['novel_top1_r_median']:.4f}, max {sanity['novel_top1_r_max']:.4f}", flush=True)
    if "scipy" in wanted:
        add(bench.scipy_loop, args.scipy_pairs, args.seed)
    bench.drop_float64()
    if "torch" in wanted:
        add(bench.torch_float32)
    if "faiss" in wanted:
        add(bench.faiss_flat)
    precisions = [p for p in args.precisions.split(",") if p]
    if "function" in wanted:
        for p in precisions:
            add(bench.ours_function, p)
    index_methods = [m for m, key in (("brute", "index"), ("pruned", "pruned"), ("auto", "auto")) if key in wanted]
    if index_methods:
        for p in precisions:
            add(bench.ours_index, p, index_methods)
    wall = time.perf_counter() - t_start
    table = markdown(rows, args.k)
    over = [r["method"] for r in rows if (r["pct_fp32_peak"] or 0) > 100 and "bf16" not in r["method"]]
    if over:
        print(f"\nnote: {', '.join(over)} ran above the measured fp32 peak: the peak measurement was disturbed "
              "(a shared CPU?); take figures from an idle machine")
    print(f"\nWorkload {size}x{size}: Q = {args.queries}, N = {args.reference:,}, D = {bench.dim:,} (4x{size}x{size}), "
          f"k = {args.k}; wall time {wall:.0f} s (data {t_data:.0f} s)\n")
    print(table, flush=True)
    return {"size": size, "data": d, "k": args.k, "sanity": sanity, "rows": rows, "wall_s": wall, "data_s": t_data,
            "markdown": table}


def probe_afresh() -> None:
    """``method="auto"``'s brute probe timed in this process, as in every earlier run of these
    benchmarks, not read from the per-machine cache that a user's later processes read
    (``benchmarks/search_auto.py`` measures what that saves): a cache of its own, removed at exit."""
    import atexit
    import shutil
    import tempfile

    from workbench.search import index as index_module

    folder = tempfile.mkdtemp(prefix="bench-probe-")
    atexit.register(shutil.rmtree, folder, True)
    index_module.PROBE_CACHE = os.path.join(folder, index_module.PROBE_CACHE)  # an absolute path wins


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["64", "128", "both"], default="both")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--reference", type=int, default=8192)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--subjects", type=int, default=84,
                    help="phantom subjects to generate (default 84: about 8,300 training slices, no augmentation "
                         "needed for 8,192 references; fewer subjects are topped up by augmentation)")
    ap.add_argument("--test-subjects", type=int, default=4, help="of which held out for novel queries (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", default="bf16,float32", help="screen precisions of our rows (default bf16,float32)")
    ap.add_argument("--methods", default="scipy,torch,faiss,function,index,pruned,auto",
                    help="comma list of rows to run besides float64 (default all)")
    ap.add_argument("--scipy-pairs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed searches per method, best kept; one if a search takes over 20 s (default 3)")
    ap.add_argument("--peak-n", type=int, default=4096, help="matrix size of the matmul peak measurement")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 queries x 1,024 references, 6 subjects")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.queries, args.reference, args.subjects, args.test_subjects = 32, 1024, 6, 2
        args.scipy_pairs, args.peak_n = 200, 2048
    torch.set_num_threads(os.cpu_count() or 1)
    probe_afresh()
    machine = machine_info()
    load0 = os.getloadavg()
    print(f"# Search benchmark ({' '.join(['benchmarks/search.py', *(argv if argv is not None else sys.argv[1:])])})\n")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, AMX bf16: {machine['amx_bf16']}; "
          f"Python {machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads), numpy {machine['numpy']}, "
          f"scipy {machine['scipy']}, faiss {machine['faiss'] or 'not installed'} (OpenBLAS kernel "
          f"{machine['faiss_blas_core']}); {machine['date']}; "
          f"load average at start {load0[0]:.2f}")
    sizes_n = [args.peak_n // 2, args.peak_n]
    peaks = {"n": sizes_n, "repeats": [10, 5]}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[f"{name}_by_n"] = {n: matmul_peak(dtype, n, repeats=r) for n, r in zip(sizes_n, peaks["repeats"])}
        peaks[f"{name}_gflops"] = max(peaks[f"{name}_by_n"].values())
    print(f"measured torch matmul peaks (n x n @ n x n, best of 10 at n = {sizes_n[0]} and of 5 at {sizes_n[1]}): "
          f"fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f} GFLOP/s", flush=True)
    sizes = [64, 128] if args.size == "both" else [int(args.size)]
    results = [run_workload(s, args, peaks) for s in sizes]
    record = {"command": " ".join(["benchmarks/search.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine, "load_average_start": load0, "load_average_end": os.getloadavg(), "peaks": peaks,
              "options": vars(args), "workloads": results}
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
        tmp.replace(path)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
