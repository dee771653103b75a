"""The demo: phantom -> store -> train -> sample -> memorization, every stage a papermill run.

Sized to finish well within 15 minutes on any 2-core CPU, in float32 (no bf16 matrix units),
while still meaning something: the model is trained on a small subset of training slices (small
training sets are what diffusion models memorize, Akbar et al. 2023), and held-out phantom
subjects give a real test baseline.  Where the time went and why these settings: BENCHMARKS.md,
"The demo on a 2-core AVX2 CPU".
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..data import layout
from ..data.atomic import atomic_file
from .notebook import run_notebook

#: the demo's settings; every value is a parameter of one of the notebooks.  32x32 slices and a
#: four-level UNet of 16-32-64-64 channels (the ``tiny`` preset's levels at half the width) train
#: about 9x faster per step than the tiny preset at 64x64, and with lr 2e-3 copy all 8 training
#: slices in 1,000 steps; DDIM with 25 steps samples the same copies as with 50.  The model is
#: class-conditional (tumour in the slice or not) so that its samples carry labels and the report
#: (09_privacy_utility) can measure their utility for a classifier.
DEMO = {
    "phantom_subjects": 10,
    "n_test": 3,
    "size": 32,
    "preset": "tiny",
    "block_out_channels": [16, 32, 64, 64],
    "steps": 1000,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_steps": 50,
    "prediction_type": "v_prediction",
    "beta_schedule": "squaredcos_cap_v2",
    "max_images": 8,
    "samples": 64,
    "ddim_steps": 25,
    "detector_steps": 300,
    "conditional": True,
    "utility_steps": 300,
    "seed": 0,
}


#: the 3D demo (``workbench demo --volumes``, ``make demo-3d``): a 3D latent diffusion model on
#: 32^3 cubes of phantom brains.  Calibrating a copy threshold needs at least 20 held-out images,
#: here 20 held-out volumes, so the phantom has 28 subjects and the model sees 8 volumes (a small
#: training set, the setting where Dar et al. found 3D models memorize whole volumes).  The copy
#: detector embeds 2D slices, so the 3D analysis compares volumes by pixel r, and its slice view
#: compares every axial slice of the synthetic volumes with the training slices.  48 samples: Meehan
#: et al.'s C_T needs 20 generated samples in a cell (8 training volumes make 2 cells); sampling
#: them takes seconds.  Timings and why these settings: BENCHMARKS.md, "The 3D demo".
DEMO3D = {
    "phantom_subjects": 28,
    "n_test": 20,
    "size": 32,
    "preset": "tiny",
    "steps": 2600,  # with 600 the samples' median r (0.947) is below the autoencoder's own reconstructions' (0.966)
    "ae_steps": 400,
    "batch_size": 4,
    "lr": 1e-3,
    "samples": 48,
    "ddim_steps": 25,
    "bf16": "auto",  # bf16 where the probe measures it faster (AMX); False: float32 everywhere
    "seed": 0,
    "source": None,  # a BraTS-layout folder to use instead of the phantom (None: write the phantom)
}


def demo3d_stages(out, settings: dict | None = None) -> list[tuple[str, dict]]:
    """The notebooks the 3D demo runs, in order, with their parameters."""
    s = {**DEMO3D, **(settings or {})}
    out = Path(out).resolve()
    store, model, synthetic = (out / name for name in (layout.STORE, layout.MODEL, layout.SYNTHETIC))
    source = Path(s["source"]).resolve() if s["source"] else out / layout.PHANTOM
    return [
        ("01_prepare_data", dict(source=str(source), phantom_subjects=0 if s["source"] else s["phantom_subjects"],
                                 phantom_seed=s["seed"], phantom_overwrite=not s["source"], store=str(store),
                                 layout="volumes", size=s["size"], n_test=s["n_test"], split_seed=s["seed"],
                                 overwrite=True)),
        ("02_train", dict(store=str(store), out=str(model), model="ldm3d", preset=s["preset"], steps=s["steps"],
                          batch_size=s["batch_size"], lr=s["lr"], seed=s["seed"], options={"ae_steps": s["ae_steps"]},
                          checkpoint_every=None, run_name="demo3d", bf16=s["bf16"], overwrite=True)),
        ("03_sample", dict(checkpoint=str(model), out=str(synthetic), n=s["samples"], steps=s["ddim_steps"],
                           batch_size=4, seed=s["seed"] + 1, bf16=s["bf16"], overwrite=True)),
        ("04_memorization", dict(run=str(out), detector=None, seed=s["seed"], channel="flair")),
    ]


def demo_stages(out, settings: dict | None = None) -> list[tuple[str, dict]]:
    """The notebooks the demo runs, in order, with their parameters."""
    s = {**DEMO, **(settings or {})}
    out = Path(out).resolve()
    phantom, store, model, synthetic = (out / name for name in (layout.PHANTOM, layout.STORE, layout.MODEL,
                                                                layout.SYNTHETIC))
    return [
        ("01_prepare_data", dict(source=str(phantom), phantom_subjects=s["phantom_subjects"], phantom_seed=s["seed"], phantom_overwrite=True,
                                 store=str(store), size=s["size"], n_test=s["n_test"], split_seed=s["seed"],
                                 overwrite=True)),
        ("02_train", dict(store=str(store), out=str(model), model="ddpm", preset=s["preset"], steps=s["steps"],
                          batch_size=s["batch_size"], lr=s["lr"], warmup_steps=s["warmup_steps"],
                          prediction_type=s["prediction_type"], beta_schedule=s["beta_schedule"],
                          max_images=s["max_images"], conditional=s["conditional"], seed=s["seed"],
                          options={} if s["block_out_channels"] is None
                          else {"block_out_channels": list(s["block_out_channels"])},
                          run_name="demo", overwrite=True)),
        ("03_sample", dict(checkpoint=str(model), out=str(synthetic), n=s["samples"], steps=s["ddim_steps"],
                           seed=s["seed"] + 1, overwrite=True)),
        ("04_memorization", dict(run=str(out), detector_steps=s["detector_steps"], seed=s["seed"])),
        ("09_privacy_utility", dict(run=str(out), utility_steps=s["utility_steps"], seed=s["seed"])),
    ]


def run_demo(out="runs/demo", settings: dict | None = None, *, volumes: bool = False, progress: bool = True) -> dict:
    """Run every stage of the demo into ``out`` and print where to look (``volumes``: the 3D
    demo, :data:`DEMO3D`).

    Every stage runs again and replaces its outputs (the phantom too: it is deterministic per
    seed, so a rerun writes the same files).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.time()
    stages = demo3d_stages if volumes else demo_stages
    defaults = DEMO3D if volumes else DEMO
    for name, params in stages(out, settings):
        t0 = time.time()
        if progress:
            print(f"\n=== {name} ===", flush=True)
        run_notebook(name, out, params, progress=progress)
        timings[name] = round(time.time() - t0, 1)
    total = round(time.time() - started, 1)
    summary = json.loads((out / layout.MEMORIZATION).read_text())
    record = {"settings": {**defaults, **(settings or {})}, "stage_seconds": timings, "total_seconds": total,
              "memorization": summary, "images": "volumes" if volumes else "slices"}
    with atomic_file(out / layout.DEMO_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    if progress:
        print(f"\nDemo finished in {total / 60:.1f} min. Look at:")
        for name, _ in stages(out, settings):
            print(f"  {out / (name + '.html')}")
        print(f"  {out / layout.MEMORIZATION}  (key figures), {out / layout.COPY_ANALYSIS} (thresholds, copy rates), "
              f"{out / layout.MATCHES} (all matches)")
        print(f"  in Python: run = workbench.open_run({str(out)!r}); run.analysis.report()")
        what = "volume" if volumes else "slice"
        print(f"Median max r: synthetic {summary['synthetic_max_r_median']:.3f} vs held-out test "
              f"{summary['test_max_r_median']:.3f}; {summary['synthetic_above_test_max']:.0%} of synthetic images "
              f"are closer to a training {what} than any test {what} is.")
        if volumes:
            print(f"  browse the volumes: workbench app {out}  (or workbench.widgets.browse({str(out)!r}) in a notebook)")
    return record
