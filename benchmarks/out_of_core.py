"""Out-of-core search: a reference store of at least 20 GB, streamed with bounded memory.

    .venv/bin/python benchmarks/out_of_core.py                       # build the store once (~21.5 GB), then search
    .venv/bin/python benchmarks/out_of_core.py --drop-caches         # as root: start from a cold page cache
    .venv/bin/python benchmarks/out_of_core.py --images 2048         # a small rehearsal (2 GB)

The store (``runs/bench-cache/ooc-<N>``, git-ignored) holds N images of 4 x 256 x 256 float32
(1 MiB each; N = 20,480 by default: 21.5 GB): the training slices of the 128 x 128 brain
phantom store of ``benchmarks/search.py`` upsampled 2x and augmented in seeded rounds (flip,
roll, per-channel intensity), each round of distinct images.  Queries: 32 planted near-copies of
store images (intensity 0.95-1.05, noise sd 0.02) and 32 held-out slices.

The search runs in a fresh child process so that its peak resident memory (``VmHWM`` from
``/proc/self/status``) is the search's alone.  It calls ``topk_correlation(queries, store, k=5,
precision="bf16")``: blocks are read through the file with a prefetch thread (SliceStore.blocks),
normalised, screened and dropped.  The same child then streams a float64 brute force over the
store for the ground truth and reports agreement.  Target (issue 3): peak resident memory under
3 GB for a store of at least 20 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path("runs/bench-cache")
SIZE = 256
CHANNELS = ["t1", "t1ce", "t2", "flair"]


def vm_hwm_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def source_store():
    sys.path.insert(0, str(Path(__file__).parent))
    import search as bench  # the phantom store of the search benchmark (cached there)

    return bench.phantom_store(128, 84, 4, 0)


def upsample(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=-2).repeat(2, axis=-1)


def build_store(path: Path, n_images: int, seed: int = 0, *, source=None, scale: int = 2,
                benchmark: str = "out_of_core", batch: int = 256) -> None:
    """A store of ``n_images`` brain-like slices: the training slices of ``source`` (default the
    128 x 128 phantom store of the search benchmark) upsampled ``scale`` times, in seeded rounds:
    the originals, then rounds of flips, rolls and per-channel intensity, each round's images and
    subject names distinct.  Shared with ``search_scale.py``."""
    from workbench.data.store import StoreWriter

    src = source if source is not None else source_store()
    train = src.where(split="train")
    manifest = train.manifest.reset_index(drop=True)
    size = train.image_shape[-1] * scale
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with StoreWriter(path, channels=CHANNELS, height=size, width=size, kind="real",
                     meta={"benchmark": benchmark, "seed": seed}) as w:
        done, rnd = 0, 0
        while done < n_images:
            for a in range(0, len(train), batch):  # the batch sets the order of the random draws
                if done >= n_images:
                    break
                idx = np.arange(a, min(a + batch, len(train), a + n_images - done))
                imgs = train.read(idx)
                if scale > 1:
                    imgs = imgs.repeat(scale, axis=-2).repeat(scale, axis=-1)
                if rnd:  # augmented rounds: distinct images, still brain-like
                    flip = rng.random(len(imgs)) < 0.5
                    imgs[flip] = imgs[flip][..., ::-1]
                    shifts = rng.integers(-8, 9, size=(len(imgs), 2))
                    for i, (dy, dx) in enumerate(shifts):
                        imgs[i] = np.roll(imgs[i], (int(dy), int(dx)), axis=(1, 2))
                    imgs *= rng.uniform(0.85, 1.15, size=(len(imgs), imgs.shape[1], 1, 1)).astype(np.float32)
                    np.clip(imgs, 0, 1, out=imgs)
                rows = manifest.iloc[idx].to_dict("records")
                for r in rows:
                    r["subject"] = f"{r['subject']}_r{rnd}"
                    r["prev"] = r["next"] = None
                w.append(np.ascontiguousarray(imgs, dtype=np.float32), rows)
                done += len(idx)
            rnd += 1
            print(f"  round {rnd}: {done:,} / {n_images:,} images ({time.perf_counter() - t0:.0f} s)", flush=True)


def make_queries(store_path: Path, seed: int = 0) -> np.ndarray:
    from workbench.data.store import SliceStore

    store = SliceStore.open(store_path)
    rng = np.random.default_rng([seed, 1])
    planted_src = np.sort(rng.choice(len(store), 32, replace=False))
    planted = store.read(planted_src) * rng.uniform(0.95, 1.05, size=(32, 4, 1, 1)).astype(np.float32)
    planted += rng.normal(0, 0.02, size=planted.shape).astype(np.float32)
    np.clip(planted, 0, 1, out=planted)
    test = source_store().where(split="test")
    novel = upsample(test.read(np.sort(rng.choice(len(test), 32, replace=False))))
    return np.ascontiguousarray(np.concatenate([planted, novel])), planted_src


def truth_f64(store, queries: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """float64 torch brute force streamed over the store: top k per query, ties to the lower index."""
    import torch

    q = torch.from_numpy(queries.reshape(len(queries), -1)).double()
    q -= q.mean(1, keepdim=True)
    q /= q.norm(dim=1, keepdim=True)
    vals = np.full((len(q), 0), -np.inf)
    idx = np.zeros((len(q), 0), dtype=np.int64)
    for start, images in store.blocks(block):
        r = torch.from_numpy(images.reshape(len(images), -1)).double()
        r -= r.mean(1, keepdim=True)
        r /= r.norm(dim=1, keepdim=True)
        vals = np.concatenate([vals, (q @ r.T).numpy()], 1)
        idx = np.concatenate([idx, np.broadcast_to(np.arange(start, start + len(images)), (len(q), len(images)))], 1)
        order = np.lexsort((idx, -vals), axis=-1)[:, :k]  # ties to the lower index
        vals, idx = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    return vals, idx


def child(store_path: str, queries_path: str, k: int, truth: bool) -> None:
    """Runs in a fresh process: search, then (optionally) the streamed float64 ground truth."""
    import torch

    from workbench.data.store import SliceStore
    from workbench.search import topk_correlation

    torch.set_num_threads(os.cpu_count() or 1)
    store = SliceStore.open(store_path)
    queries = np.load(queries_path)
    base = vm_hwm_gib()
    t0 = time.perf_counter()
    res = topk_correlation(queries, store, k, precision="bf16", method="brute", progress=False)
    t_search = time.perf_counter() - t0
    peak_search = vm_hwm_gib()
    out = {"search_s": t_search, "peak_rss_gib_search": peak_search, "rss_before_gib": base,
           "stats": {key: v for key, v in res.stats.items() if isinstance(v, (int, float, str))},
           "indices": res.indices.tolist(), "values": res.values.tolist()}
    # disk read alone: the same blocks, no compute
    t0 = time.perf_counter()
    n = 0
    for _, block in store.blocks(max(1, 128 * 2**20 // (4 * int(np.prod(store.shape[1:]))))):
        n += len(block)
    out["read_only_s"] = time.perf_counter() - t0
    if truth:
        t0 = time.perf_counter()
        tv, ti = truth_f64(store, queries, k, block=64)
        out["truth_s"] = time.perf_counter() - t0
        out["top1_agree"] = float((ti[:, 0] == res.indices[:, 0]).mean())
        out["topk_agree"] = float((ti == res.indices).all(axis=1).mean())
        out["max_abs_dr"] = float(np.abs(tv - res.values).max())
    out["peak_rss_gib_total"] = vm_hwm_gib()
    print("RESULT " + json.dumps(out))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20480, help="reference images of 4x256x256 (1 MiB each)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--no-truth", action="store_true", help="skip the streamed float64 ground truth")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache first (needs root)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.k, not args.no_truth)
    store_path = CACHE / f"ooc-{args.images}"
    if not (store_path / "store.json").is_file():
        print(f"building {store_path} ({args.images:,} images of 4x{SIZE}x{SIZE}, {args.images * 2**20 / 1e9:.1f} GB) ...", flush=True)
        t0 = time.perf_counter()
        build_store(store_path, args.images)
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    size_gb = (store_path / "images.npy").stat().st_size / 1e9
    queries, planted_src = make_queries(store_path)
    qpath = CACHE / "ooc-queries.npy"
    np.save(qpath, queries)
    if args.drop_caches:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    mem = {line.split(":")[0]: int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
           if line.split(":")[0] in ("MemTotal", "MemAvailable", "Cached")}
    print(f"store {store_path}: {size_gb:.1f} GB; machine RAM {mem['MemTotal']:.1f} GiB, page cache {mem['Cached']:.1f} GiB "
          f"before the search", flush=True)
    cmd = [sys.executable, __file__, "--child", str(store_path), str(qpath), "--k", str(args.k)]
    if args.no_truth:
        cmd.append("--no-truth")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"search child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    idx = np.asarray(out.pop("indices"))
    out.pop("values")
    out["planted_found_top1"] = int((idx[:32, 0] == planted_src).sum())
    out.update(store=str(store_path), store_gb=size_gb, images=args.images, image_shape=[4, SIZE, SIZE],
               queries=len(queries), k=args.k, page_cache_gib_before=mem["Cached"], ram_gib=mem["MemTotal"],
               dropped_caches=args.drop_caches)
    print(json.dumps(out, indent=1))
    ok = out["peak_rss_gib_search"] < 3
    print(f"\nsearch {out['search_s']:.1f} s over {size_gb:.1f} GB (read alone {out['read_only_s']:.1f} s); peak resident "
          f"memory {out['peak_rss_gib_search']:.2f} GiB during the search ({'under' if ok else 'OVER'} the 3 GB target); "
          f"planted copies found as top-1: {out['planted_found_top1']}/32"
          + (f"; top-1 / top-{args.k} agreement with streamed float64: {100 * out['top1_agree']:.0f} / "
             f"{100 * out['topk_agree']:.0f} %, max |dr| {out['max_abs_dr']:.1e}" if "top1_agree" in out else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
