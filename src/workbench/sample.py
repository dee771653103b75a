"""Sample a trained DDPM with DDIM into a synthetic SliceStore.

>>> synth = sample_ddpm("runs/demo/ckpt", "runs/demo/synthetic", n=64, seed=0)   # doctest: +SKIP
>>> synth.manifest[["model", "run", "seed", "sample_index"]].head()             # doctest: +SKIP

Every image has its own seed (the manifest's ``seed`` column), derived from the run seed and
the image's ``sample_index``; the image depends only on that seed, the checkpoint, ``steps`` and
``eta``, not on the batch it was made in (up to floating-point rounding), so one image can be
remade with :func:`sample_images` and ``seeds=[...]``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .data.store import SliceStore, StoreWriter
from .errors import WorkbenchError
from .models.ddpm import build_scheduler, load_checkpoint


def image_seeds(seed: int, n: int, start: int = 0) -> np.ndarray:
    """Per-image seeds for sample indices ``start .. start+n-1`` of a sampling run seeded ``seed``."""
    return np.array([int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
                     for i in range(start, start + n)], dtype=np.int64)


def _ddim(config_dict, steps, device):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(config_dict)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def sample_images(model, scheduler_config, seeds, *, image_shape, steps: int = 50, eta: float = 0.0,
                  bf16: bool = True, device=None, on_step=None):
    """Denoise one batch: returns float32 numpy ``(len(seeds), C, H, W)`` in [0, 1].

    ``seeds`` gives each image its own generator for the starting noise (and, with ``eta > 0``,
    the per-step noise), so an image does not depend on the batch it is made in.
    """
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    scheduler = _ddim(scheduler_config, steps, device)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn(image_shape, generator=g) for g in gens]).to(device)
    x = x * scheduler.init_noise_sigma
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
    with torch.no_grad():
        for t in scheduler.timesteps:
            with amp:
                eps = model(x, t).sample
            kwargs = {}
            if eta > 0:
                kwargs["variance_noise"] = torch.stack(
                    [torch.randn(image_shape, generator=g) for g in gens]).to(device)
            x = scheduler.step(eps.float(), t, x, eta=eta, **kwargs).prev_sample
            if on_step is not None:
                on_step()
    return ((x.float().clamp(-1, 1) + 1) / 2).clamp(0, 1).cpu().numpy().astype(np.float32)


def sample_ddpm(checkpoint, out, *, n: int = 64, seed: int = 0, steps: int = 50, batch_size: int = 32,
                eta: float = 0.0, bf16: bool = True, device=None, progress: bool = True,
                overwrite: bool = False) -> SliceStore:
    """Sample ``n`` images from a DDPM checkpoint with DDIM and write them as a synthetic SliceStore.

    Parameters
    ----------
    checkpoint : checkpoint folder written by :func:`workbench.train.train_ddpm`.
    out : store folder to write (appears only when complete).
    n : number of images.
    seed : run seed; image ``i`` uses the seed in the manifest's ``seed`` column, derived from
        ``(seed, i)``.  Same seed, same images.
    steps : DDIM inference steps.
    batch_size : images denoised at once; each batch is written as soon as it is made.
    eta : DDIM noise (0: deterministic DDIM, 1: DDPM-like).
    bf16 : bfloat16 autocast for the UNet (faster on CPUs with AMX and on GPUs).
    device : ``"cpu"``, ``"cuda"``... (default: CUDA when available).
    progress : show a progress bar (denoising steps, with ETA).
    overwrite : replace an existing store at ``out``.

    Returns the synthetic store (opened).  Manifest rows have ``split="synthetic"``,
    ``model="ddpm"``, ``run`` (from the checkpoint), ``seed`` (per image) and ``sample_index``.
    """
    import torch
    from tqdm.auto import tqdm

    for name, value, low in (("n", n, 1), ("steps", steps, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise WorkbenchError(f"sample_ddpm: {name} must be an integer >= {low}, got {value!r}")
    if not 0 <= eta <= 1:
        raise WorkbenchError(f"sample_ddpm: eta must be in [0, 1], got {eta!r}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True to replace it)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config, info = load_checkpoint(checkpoint, device=device)
    if steps > config.num_train_timesteps:
        raise WorkbenchError(f"sample_ddpm: steps={steps} exceeds the {config.num_train_timesteps} "
                             f"training timesteps of {checkpoint}")
    scheduler_config = build_scheduler(config).config
    run = info.get("run") or checkpoint.name
    seeds = image_seeds(seed, n)
    shape = (config.in_channels, config.image_size, config.image_size)
    meta = {
        "model": "ddpm",
        "checkpoint": str(checkpoint.resolve()),
        "run": run,
        "seed": int(seed),
        "sampler": "ddim",
        "steps": int(steps),
        "eta": float(eta),
        "bf16": bool(bf16),
        "n": int(n),
        "train_store": info.get("store"),
        "train_steps": info.get("steps"),
    }
    t0 = time.perf_counter()
    n_batches = -(-n // batch_size)
    bar = tqdm(total=n_batches * steps, desc=f"sample {run}", unit="step", disable=not progress)
    try:
        with StoreWriter(out, channels=config.channels, height=config.image_size, width=config.image_size,
                         kind="synthetic", meta=meta, overwrite=overwrite) as writer:
            for start in range(0, n, batch_size):
                batch_seeds = seeds[start:start + batch_size]
                images = sample_images(model, scheduler_config, batch_seeds, image_shape=shape, steps=steps,
                                       eta=eta, bf16=bf16, device=device, on_step=lambda: bar.update(1))
                rows = [{"split": "synthetic", "model": "ddpm", "run": run, "seed": int(s),
                         "sample_index": start + i} for i, s in enumerate(batch_seeds)]
                writer.append(images, rows)
                bar.set_postfix(images=start + len(batch_seeds), refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    store = SliceStore.open(out)
    print(f"wrote {n} synthetic images {shape} to {out} (DDIM {steps} steps from {checkpoint}, seed {seed}, "
          f"{seconds:.0f} s)")
    return store
