"""The copy analysis's searches, timed and counted (issue 16: "the 04 analysis uses the fastest exact method").

    .venv/bin/python benchmarks/analysis_searches.py --synthetic 1000 --json runs/bench-analysis-1000.json
    .venv/bin/python benchmarks/analysis_searches.py --synthetic 6000 --json runs/bench-analysis-6000.json

:func:`workbench.memorization.analysis.run_analysis` (pixel r only: no detector, no data-copying
test; per-channel figures on) on the cached 4 x 64 x 64 phantom store of ``benchmarks/search.py``
(84 subjects): the training images are the training split's first ``--train-subjects`` subjects,
the held-out images the other subjects (the rest of the training split and the test split), and
the synthetic images half noisy copies of training slices, half augmented held-out slices (flip,
shift, per-channel scale), written once to a store under ``runs/bench-cache``.

It reports the analysis's seconds, and every search it ran: brute-force calls of
``topk_correlation`` (queries, reference, k, seconds), indexes built, and searches of an index;
``--save`` writes the pixel similarities, so that two runs (two checkouts: ``PYTHONPATH``) can be
compared for equality.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import search as bench  # noqa: E402  the cached phantom store and the machine's description

CACHE = Path("runs/bench-cache")


def views(train_subjects: int):
    store = bench.phantom_store(64, 84, 4, 0)
    m = store.manifest
    subjects = list(dict.fromkeys(m.loc[m["split"] == "train", "subject"]))
    chosen = set(subjects[:train_subjects])
    in_train = m["subject"].isin(chosen).to_numpy() & (m["split"] == "train").to_numpy()
    return store, store.take(np.flatnonzero(in_train)), store.take(np.flatnonzero(~in_train))


def synthetic_store(store, train, test, n: int, seed: int = 0):
    from workbench.data.store import SliceStore, StoreWriter

    path = CACHE / f"analysis-synthetic-{len(train)}-{n}-s{seed}"
    if (path / "store.json").is_file():
        return SliceStore.open(path)
    rng = np.random.default_rng(seed)
    n_copies = n // 2
    src = np.sort(rng.choice(len(train), n_copies, replace=n_copies > len(train)))
    copies = train.read(np.unique(src))[np.searchsorted(np.unique(src), src)]
    copies = copies * rng.uniform(0.95, 1.05, size=(len(copies), copies.shape[1], 1, 1)).astype(np.float32)
    copies += rng.normal(0, 0.02, size=copies.shape).astype(np.float32)
    held = np.sort(rng.choice(len(test), n - n_copies, replace=n - n_copies > len(test)))
    novel_src = test.read(np.unique(held))[np.searchsorted(np.unique(held), held)]
    novel = np.empty_like(novel_src)
    bench.augment(novel_src, rng, 64, novel)
    images = np.clip(np.concatenate([copies, novel]), 0, 1).astype(np.float32)
    rows = [{"split": "synthetic", "model": "copy"}] * len(copies) + [{"split": "synthetic", "model": "novel"}] * len(novel)
    with StoreWriter(path, channels=store.channels, height=64, width=64, kind="synthetic",
                     meta={"model": "benchmark", "run": "analysis_searches"}) as w:
        w.append(images, rows)
    return SliceStore.open(path)


def spies(log: list) -> None:
    """Record every brute-force search, index build and index search the analysis runs."""
    from workbench.memorization import analysis as analysis_module
    from workbench.search import dispatch, index as index_module

    def wrap(owner, name, kind, describe):
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            log.append({"kind": kind, **describe(*args, **kwargs), "seconds": round(time.perf_counter() - t0, 3)})
            return out
        setattr(owner, name, spy)

    def search(q, r, k=1, **kw):
        return {"queries": len(q), "reference": len(r), "k": k, "channels": kw.get("channels"),
                **({"distinct": kw["distinct"]} if kw.get("distinct") is not None else {})}

    wrap(dispatch, "topk_correlation", "search", search)
    if hasattr(analysis_module, "topk_correlation"):  # the code before ReferenceSearch called it by its own name
        wrap(analysis_module, "topk_correlation", "search", search)
    wrap(index_module.CorrelationIndex, "__init__", "build index", lambda self, r, **kw: {
        "reference": len(r), "channels": kw.get("channels")})
    wrap(index_module.CorrelationIndex, "topk", "index search", lambda self, q, k=1, **kw: {
        "queries": len(q), "reference": len(self), "k": k})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=1000)
    ap.add_argument("--train-subjects", type=int, default=60)
    ap.add_argument("--json", default=None)
    ap.add_argument("--save", default=None, help="write the pixel similarities here (.npz)")
    ap.add_argument("--min-queries", type=int, default=None,
                    help="index.AUTO_MIN_QUERIES for this run (a large number: never an index)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from workbench.memorization.analysis import PIXEL, run_analysis

    if args.min_queries is not None:
        from workbench.search import index as index_module
        index_module.AUTO_MIN_QUERIES = args.min_queries
    store, train, test = views(args.train_subjects)
    synthetic = synthetic_store(store, train, test, args.synthetic)
    log: list = []
    spies(log)
    t0 = time.perf_counter()
    analysis = run_analysis(synthetic, train, test, detector=None, k=5, bootstrap=200, data_copying_cells=None,
                            per_channel=True, progress=False)
    seconds = time.perf_counter() - t0
    pixel = analysis.similarities[PIXEL]
    out = {"machine": bench.machine_info(), "synthetic": len(synthetic), "train": len(train), "test": len(test),
           "pixels": int(np.prod(train.image_shape)), "analysis_s": round(seconds, 2),
           # a distinct search's entry holds the searches it ran, each also listed: left out of the sums
           "searches": [e for e in log if e["kind"] == "search"], "builds": [e for e in log if e["kind"] == "build index"],
           "index_searches": [e for e in log if e["kind"] == "index search"],
           "copies_flagged": int(analysis.flags["copy"].sum())}
    for kind in ("search", "build index", "index search"):
        out[f"{kind.replace(' ', '_')}_s"] = round(sum(e["seconds"] for e in log if e["kind"] == kind
                                                      and "distinct" not in e), 2)
    print(json.dumps({key: v for key, v in out.items() if key != "machine"}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.save:
        np.savez(args.save, **{name: getattr(pixel, name) for name in (
            "synthetic_values", "synthetic_indices", "test_to_train", "train_to_test", "synthetic_to_test",
            "train_to_synthetic")}, subject_indices=analysis.subject_matches["match"].to_numpy(),
            per_channel_max=analysis.per_channel["max"].to_numpy())


if __name__ == "__main__":
    main()
