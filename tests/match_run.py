"""A small run folder with real search results and copy flags, for the match-browser tests.

Training and held-out subjects are stacks of smooth, correlated slices (adjacent slices look
alike, as in a volume); the first synthetic images are noisy copies of known training slices, the
rest are new images.  The search and the copy analysis are the package's own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.data.store import SliceStore, StoreWriter
from workbench.memorization import run_analysis
from workbench.runs.run import record_stage

CHANNELS = ["t1", "t1ce", "t2", "flair", "seg"]


def _subject(rng, slices: int, channels: int, size: int) -> np.ndarray:
    """Slices of one subject: a smooth random volume, so neighbours correlate; seg = a blob."""
    coarse = rng.random((slices + 2, channels, 4, 4)).astype(np.float32)
    vol = np.kron(coarse, np.ones((1, 1, size // 4, size // 4), dtype=np.float32))
    vol = (vol[:-2] + vol[1:-1] + vol[2:]) / 3 + 0.05 * rng.random((slices, channels, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size] / size
    for z in range(slices):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        vol[z, -1] = (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.02).astype(np.float32)
    return np.clip(vol, 0, 1)


def make_run(root: Path, *, size: int = 32, train_subjects: int = 3, test_subjects: int = 3, slices: int = 8,
             n_synthetic: int = 10, n_copies: int = 4, k: int = 3, seed: int = 0) -> dict:
    """Write stores and the 04 outputs under ``root``; return paths and the copied training rows."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    images, rows = [], []
    for s in range(train_subjects + test_subjects):
        split = "train" if s < train_subjects else "test"
        images.append(_subject(rng, slices, len(CHANNELS), size))
        base = s * slices
        for z in range(slices):
            rows.append({"subject": f"P{s:03d}", "z": z, "split": split,
                         "prev": base + z - 1 if z > 0 else None, "next": base + z + 1 if z < slices - 1 else None})
    with StoreWriter(root / "store", channels=CHANNELS, height=size, width=size) as w:
        w.append(np.concatenate(images), rows)
    store = SliceStore.open(root / "store")
    train, test = store.where(split="train"), store.where(split="test")
    copied = rng.choice(len(train), n_copies, replace=False)  # positions in train = store rows here
    fresh = [_subject(rng, 1, len(CHANNELS), size)[0] for _ in range(n_synthetic - n_copies)]
    copies = train[copied] + 0.01 * rng.standard_normal((n_copies, len(CHANNELS), size, size)).astype(np.float32)
    synthetic = np.clip(np.concatenate([copies, np.stack(fresh)]), 0, 1).astype(np.float32)
    with StoreWriter(root / "synthetic", channels=CHANNELS, height=size, width=size, kind="synthetic") as w:
        w.append(synthetic, [{"split": "synthetic", "model": "test", "seed": i} for i in range(n_synthetic)])
    synth = SliceStore.open(root / "synthetic")
    run = root / "run"
    run.mkdir()
    run_analysis(synth, train, test, k=k, bootstrap=50, per_channel=False, data_copying_cells=None,
                 progress=False).save(run)
    # what the stages would have recorded (there is no model: the synthetic images are planted)
    record_stage(run, "01_prepare_data", {"store": str(root / "store")})
    record_stage(run, "03_sample", {"out": str(root / "synthetic")})
    return {"run": run, "store": root / "store", "synthetic": root / "synthetic", "copied": train.rows[copied]}
