"""Copy-detector training time at 64x64 on this CPU, and what it finds that pixel r misses.

    .venv/bin/python benchmarks/detector.py --json runs/bench-detector.json

Builds (or reuses, in runs/bench-cache/) a brain phantom store of 8 subjects at 64x64 (2 held
out), trains the detector with its defaults on the training split, and times it.  Then plants
copies of 40 training slices, shifted by 2-4 pixels or rotated by 3-6 degrees, and reports how
many of each kind the detector and pixel r flag at the test-quantile threshold (95th percentile
of held-out images), and how many held-out images each flags.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workbench.data.phantom import write_brain_phantom
from workbench.data.prepare import prepare_brats_store
from workbench.data.store import SliceStore
from workbench.memorization.calibration import baseline_threshold
from workbench.memorization.detector import embed, embedding_topk, load_detector, train_detector
from workbench.search import topk_correlation

CACHE = Path("runs/bench-cache")


def store64() -> SliceStore:
    phantom, store = CACHE / "det-phantom8", CACHE / "det-store64"
    if not (store / "store.json").exists():
        if not phantom.exists():
            write_brain_phantom(phantom, subjects=8, seed=0)
        prepare_brats_store(phantom, store, size=64, n_test=2, seed=0, overwrite=True)
    return SliceStore.open(store)


def rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    a = torch.tensor(np.deg2rad(degrees), dtype=torch.float32)
    z = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), z], 1), torch.stack([a.sin(), a.cos(), z], 1)], 1)
    xt = torch.from_numpy(x)
    grid = F.affine_grid(theta, list(xt.shape), align_corners=False)
    return F.grid_sample(xt, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=None, help="detector steps (default: its default)")
    args = ap.parse_args(argv)
    store = store64()
    train, test = store.where(split="train"), store.where(split="test")
    out = CACHE / "detector64"
    kwargs = {} if args.steps is None else {"steps": args.steps}
    t0 = time.perf_counter()
    train_detector(train, out, overwrite=True, progress=False, **kwargs)
    seconds = time.perf_counter() - t0
    encoder, config, info = load_detector(out)
    rng = np.random.default_rng(0)
    src = np.sort(rng.choice(len(train), 40, replace=False))
    x = train.read(src)
    shifts = [tuple(rng.choice([-1, 1], 2) * rng.integers(2, 5, 2)) for _ in range(len(x))]
    shifted = np.stack([np.roll(img, s, axis=(-2, -1)) for img, s in zip(x, shifts)]).astype(np.float32)
    rotated = rotate(x, rng.uniform(3, 6, len(x)) * rng.choice([-1, 1], len(x))).astype(np.float32)
    z_train, z_test = embed(encoder, train), embed(encoder, test)
    tau_e = baseline_threshold(embedding_topk(z_test, z_train)[0][:, 0], similarity="embedding").value
    tau_p = baseline_threshold(topk_correlation(test, train, progress=False).values[:, 0]).value
    rows = {}
    for name, q in (("shifted 2-4 px", shifted), ("rotated 3-6 deg", rotated)):
        e = embedding_topk(embed(encoder, q), z_train)[0][:, 0]
        p = topk_correlation(q, train, progress=False).values[:, 0]
        rows[name] = {"n": len(q), "detector_flags": int((e > tau_e).sum()), "pixel_flags": int((p > tau_p).sum()),
                      "detector_mean": float(e.mean()), "pixel_mean": float(p.mean())}
    record = {"train_images": len(train), "test_images": len(test), "steps": info["steps"],
              "batch_size": info.get("batch_size"), "seconds": seconds,
              "images_per_second": info["steps"] * (info.get("batch_size") or 0) / seconds,
              "tau_embedding": tau_e, "tau_pixel": tau_p, "planted": rows, "threads": torch.get_num_threads()}
    print(f"detector: {info['steps']} steps on {len(train)} training slices of 64x64x5 in {seconds:.0f} s")
    print(f"thresholds (95th percentile of held-out): embedding {tau_e:.4f}, pixel r {tau_p:.4f}")
    print("| planted copies | n | flagged by the detector | flagged by pixel r | mean similarity | mean pixel r |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['n']} | {r['detector_flags']} | {r['pixel_flags']} | {r['detector_mean']:.3f} | "
              f"{r['pixel_mean']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
