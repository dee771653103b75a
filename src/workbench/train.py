"""Train a DDPM on a SliceStore (or a view of one) and write a checkpoint folder.

>>> from workbench.data import open_store
>>> store = open_store("runs/demo/store")                                          # doctest: +SKIP
>>> ckpt = train_ddpm(store.where(split="train"), "runs/demo/ckpt", steps=1000,
...                   max_images=32, seed=0)                                        # doctest: +SKIP
>>> train_view = training_view(ckpt)   # exactly the images the model saw           # doctest: +SKIP

The model sees images mapped from [0, 1] to [-1, 1].  Which store rows it trained on (after the
optional seeded ``max_images`` subset) is written to ``training.json`` as ``train_rows`` together
with the store path, so the memorization search compares samples with the images the model saw.
"""
from __future__ import annotations

import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .data.store import SliceStore
from .errors import CheckpointError, StoreError, WorkbenchError
from .models.ddpm import DDPMConfig, build_scheduler, build_unet, read_training_info, save_checkpoint

#: Training images are held in memory as one tensor up to this size; larger views stream from disk.
IN_MEMORY_BYTES = 2 * 1024 ** 3


def _resolve_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_hyperparameters(*, steps, batch_size, lr, warmup_steps, max_images, log_every):
    def bad(msg):
        raise WorkbenchError(f"train_ddpm: {msg}")

    if not isinstance(steps, (int, np.integer)) or steps < 1:
        bad(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        bad(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        bad(f"lr must be a positive number, got {lr!r}")
    if not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
        bad(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if max_images is not None and (not isinstance(max_images, (int, np.integer)) or max_images < 1):
        bad(f"max_images must be None or a positive integer, got {max_images!r}")
    if log_every is not None and (not isinstance(log_every, (int, np.integer)) or log_every < 1):
        bad(f"log_every must be None or a positive integer, got {log_every!r}")


def train_ddpm(store, out, *, preset: str = "tiny", steps: int = 1000, batch_size: int = 16,
               lr: float = 2e-4, warmup_steps: int = 0, seed: int = 0, max_images: int | None = None,
               bf16: bool = True, grad_clip: float | None = 1.0, log_every: int | None = None,
               device=None, progress: bool = True, run_name: str | None = None,
               overwrite: bool = False, callback=None, **config_overrides) -> Path:
    """Train a diffusers ``UNet2DModel`` as a DDPM on ``store`` and write a checkpoint to ``out``.

    Parameters
    ----------
    store : a :class:`SliceStore` or a view of one (typically ``store.where(split="train")``),
        or the path of a store folder.
    out : checkpoint folder to write (``model.safetensors``, ``config.json``, ``training.json``).
    preset : network size, ``"tiny"``, ``"small"`` or ``"base"`` (see :data:`models.ddpm.PRESETS`).
    steps, batch_size, lr : optimisation steps, images per step, AdamW learning rate.
    warmup_steps : linear learning-rate warm-up from 0 over this many steps (0: none).
    seed : seeds the subset, the initial weights, batches, noise and timesteps.
    max_images : train on a seeded random subset of this many images of the view
        (small training sets are what diffusion models memorise).
    bf16 : bfloat16 autocast (about 2x faster on CPUs with AMX, and on GPUs).
    grad_clip : clip the gradient norm to this value (None: no clipping).
    log_every : record the mean loss every this many steps (default: ~1000 points in all).
    device : ``"cpu"``, ``"cuda"``... (default: CUDA when available).
    progress : show a progress bar with the loss and an ETA.
    run_name : name written into the checkpoint and into the samples' manifest (default: ``out``'s name).
    overwrite : replace an existing checkpoint at ``out``.
    callback : optional ``callback(step, loss)`` called at every logged step (e.g. a live plot).
    **config_overrides : any :class:`DDPMConfig` option, e.g. ``attention=True``,
        ``block_out_channels=(32, 64, 128)``, ``beta_schedule="squaredcos_cap_v2"``.

    Returns the checkpoint folder.  Nothing is written until training has finished, and the
    folder appears only when complete.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    # -- check everything before any work ------------------------------------------------------
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    out = Path(out)
    _check_hyperparameters(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                           max_images=max_images, log_every=log_every)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True to replace it)")
    if len(store) == 0:
        raise StoreError(f"{store.path}: the view to train on is empty (check the split / filter)")
    _, height, width = store.image_shape
    if height != width:
        raise WorkbenchError(f"{store.path}: images are {height}x{width}; the DDPM needs square images")
    for key in ("image_size", "channels"):
        if key in config_overrides:
            raise WorkbenchError(f"train_ddpm: {key} comes from the store ({store.path}) and cannot be overridden")
    config = DDPMConfig.preset(preset, image_size=int(height), channels=store.channels, **config_overrides)
    device = _resolve_device(device)
    run_name = run_name or out.name
    log_every = int(log_every or max(1, steps // 1000))

    # -- training images -------------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    positions = np.arange(len(store))
    if max_images is not None and max_images < len(store):
        positions = np.sort(rng.choice(len(store), size=int(max_images), replace=False))
    view = store.take(positions)
    n_train = len(view)
    nbytes = n_train * int(np.prod(store.image_shape)) * 4
    images = None
    if nbytes <= IN_MEMORY_BYTES:
        images = torch.from_numpy(view.to_array()).to(device)

    def batch(idx: np.ndarray):
        if images is not None:
            x = images[torch.from_numpy(idx).to(device)]
        else:
            order = np.argsort(idx)
            x = torch.from_numpy(view.read(idx[order])).to(device)
            x = x[torch.from_numpy(np.argsort(order)).to(device)]
        return x * 2.0 - 1.0

    # -- model, optimiser, schedule --------------------------------------------------------------
    torch.manual_seed(seed)
    model = build_unet(config).to(device)
    model.train()
    scheduler = build_scheduler(config)
    alphas = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    batch_rng = np.random.default_rng([seed, 1])
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))

    def lr_at(step):  # step counts from 1
        return lr * min(1.0, step / warmup_steps) if warmup_steps else lr

    history: list[list] = []
    window: list[float] = []
    perm = np.empty(0, dtype=np.int64)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=f"train {run_name}", unit="step", disable=not progress)
    try:
        for step in range(1, steps + 1):
            # batches walk through shuffled epochs (each image seen once per epoch)
            if len(perm) < batch_size:
                need = batch_size - len(perm)
                fresh = np.concatenate([batch_rng.permutation(n_train) for _ in range(-(-need // n_train))])
                perm = np.concatenate([perm, fresh])
            idx, perm = perm[:batch_size], perm[batch_size:]
            x0 = batch(idx)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=gen, device=device)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            if config.prediction_type == "epsilon":
                target = noise
            elif config.prediction_type == "v_prediction":
                target = a.sqrt() * noise - (1 - a).sqrt() * x0
            else:
                target = x0
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with amp:
                pred = model(xt, t).sample
            loss = F.mse_loss(pred.float(), target)
            if not torch.isfinite(loss):
                raise WorkbenchError(f"train_ddpm: loss became {loss.item()} at step {step} "
                                     f"(try a lower lr than {lr} or bf16=False)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            window.append(loss.item())
            if step % log_every == 0 or step == steps:
                mean = float(np.mean(window))
                history.append([step, mean])
                window.clear()
                bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
                if callback is not None:
                    callback(step, mean)
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    import diffusers

    info = {
        "run": run_name,
        "model": "ddpm",
        "preset": preset,
        "steps": int(steps),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "warmup_steps": int(warmup_steps),
        "grad_clip": grad_clip,
        "seed": int(seed),
        "bf16": bool(bf16),
        "device": str(device),
        "store": str(Path(store.path).resolve()),
        "store_kind": store.kind,
        "max_images": None if max_images is None else int(max_images),
        "n_train": int(n_train),
        "train_rows": [int(r) for r in view.rows],
        "loss_every": log_every,
        "loss": history,
        "final_loss": history[-1][1],
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(steps / seconds, 4),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    save_checkpoint(out, model, config, info, overwrite=overwrite)
    print(f"wrote DDPM checkpoint {out} ({config.preset} UNet, {steps} steps on {n_train} images "
          f"of {store.path}, final loss {info['final_loss']:.4f}, {seconds:.0f} s)")
    return out


def training_view(checkpoint) -> SliceStore:
    """The images a checkpoint was trained on: a view of its training store at ``train_rows``."""
    checkpoint = Path(checkpoint)
    info = read_training_info(checkpoint)
    for key in ("store", "train_rows"):
        if key not in info:
            raise CheckpointError(f"{checkpoint / 'training.json'}: has no {key!r}; cannot tell which images were used")
    store = SliceStore.open(info["store"])
    rows = np.asarray(info["train_rows"], dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(store)):
        raise CheckpointError(f"{checkpoint / 'training.json'}: train_rows point outside {info['store']} "
                              f"(0..{len(store) - 1}); was the store rebuilt after training?")
    return store.take(rows)
