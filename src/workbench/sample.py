"""Sample any trained image model (DDPM, latent diffusion 2D and 3D, GAN) into a synthetic SliceStore.

>>> synth = sample_model("runs/demo/model", "runs/demo/synthetic", n=64, seed=0)   # doctest: +SKIP
>>> synth.manifest[["model", "run", "seed", "sample_index", "label"]].head()     # doctest: +SKIP

Every image has its own seed (the manifest's ``seed`` column), derived from the run seed and
the image's ``sample_index``; the image depends only on that seed, the checkpoint and the
sampler settings, not on the batch it was made in (up to floating-point rounding), so one image
can be remade alone.  Diffusion models sample with DDIM (``eta`` = 0: deterministic) or the
ancestral DDPM sampler, with a chosen number of steps; the GAN uses its EMA generator with
``truncation_psi`` and constant noise inputs.  A class-conditional model makes the ``labels``
asked for (one label, one per image, or by default the classes in turn), written to ``label``.
Each family's sampler is named in its record (:mod:`workbench.models.family`).  The synthetic
store's label channels are those of the training store (recorded in ``training.json``), and its
geometry is the checkpoint's: a store of 2D slices, or of 3D volumes for a 3D family (``ldm3d``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .data.store import SliceStore, StoreWriter
from .errors import WorkbenchError, option_hint
from .device import describe as describe_precision
from .device import resolve_device, use_bf16
from .models.checkpoint import LoadedModel, load_model
from .models.family import family_names
from .models.scheduler import SAMPLERS


def image_seeds(seed: int, n: int, start: int = 0) -> np.ndarray:
    """Per-image seeds for sample indices ``start .. start+n-1`` of a sampling run seeded ``seed``."""
    return np.array([int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
                     for i in range(start, start + n)], dtype=np.int64)


def sample_images(loaded: LoadedModel, seeds, *, labels=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
                  truncation_psi: float = 1.0, bf16: bool = True, ema: bool = True, device=None, on_step=None):
    """Make one batch of images: float32 numpy ``(len(seeds), C, H, W)`` in [0, 1] (``(len(seeds), C, D, H, W)``
    volumes for a 3D family: ``config.image_shape``).

    The family's sampler (its record's ``generate``, :mod:`workbench.models.family`) makes them;
    options a family does not use (``truncation_psi`` for diffusion, ``steps`` for the GAN) are ignored.
    """
    import torch

    net = loaded.sampling_module(ema=ema)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
    x = loaded.record.generate(loaded, seeds, labels=labels, steps=steps, sampler=sampler, eta=eta,
                               truncation_psi=truncation_psi, ema=ema, amp=amp, device=device, on_step=on_step)
    want = (len(seeds), *loaded.config.image_shape)
    if tuple(x.shape) != want:
        raise WorkbenchError(f"{loaded.path}: the {loaded.family} sampler made a batch of shape {tuple(x.shape)}, "
                             f"not {want} as its config.json describes")
    return ((x.float().clamp(-1, 1) + 1) / 2).clamp(0, 1).cpu().numpy().astype(np.float32)


def _labels_for(config, labels, n: int, checkpoint: Path):
    classes = int(getattr(config, "num_classes", 0) or 0)
    if not classes:
        if labels is not None:
            raise WorkbenchError(f"{checkpoint}: the model is not class-conditional; labels cannot be chosen")
        return None
    if labels is None:
        return np.arange(n) % classes  # the classes in turn
    arr = np.full(n, labels, dtype=np.int64) if np.ndim(labels) == 0 else np.asarray(labels, dtype=np.int64)
    if arr.shape != (n,):
        raise WorkbenchError(f"labels: give one label or one per image ({n}), got {len(arr)}")
    if arr.min() < 0 or arr.max() >= classes:
        raise WorkbenchError(f"labels must be in 0..{classes - 1} for {checkpoint}, got {sorted(set(arr.tolist()))}")
    return arr


def sample_model(checkpoint, out, *, n: int = 64, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                 eta: float = 0.0, labels=None, truncation_psi: float = 1.0, batch_size: int = 32, ema: bool = True,
                 bf16: bool | str = "auto", device=None, progress: bool = True, overwrite: bool = False) -> SliceStore:
    """Sample ``n`` images from a checkpoint of any family and write them as a synthetic SliceStore.

    Parameters
    ----------
    checkpoint : a model folder written by :func:`workbench.train.train_model` (or one of its
        ``checkpoints/step-…`` folders, to study how memorization grows with training).
    out : store folder to write (appears only when complete).
    n : number of images.
    seed : run seed; image ``i`` uses the seed in the manifest's ``seed`` column, derived from
        ``(seed, i)``.  Same seed, same images.
    steps : denoising steps (diffusion models).
    sampler : ``"ddim"`` or ``"ddpm"`` (ancestral) for diffusion models.
    eta : DDIM noise (0: deterministic DDIM, 1: DDPM-like).
    labels : class label(s) for a class-conditional model: one int, one per image, or None (the
        classes in turn).
    truncation_psi : GAN truncation (1: none; smaller trades variety for typical images).
    batch_size : images made at once; each batch is written as soon as it is made.
    ema : use the EMA weights when the checkpoint has them.
    bf16 : bfloat16 autocast: ``"auto"`` where measured faster than float32 on this machine
        (:mod:`workbench.device`), ``True`` / ``False`` to choose.
    device : ``"cpu"``, ``"cuda"``... (default: CUDA when available).
    progress : progress bar with ETA.
    overwrite : replace an existing store at ``out``.

    Returns the synthetic store (opened): of 2D slices, or of 3D volumes ``(N, C, S, S, S)`` for a
    3D family (``ldm3d``), as the checkpoint's config says.  Manifest rows have ``split="synthetic"``, ``model``
    (the family), ``run`` (from the checkpoint), ``seed`` (per image), ``sample_index`` and
    ``label`` (for conditional models).
    """
    import torch
    from .progress import tqdm

    for name, value, low in (("n", n, 1), ("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise WorkbenchError(f"sample: {name} must be an integer >= {low}, got {value!r}")
    if not 0 <= eta <= 1:
        raise WorkbenchError(f"sample: eta must be in [0, 1], got {eta!r}")
    if sampler not in SAMPLERS:
        raise WorkbenchError(f"sample: sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    if not 0 <= truncation_psi <= 1:
        raise WorkbenchError(f"sample: truncation_psi must be in [0, 1], got {truncation_psi!r}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass {option_hint('overwrite')} to replace it)")
    device = resolve_device(device)
    loaded = load_model(checkpoint, device=device)
    config, info, record = loaded.config, loaded.info, loaded.record
    family = config.family
    if not record.makes_images:
        raise WorkbenchError(f"{checkpoint}: a {family} model makes no images ({record.summary}); "
                             f"sample a model of {', '.join(family_names(makes_images=True))}")
    requested_bf16, bf16 = bf16, use_bf16(bf16, device)  # "auto": measured on this machine
    diffusion = record.diffusion
    if diffusion and steps > config.scheduler.num_train_timesteps:
        raise WorkbenchError(f"sample: steps={steps} exceeds the {config.scheduler.num_train_timesteps} "
                             f"training timesteps of {checkpoint}")
    record.check_sampling(config, sampler=sampler, steps=steps, source=checkpoint)
    all_labels = _labels_for(config, labels, n, checkpoint)
    run = info.get("run") or checkpoint.name
    seeds = image_seeds(seed, n)
    shape = config.image_shape  # (C, S, S) slices, or (C, S, S, S) volumes of a 3D family
    volumes = len(shape) == 4
    meta = {
        "model": family, "checkpoint": str(checkpoint.resolve()), "run": run, "seed": int(seed),
        "sampler": sampler if diffusion else "generator", "steps": int(steps) if diffusion else None,
        "eta": float(eta) if diffusion else None, "truncation_psi": float(truncation_psi) if record.kind == "gan" else None,
        "ema": bool(ema), "bf16": bool(bf16), "precision": describe_precision(requested_bf16, bf16, device),
        "n": int(n), "train_store": info.get("store"),
        "train_steps": info.get("steps_done", info.get("steps")),
    }
    t0 = time.perf_counter()
    per_batch = steps if diffusion else 1
    bar = tqdm(total=-(-n // batch_size) * per_batch, desc=f"sample {family} {run}", unit="step",
               disable=not progress)
    try:
        with StoreWriter(out, channels=config.channels, height=config.image_size, width=config.image_size,
                         depth=config.image_size if volumes else None, kind="synthetic", meta=meta,
                         overwrite=overwrite, label_channels=info.get("label_channels")) as writer:
            for start in range(0, n, batch_size):
                batch_seeds = seeds[start:start + batch_size]
                batch_labels = None if all_labels is None else all_labels[start:start + batch_size]
                images = sample_images(loaded, batch_seeds, labels=batch_labels, steps=steps, sampler=sampler, eta=eta,
                                       truncation_psi=truncation_psi, bf16=bf16, ema=ema, device=device,
                                       on_step=lambda: bar.update(1))
                rows = [{"split": "synthetic", "model": family, "run": run, "seed": int(s), "sample_index": start + i,
                         "label": None if batch_labels is None else int(batch_labels[i])}
                        for i, s in enumerate(batch_seeds)]
                writer.append(images, rows)
                bar.set_postfix(images=start + len(batch_seeds), refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    store = SliceStore.open(out)
    how = f"{sampler.upper()} {steps} steps" if diffusion else f"truncation {truncation_psi}"
    print(f"wrote {n} synthetic {'volumes' if volumes else 'images'} {shape} to {out} ({family.upper()}, {how}, from {checkpoint}, seed {seed}, "
          f"{seconds:.0f} s, {n / max(seconds, 1e-9):.1f} images/s)")
    return store


def sample_ddpm(checkpoint, out, **kwargs) -> SliceStore:
    """:func:`sample_model` for a DDPM checkpoint (kept for older notebooks and scripts)."""
    return sample_model(checkpoint, out, **kwargs)
