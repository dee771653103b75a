"""The demo: phantom -> store -> train -> sample -> memorization, every stage a papermill run.

Sized to finish within 15 minutes on a 2-core CPU while still meaning something: the model is
trained on a small subset of training slices (small training sets are what diffusion models
memorize, Akbar et al. 2023), and held-out phantom subjects give a real test baseline.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.atomic import atomic_file
from .notebook import run_notebook

#: the demo's settings; every value is a parameter of one of the notebooks
DEMO = {
    "phantom_subjects": 10,
    "n_test": 3,
    "size": 64,
    "preset": "tiny",
    "steps": 1200,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup_steps": 50,
    "prediction_type": "v_prediction",
    "beta_schedule": "squaredcos_cap_v2",
    "max_images": 8,
    "samples": 64,
    "ddim_steps": 50,
    "detector_steps": 300,
    "seed": 0,
}


def demo_stages(out, settings: dict | None = None) -> list[tuple[str, dict]]:
    """The notebooks the demo runs, in order, with their parameters."""
    s = {**DEMO, **(settings or {})}
    out = Path(out).resolve()
    phantom, store, model, synthetic = out / "phantom", out / "store", out / "model", out / "synthetic"
    return [
        ("01_prepare_data", dict(source=str(phantom), phantom_subjects=s["phantom_subjects"], phantom_seed=s["seed"], phantom_overwrite=True,
                                 store=str(store), size=s["size"], n_test=s["n_test"], split_seed=s["seed"],
                                 overwrite=True)),
        ("02_train", dict(store=str(store), out=str(model), model="ddpm", preset=s["preset"], steps=s["steps"],
                          batch_size=s["batch_size"], lr=s["lr"], warmup_steps=s["warmup_steps"],
                          prediction_type=s["prediction_type"], beta_schedule=s["beta_schedule"],
                          max_images=s["max_images"], seed=s["seed"],
                          run_name="demo", overwrite=True)),
        ("03_sample", dict(checkpoint=str(model), out=str(synthetic), n=s["samples"], steps=s["ddim_steps"],
                           seed=s["seed"] + 1, overwrite=True)),
        ("04_memorization", dict(checkpoint=str(model), synthetic=str(synthetic), out=str(out),
                                 detector_steps=s["detector_steps"], seed=s["seed"])),
    ]


def run_demo(out="runs/demo", settings: dict | None = None, *, progress: bool = True) -> dict:
    """Run every stage of the demo into ``out`` and print where to look.

    Every stage runs again and replaces its outputs (the phantom too: it is deterministic per
    seed, so a rerun writes the same files).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.time()
    for name, params in demo_stages(out, settings):
        t0 = time.time()
        if progress:
            print(f"\n=== {name} ===", flush=True)
        run_notebook(name, out, params, progress=progress)
        timings[name] = round(time.time() - t0, 1)
    total = round(time.time() - started, 1)
    summary = json.loads((out / "memorization.json").read_text())
    record = {"settings": {**DEMO, **(settings or {})}, "stage_seconds": timings, "total_seconds": total,
              "memorization": summary}
    with atomic_file(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    if progress:
        print(f"\nDemo finished in {total / 60:.1f} min. Look at:")
        for name, _ in demo_stages(out, settings):
            print(f"  {out / (name + '.html')}")
        print(f"  {out / 'memorization.json'}  (key figures), {out / 'matches_synthetic.parquet'} (all matches)")
        print(f"Median max r: synthetic {summary['synthetic_max_r_median']:.3f} vs held-out test "
              f"{summary['test_max_r_median']:.3f}; {summary['synthetic_above_test_max']:.0%} of synthetic images "
              f"are closer to a training slice than any test slice is.")
    return record
