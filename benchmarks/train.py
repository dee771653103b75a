"""Training and sampling throughput of every model family, float32 against bf16 autocast.

    .venv/bin/python benchmarks/train.py --json runs/bench-train.json
    .venv/bin/python benchmarks/train.py --sizes 64 --families ddpm --steps 10     # one quick row

For each family (ddpm, ldm: autoencoder stage and latent-UNet stage, gan), image size (64, 128)
and precision (float32, bf16 autocast), the family's trainer (the same code ``train_model`` runs)
takes ``--warmup`` untimed steps and then ``--steps`` timed steps on a batch of random 5-channel
images; the figure is images per second.  Sampling: DDPM with DDIM 50 steps, LDM with DDIM 50
steps + decoding, GAN one forward pass, images per second with and without bf16.  Networks are
the ``tiny`` presets (the size the demo trains); ``--preset`` picks another.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from workbench.models.checkpoint import LoadedModel
from workbench.models.family import get_family
from workbench.sample import image_seeds, sample_images
from workbench.train.loop import step_seed

CHANNELS = ["t1", "t1ce", "t2", "flair", "seg"]


def make_trainer(family: str, size: int, preset: str, bf16: bool, options: dict):
    cls = get_family(family).trainer_class
    config = get_family(family).config_class.preset(preset, image_size=size, channels=CHANNELS)
    torch.manual_seed(0)
    return cls(config, lr=cls.DEFAULT_LR, warmup_steps=0, grad_clip=1.0, ema=True, ema_decay=0.9999,
               ema_power=0.75, bf16=bf16, device=torch.device("cpu"), options={**cls.OPTIONS, **options})


def time_training(family: str, size: int, preset: str, bf16: bool, batch: int, steps: int, warmup: int,
                  stage: str | None = None) -> dict:
    options = {}
    if family == "ldm":
        options["ae_steps"] = 10 ** 9 if stage == "autoencoder" else 1
    trainer = make_trainer(family, size, preset, bf16, options)
    x = torch.rand(batch, len(CHANNELS), size, size) * 2 - 1
    if family == "ldm" and stage == "unet":
        trainer.scale = 1.0  # skip measuring the latent scale (it needs a store); the step cost is the same
    first = 2 if (family == "ldm" and stage == "unet") else 1
    for s in range(first, first + warmup):
        trainer.step(x, None, s, torch.Generator().manual_seed(step_seed(0, s)))
    t0 = time.perf_counter()
    for s in range(first + warmup, first + warmup + steps):
        trainer.step(x, None, s, torch.Generator().manual_seed(step_seed(0, s)))
    seconds = time.perf_counter() - t0
    return {"seconds_per_step": seconds / steps, "images_per_second": batch * steps / seconds}


def time_sampling(family: str, size: int, preset: str, bf16: bool, n: int, steps: int) -> dict:
    config = get_family(family).config_class.preset(preset, image_size=size, channels=CHANNELS)
    trainer = make_trainer(family, size, preset, False, {"ae_steps": 1} if family == "ldm" else {})
    modules = trainer.saved_modules()
    for m in modules.values():
        m.eval()
    loaded = LoadedModel(path=Path("."), config=config, modules=modules, info={"latent_scale": 1.0})
    seeds = image_seeds(0, n)
    sample_images(loaded, seeds[:2], steps=2, bf16=bf16)  # warm-up
    t0 = time.perf_counter()
    sample_images(loaded, seeds, steps=steps, bf16=bf16)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images_per_second": n / seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="ddpm,ldm,gan")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--samples", type=int, default=16, help="images per sampling row")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
               "cpu": platform.processor() or platform.machine()}
    print(f"# training throughput (images/s), preset {args.preset}, {machine}")
    print("| family | stage | size | batch | float32 img/s | bf16 img/s | bf16 speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for family in families:
        stages = ["autoencoder", "unet"] if family == "ldm" else [None]
        for stage in stages:
            for size in sizes:
                batch = 16 if size <= 64 else 8
                r32 = time_training(family, size, args.preset, False, batch, args.steps, args.warmup, stage)
                r16 = time_training(family, size, args.preset, True, batch, args.steps, args.warmup, stage)
                row = {"kind": "train", "family": family, "stage": stage or family, "size": size, "batch": batch,
                       "float32": r32, "bf16": r16, "speedup": r16["images_per_second"] / r32["images_per_second"]}
                rows.append(row)
                print(f"| {family} | {stage or '—'} | {size} | {batch} | {r32['images_per_second']:.1f} | "
                      f"{r16['images_per_second']:.1f} | {row['speedup']:.2f}× |", flush=True)
    print()
    print(f"# sampling throughput (images/s), {args.samples} images per batch")
    print("| family | sampler | size | float32 img/s | bf16 img/s | bf16 speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for family in families:
        for size in sizes:
            steps = 50
            r32 = time_sampling(family, size, args.preset, False, args.samples, steps)
            r16 = time_sampling(family, size, args.preset, True, args.samples, steps)
            how = "one generator pass" if family == "gan" else f"DDIM {steps}" + (" + decode" if family == "ldm" else "")
            row = {"kind": "sample", "family": family, "sampler": how, "size": size, "float32": r32, "bf16": r16,
                   "speedup": r16["images_per_second"] / r32["images_per_second"]}
            rows.append(row)
            print(f"| {family} | {how} | {size} | {r32['images_per_second']:.2f} | {r16['images_per_second']:.2f} | "
                  f"{row['speedup']:.2f}× |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
