"""Random exactness checks of every search path against float64 numpy brute force (issue 16).

Not part of ``make test`` (the tests there hold the adversarial cases by design); run it after a
change to the search, for as long as there is time:

    .venv/bin/python tests/fuzz_search.py --seconds 600            # CorrelationIndex: every variant
    .venv/bin/python tests/fuzz_search.py --seconds 600 --wide     # larger images, bases, the cascade
    .venv/bin/python tests/fuzz_search.py --seconds 600 --api      # topk_correlation: distinct, masks, ...
    .venv/bin/python tests/fuzz_search.py --seconds 300 --api --dask   # through a local Dask cluster

Each case draws a reference (smooth slices, random, nearly equal, clusters, exact duplicates,
integers, a large offset; constant images and queries at times), queries, k, channels, a mask,
and an index (float32, bf16, rows on disk, a float16 or int8 row copy, block means; saved and reopened
at times) or options of ``topk_correlation``, and checks that every method returns the float64
top-k values, indices whose float64 r are those values, and no index twice.  A failure prints
its seed: ``--seed N --cases 1`` reruns it.
"""
import argparse
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from test_search_projection import slices
from workbench.data.store import SliceStore, StoreWriter
from workbench.search import CorrelationIndex, topk_correlation

WIDE = False


def write_store(path, images):
    with StoreWriter(path, channels=[f"c{i}" for i in range(images.shape[1])], height=images.shape[2], width=images.shape[3]) as w:
        w.append(images, [{"subject": f"s{i // 16}", "split": "train"} for i in range(len(images))])
    return SliceStore.open(path)

def draw_selection(rng, C, H, W, p):
    """``(options, sel)``: channels and / or a mask drawn with probability p each, as search options,
    and the flat pixels they select (None: all)."""
    options, sel = {}, None
    if rng.random() < p and C > 1:
        ch = sorted(rng.choice(C, int(rng.integers(1, C)), replace=False).tolist()); options["channels"] = ch
        m = np.zeros((C, H * W), bool); m[ch] = True; sel = m.reshape(-1)
    if rng.random() < p:
        mask = rng.random((H, W)) < 0.7; mask[0, 0] = mask[0, 1] = True; options["mask"] = mask
        base = np.ones((C, H * W), bool) if sel is None else sel.reshape(C, H * W)
        sel = (base & mask.reshape(1, -1)).reshape(-1)
    return options, sel


def unit(x, sel=None):
    x = x.reshape(len(x), -1).astype(np.float64)
    if sel is not None: x = x[:, sel]
    x = x - x.mean(1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / n, (n[:, 0] == 0)

def make(rng):
    kind = rng.choice(["slices", "random", "near-equal", "clusters", "dups", "ints", "offset"])
    C = int(rng.integers(1, 4)); H = int(rng.choice([5, 8, 12, 16, 20])); W = int(rng.choice([5, 8, 16, 17]))
    N = int(rng.integers(20, 400)); Q = int(rng.integers(1, 40))
    if WIDE:
        C = int(rng.integers(1, 6)); H = int(rng.choice([32, 48, 64])); W = int(rng.choice([32, 40, 64])); N = int(rng.integers(300, 900))
        if kind == "slices": kind = "clusters"

    if kind == "slices":
        ref = slices(n_subjects=max(1, N // 16), depth=16, size=16, seed=int(rng.integers(1000)))
        C, H, W = ref.shape[1:]; N = len(ref)
        q = ref[rng.integers(0, N, Q)] * rng.uniform(0.9, 1.1, (Q, 1, 1, 1)) + rng.normal(0, rng.choice([0, 1e-3, 0.05]), (Q, C, H, W))
    elif kind == "random":
        ref = rng.random((N, C, H, W)); q = rng.random((Q, C, H, W))
    elif kind == "near-equal":
        base = rng.random((1, C, H, W)); ref = base + 1e-5 * rng.standard_normal((N, C, H, W)); q = base + 1e-5 * rng.standard_normal((Q, C, H, W))
    elif kind == "clusters":
        cs = rng.random((int(rng.integers(2, 6)), C, H, W))
        ref = cs[rng.integers(0, len(cs), N)] + 0.01 * rng.standard_normal((N, C, H, W))
        q = (cs[0] + cs[1]) / 2 + 1e-3 * rng.standard_normal((Q, C, H, W))
    elif kind == "dups":
        base = rng.random((max(2, N // 5), C, H, W)); ref = base[rng.integers(0, len(base), N)]
        q = np.concatenate([ref[rng.integers(0, N, Q)], rng.random((2, C, H, W))]); Q = len(q)
    elif kind == "ints":
        ref = rng.integers(0, 4096, (N, C, H, W)).astype(np.uint16); q = ref[rng.integers(0, N, Q)].astype(np.float64) + rng.integers(-3, 4, (Q, C, H, W))
    else:
        ref = 300 + 0.05 * rng.standard_normal((N, C, H, W)); q = 300 + 0.05 * rng.standard_normal((Q, C, H, W))
    ref = np.asarray(ref); q = np.asarray(q, dtype=np.float32)
    if ref.dtype == np.float64: ref = ref.astype(np.float32)
    if rng.random() < 0.3:  # constant rows and queries
        ref[rng.integers(0, N, 2)] = 7
        q[rng.integers(0, len(q))] = 3
    return str(kind), q, ref

def check(res, q, ref, k, sel, label):
    x, cq = unit(q, sel); y, cr = unit(ref, sel)
    s = x @ y.T
    s[:, cr] = -np.inf
    for i in range(len(q)):
        if cq[i]:
            continue
        want = np.sort(s[i])[::-1][:k]
        got_i = res.indices[i]; got_v = res.values[i]
        ok = np.all(got_i >= 0)
        assert ok, f"{label}: query {i} missing indices {got_i}"
        assert len(set(got_i.tolist())) == k, f"{label}: duplicate indices {got_i}"
        assert np.allclose(got_v, want, atol=1e-12, rtol=0), f"{label}: query {i} values {got_v} want {want}"
        assert np.allclose(s[i, got_i], got_v, atol=1e-12, rtol=0), f"{label}: query {i} indices' values {s[i, got_i]} vs {got_v}"

def one_index(seed, tmp):
    rng = np.random.default_rng(seed)
    kind, q, ref = make(rng)
    N = len(ref); C, H, W = ref.shape[1:]
    variant = rng.choice(["f32", "bf16", "disk", "rowcopy", "int8copy", "blocks"])
    kw = dict(basis_dim=int(rng.choice([2, 4, 8, 16, 32, 64] + ([256, 300, 512] if WIDE else []))))
    chosen, sel = draw_selection(rng, C, H, W, 0.2)
    kw.update(chosen)
    if variant == "bf16": kw["precision"] = "bf16"
    if variant == "blocks": kw["basis"] = "blocks"; kw.pop("basis_dim"); kw["block"] = int(rng.choice([1, 2, 4]))
    src = ref
    if variant in ("disk", "rowcopy", "int8copy"):
        src = write_store(Path(tmp) / f"s{seed}", ref); kw["keep_vectors"] = False
        if variant != "disk": kw["row_copy"] = Path(tmp) / f"rows{seed}.npy"
        if variant == "int8copy": kw["row_copy_format"] = "int8"
    index = CorrelationIndex(src, **kw)
    if rng.random() < 0.3 and variant in ("disk", "rowcopy", "int8copy"):
        p = Path(tmp) / f"ix{seed}"; index.save(p); index = CorrelationIndex.open(p)
    n_live = int((~unit(ref, sel)[1]).sum())
    k = int(rng.integers(1, max(2, min(n_live, 12)) + 1)); k = min(k, n_live)
    tile = int(rng.choice([1, 3, 8, 64])) if rng.random() < 0.5 else None
    for method in ("pruned", "auto", "brute"):
        label = f"seed {seed} {kind} {variant} N={N} Q={len(q)} {C}x{H}x{W} k={k} tile={tile} {method} kw={ {a: b for a, b in kw.items() if a != 'mask'} } mask={'mask' in kw}"
        res = index.topk(q, k=k, method=method, tile=tile if method != "brute" else None)
        check(res, q, ref, k, sel, label)
    return kind, variant



def one_api(seed, tmp, client=None):
    rng = np.random.default_rng(seed)
    kind, q, ref = make(rng)
    N = len(ref)
    C, H, W = ref.shape[1:]
    extra, sel = draw_selection(rng, C, H, W, 0.3)
    x, cq = unit(q, sel); y, cr = unit(ref, sel)
    s = x @ y.T; s[:, cr] = -np.inf
    n_live = int((~cr).sum())
    labels = rng.integers(0, max(2, N // int(rng.choice([3, 16, 40]))), N)
    use_store = rng.random() < 0.5 or client is not None
    src = write_store(Path(tmp) / f"t{seed}", ref) if use_store else ref
    distinct = rng.random() < 0.4
    method = str(rng.choice(["auto", "brute", "pruned"]))
    precision = str(rng.choice(["auto", "float32", "bf16"]))
    if distinct:
        live_labels = np.unique(labels[~cr])
        k = int(rng.integers(1, min(len(live_labels), 6) + 1))
        if use_store:  # the manifest's subject column: s{i // 16}
            labels = np.array([i // 16 for i in range(N)]); live_labels = np.unique(labels[~cr]); k = min(k, len(live_labels))
            arg = "subject"
        else:
            arg = labels
    else:
        k = int(rng.integers(1, min(n_live, 10) + 1))
    kw = dict(k=k, method=method, precision=precision, block_size=int(rng.choice([7, 64, 1000])))
    if distinct: kw["distinct"] = arg
    kw.update(extra)
    if use_store and "channels" in kw: kw["channels"] = [f"c{c}" for c in kw["channels"]]
    if client is not None: kw["client"] = client
    res = topk_correlation(q, src, **kw)
    label = f"seed {seed} {kind} N={N} Q={len(q)} k={k} store={use_store} distinct={distinct} {method} {precision} bs={kw['block_size']} dask={client is not None}"
    for i in range(len(q)):
        if cq[i]: continue
        if distinct:
            best = {}
            for j in np.flatnonzero(~cr):
                best[labels[j]] = max(best.get(labels[j], -np.inf), s[i, j])
            want = np.sort(np.array(list(best.values())))[::-1][:k]
            got_i = res.indices[i]
            assert len(set(labels[got_i].tolist())) == k, f"{label}: labels repeat {labels[got_i]}"
        else:
            want = np.sort(s[i])[::-1][:k]
            got_i = res.indices[i]
            assert len(set(got_i.tolist())) == k, f"{label}: dup {got_i}"
        assert np.allclose(res.values[i], want, atol=1e-12, rtol=0), f"{label}: q{i} {res.values[i]} want {want}"
        assert np.allclose(s[i, got_i], res.values[i], atol=1e-12, rtol=0), f"{label}: q{i} idx values {s[i, got_i]} vs {res.values[i]}"



def main(argv=None) -> None:
    global WIDE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--wide", action="store_true", help="larger images and bases (the cascade's levels)")
    ap.add_argument("--api", action="store_true", help="topk_correlation's options instead of an index's methods")
    ap.add_argument("--dask", action="store_true", help="with --api: through a local Dask cluster")
    args = ap.parse_args(argv)
    WIDE = args.wide
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    client = None
    if args.dask:
        from dask.distributed import Client, LocalCluster
        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None))
    t_end, seed, n, fails = time.time() + args.seconds, args.seed, 0, 0
    variants = {}  # an index's variants, counted (the run says which were drawn)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            while time.time() < t_end and (args.cases is None or n < args.cases):
                try:
                    if args.api:
                        one_api(seed, tmp, client)
                    else:
                        variant = str(one_index(seed, tmp)[1])
                        variants[variant] = variants.get(variant, 0) + 1
                except Exception as e:  # noqa: BLE001  every failure is reported with its seed
                    fails += 1
                    print("FAIL seed", seed, repr(e)[:1500], flush=True)
                    traceback.print_exc(limit=4)
                seed += 1
                n += 1
    finally:
        if client is not None:
            client.close()
    print("done:", n, "cases,", fails, "failures" + (f" (index variants passed: {variants})" if variants else ""))
    raise SystemExit(1 if fails else 0)


if __name__ == "__main__":
    main()
