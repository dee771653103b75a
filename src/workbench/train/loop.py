"""One training loop for every model family, with checkpoints that a killed run resumes from.

>>> from workbench.data import open_store
>>> train = open_store("runs/demo/store").where(split="train")                      # doctest: +SKIP
>>> ckpt = train_model(train, "runs/demo/model", model="ddpm", steps=1200,
...                    checkpoint_every=200, max_images=8, seed=0)                   # doctest: +SKIP
>>> # killed at step 700?  The same call with resume=True continues from step 600:
>>> ckpt = train_model(train, "runs/demo/model", model="ddpm", steps=1200,
...                    checkpoint_every=200, max_images=8, seed=0, resume=True)      # doctest: +SKIP

A run folder::

    out/
      checkpoints/step-0000200/   a complete, loadable and resumable checkpoint every N steps
      checkpoints/step-0000400/   (the last ``keep_checkpoints`` are kept)
      model.safetensors  config.json  trainer.safetensors  trainer.json
      training.json               written last: the run is finished when it exists

Why a resumed run ends with the same weights as an uninterrupted one: every random draw of step
``s`` (batch order, noise, timesteps, augmentation, latent samples) comes from generators seeded
by ``(seed, s)``, not from a stream that runs through the whole training; the data order is a
fixed function of ``(seed, epoch)``; and a checkpoint holds the weights, the EMA weights and
counters, and the optimizers' full state, bit for bit.  So restarting from the checkpoint at
step ``s`` repeats steps ``s+1 …`` exactly (same device, same thread count).
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data.atomic import atomic_dir, replace_path
from ..data.temporaries import remove_path, temporary_name
from ..data.store import SliceStore
from ..errors import CheckpointError, StoreError, WorkbenchError, option_hint
from ..device import describe as describe_precision
from ..device import resolve_device, use_bf16
from ..models.checkpoint import (REQUIRED, TRAINING, WEIGHTS, read_tensors, read_training_info, split_modules,
                                 write_model_files)
from ..models.family import get_family
from .augment import Augment
from .state import DOC, load_rng_state, read_trainer_state, rng_state, write_trainer_state

#: Training images are held in memory as one tensor up to this size; larger views stream from disk.
IN_MEMORY_BYTES = 2 * 1024 ** 3
CHECKPOINTS = "checkpoints"


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw in optimisation step ``step`` (from 1) of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), 7, int(step)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_positions(seed: int, step: int, batch_size: int, n: int, *, distinct: bool = False) -> np.ndarray:
    """Image positions of the batch at ``step``: shuffled epochs, each image once per epoch.

    A fixed function of (seed, step), so a resumed run sees the batches it would have seen.
    ``distinct``: an epoch is ``n // batch_size`` whole batches (the rest of its permutation is
    left out), so a batch never holds an image twice (contrastive losses need that); otherwise
    batches run on across the end of an epoch.
    """
    if distinct:
        if batch_size > n:
            raise WorkbenchError(f"train: a batch of {batch_size} distinct images needs at least that many "
                                 f"images; the view holds {n} (lower batch_size)")
        epoch, k = divmod(step - 1, n // batch_size)
        perm = np.random.default_rng([int(seed), 1, int(epoch)]).permutation(n)
        return perm[k * batch_size:(k + 1) * batch_size].astype(np.int64)
    start = (step - 1) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([int(seed), 1, int(epoch)]).permutation(n)
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def _check_int(name, value, low, *, none_ok=False):
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise WorkbenchError(f"train: {name} must be {'None or ' if none_ok else ''}an integer >= {low}, got {value!r}")


def _check_hyperparameters(*, steps, batch_size, lr, warmup_steps, max_images, log_every, checkpoint_every,
                           keep_checkpoints, ema_decay, grad_clip):
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise WorkbenchError(f"train: lr must be a positive number, got {lr!r}")
    _check_int("warmup_steps", warmup_steps, 0)
    _check_int("max_images", max_images, 1, none_ok=True)
    _check_int("log_every", log_every, 1, none_ok=True)
    _check_int("checkpoint_every", checkpoint_every, 1, none_ok=True)
    _check_int("keep_checkpoints", keep_checkpoints, 1, none_ok=True)
    if not (isinstance(ema_decay, (int, float)) and 0 < ema_decay < 1):
        raise WorkbenchError(f"train: ema_decay must be in (0, 1), got {ema_decay!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise WorkbenchError(f"train: grad_clip must be None or a positive number, got {grad_clip!r}")


def _split_kwargs(trainer_cls, kwargs: dict) -> tuple[dict, dict]:
    """Split extra keyword arguments into model-config overrides and family training options."""
    config_names = set(get_family(trainer_cls.family).config_class.option_names())
    options = {k: v for k, v in kwargs.items() if k in trainer_cls.OPTIONS}
    config = {k: v for k, v in kwargs.items() if k in config_names and k not in options}
    unknown = sorted(set(kwargs) - set(options) - set(config))
    for key in ("image_size", "channels"):
        if key in kwargs:
            raise WorkbenchError(f"train: {key} comes from the training store and cannot be overridden")
    if unknown:
        raise WorkbenchError(f"unknown {trainer_cls.family.upper()} config option(s) {unknown}; valid options are "
                             f"{sorted(config_names)} (model config) and {sorted(trainer_cls.OPTIONS)} (training)")
    return config, options


def _labels_of(view: SliceStore, num_classes: int):
    labels = view.manifest["label"]
    if labels.isna().any():
        bad = int(labels.isna().sum())
        raise StoreError(f"{view.path}: {bad} of {len(view)} training images have no label; class conditioning "
                         f"needs a label for every image (the manifest's 'label' column)")
    values = labels.to_numpy(dtype=np.int64)
    if values.min() < 0 or values.max() >= num_classes:
        raise StoreError(f"{view.path}: labels {sorted(set(values.tolist()))} do not fit {num_classes} classes (0..{num_classes - 1})")
    return values


def _checkpoint_step(folder: Path) -> int | None:
    """Step of a complete resumable checkpoint folder, or None."""
    if not all((folder / name).is_file() for name in (*REQUIRED, DOC)):
        return None
    try:
        info = read_training_info(folder)
        return int(info.get("steps_done", info.get("steps")))
    except (CheckpointError, TypeError, ValueError):
        return None


def latest_checkpoint(out) -> Path | None:
    """The resumable checkpoint with the most steps in a run folder (the final one counts), or None."""
    out = Path(out)
    found = []
    for folder in [out, *sorted((out / CHECKPOINTS).glob("step-*"))]:
        if folder.is_dir():
            step = _checkpoint_step(folder)
            if step is not None:
                found.append((step, folder == out, folder))
    return max(found)[2] if found else None


def check_store_geometry(store: SliceStore, model: str) -> int:
    """The side of the square slices or cube volumes of ``store``, which family ``model`` must train on.

    A store of 3D volumes given to a family of 2D slices (or the reverse), non-square slices or
    non-cube volumes raise :class:`WorkbenchError` naming the store, before any work.
    """
    from ..models.family import family_names

    record = get_family(model)
    dims = record.spatial_dims
    shape = tuple(int(s) for s in store.image_shape)
    spatial = shape[1:]
    if store.spatial_dims != dims:
        if store.is_volume:
            three_d = [n for n in family_names(makes_images=True) if get_family(n).spatial_dims == 3]
            use = f"use {' or '.join(option_hint('model', n) for n in three_d)}, or " if record.makes_images else ""
            raise WorkbenchError(
                f"{store.path}: is a store of 3D volumes (C, D, H, W) = {shape}; model {model!r} trains on 2D "
                f"slices: {use}cut the volumes into slices with workbench.data.volumes.axial_slice_store")
        two_d = [n for n in family_names(makes_images=True) if get_family(n).spatial_dims == 2]
        raise WorkbenchError(
            f"{store.path}: is a store of 2D slices (C, H, W) = {shape}; model {model!r} trains on 3D volumes: "
            f"give it a store of volumes (workbench.data.volumes.prepare_volume_store), or train a 2D family "
            f"({', '.join(two_d)}) on these slices")
    if len(set(spatial)) != 1:
        if dims == 3:
            raise WorkbenchError(f"{store.path}: volumes are {'x'.join(map(str, spatial))} voxels (D x H x W); model "
                                 f"{model!r} needs cubes (D == H == W): prepare the store with "
                                 f"workbench.data.volumes.prepare_volume_store(size=...)")
        raise WorkbenchError(f"{store.path}: images are {'x'.join(map(str, spatial))}; the models need square images")
    return spatial[0]


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def train_model(store, out, *, model: str = "ddpm", preset: str = "tiny", steps: int = 1000, batch_size: int = 16,
                lr: float | None = None, warmup_steps: int = 0, seed: int = 0, max_images: int | None = None,
                augment: str | None = None, conditional: bool = False, ema: bool = True, ema_decay: float = 0.9999,
                ema_power: float = 0.75, bf16: bool | str = "auto", grad_clip: float | None = 1.0,
                checkpoint_every: int | None = 500, keep_checkpoints: int | None = 3, resume: bool = False,
                overwrite: bool = False, log_every: int | None = None, device=None, progress: bool = True,
                run_name: str | None = None, callback=None, **kwargs) -> Path:
    """Train a model of any family (DDPM, latent diffusion, StyleGAN2-type GAN, copy detector) on a SliceStore view.

    Parameters
    ----------
    store : SliceStore (or view, e.g. ``store.where(split="train")``) or its path.
    out : run folder; the finished model is a checkpoint folder here (see the module docstring).
    model : the family: ``"ddpm"``, ``"ldm"``, ``"gan"`` or ``"detector"`` for a store of 2D slices,
        ``"ldm3d"`` for a store of 3D volumes (cubes) (:mod:`workbench.models.family`).
    preset : network size, ``"tiny"``, ``"small"`` or ``"base"`` (model size is a study variable).
    steps : optimisation steps (for the LDM: latent-UNet steps, after ``ae_steps`` autoencoder steps).
    batch_size, lr, warmup_steps, grad_clip : optimisation (``lr=None``: the family's default).
    seed : seeds everything: subset, data order, noise, initial weights.
    max_images : train on a seeded subset of this many images (small sets are what models memorize).
    augment : ``None``/"none", ``"flip"``, ``"affine"`` or ``"flip,affine"`` (see :mod:`.augment`); the
        store's label channels (:attr:`~workbench.data.store.SliceStore.label_channels`) stay labels.
    conditional : condition on the manifest's ``label`` column (tumour in slice; pneumonia vs normal).
    ema, ema_decay, ema_power : keep an exponential moving average of the weights (diffusers
        ``EMAModel`` with warm-up ``1 - (1 + step) ** -ema_power``, capped at ``ema_decay``);
        sampling uses it.
    bf16 : bfloat16 autocast for the forward passes: ``"auto"`` where a short probe measured it faster
        than float32 on this machine (:mod:`workbench.device`), ``True`` / ``False`` to choose.
    checkpoint_every : write a resumable checkpoint every this many steps (None: only at the end).
    keep_checkpoints : how many intermediate checkpoints to keep (None: all).
    resume : continue from the latest checkpoint in ``out`` (start fresh if there is none).  The
        settings must match the checkpoint's; ``steps`` may be larger, to train longer.
    overwrite : delete an existing run folder ``out`` first.
    log_every : steps per logged loss value (default: about 1,000 values over the run).
    device : ``"cpu"``, ``"cuda"``… (default: CUDA when available).
    progress : progress bar with images/s and ETA.
    run_name : name written into the checkpoint and the samples' manifest (default: ``out``'s name).
    callback : ``callback(step, loss)`` at every logged step (e.g. a live plot).
    **kwargs : model-config options (e.g. ``beta_schedule="squaredcos_cap_v2"``, ``r1_gamma=1.0``)
        and family training options (e.g. ``ae_steps`` for the LDM, ``r1_interval`` for the GAN);
        a value of None keeps the preset's (so notebooks can pass every option).

    Returns ``out``.  Hyper-parameters out of range raise :class:`WorkbenchError` before any work.
    """
    import torch
    from ..progress import tqdm

    # -- check everything before any work --------------------------------------------------------
    trainer_cls = get_family(model).trainer_class
    _check_hyperparameters(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                           max_images=max_images, log_every=log_every, checkpoint_every=checkpoint_every,
                           keep_checkpoints=keep_checkpoints, ema_decay=ema_decay, grad_clip=grad_clip)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: keep the preset's value
    config_overrides, options = _split_kwargs(trainer_cls, kwargs)
    trainer_cls.check_options({**trainer_cls.OPTIONS, **options})
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    image_size = check_store_geometry(store, model)  # slices for a 2D family, cube volumes for a 3D one
    out = Path(out)
    if out.exists() and not (resume or overwrite):
        hint = f" (it holds checkpoints of an unfinished run: pass {option_hint('resume')} to continue it)" \
            if (out / CHECKPOINTS).is_dir() else ""
        raise FileExistsError(f"{out}: already exists{hint} (pass {option_hint('overwrite')} to replace it)")
    if len(store) == 0:
        raise StoreError(f"{store.path}: the view to train on is empty (check the split / filter)")
    rng = np.random.default_rng(seed)
    positions = np.arange(len(store))
    if max_images is not None and max_images < len(store):
        positions = np.sort(rng.choice(len(store), size=int(max_images), replace=False))
    view = store.take(positions)
    if trainer_cls.DISTINCT_BATCHES and batch_size > len(view):
        raise WorkbenchError(f"train {model}: batch_size {batch_size} is more than the {len(view)} training images; "
                             f"every batch holds distinct images, so lower batch_size")
    labels = None
    if conditional:
        raw = view.manifest["label"]
        n_classes = max(2, int(raw.max()) + 1) if raw.notna().any() else 2
        labels = _labels_of(view, n_classes)
        config_overrides.setdefault("num_classes", n_classes)
    config = trainer_cls.make_config(preset, image_size=image_size, channels=store.channels, **config_overrides)
    if conditional and not getattr(config, "num_classes", 0):
        raise WorkbenchError("train: conditional=True needs num_classes >= 2")
    device = resolve_device(device)
    run_name = run_name or out.name
    total = trainer_cls.total_steps(int(steps), {**trainer_cls.OPTIONS, **options})
    log_every = int(log_every or max(1, total // 1000))
    lr = float(lr if lr is not None else trainer_cls.DEFAULT_LR)
    label_channels = [store.channel_index(c) for c in store.label_channels]
    augmenter = Augment.parse(augment, label_channels=label_channels)
    # what a resumed run must share with the run it continues
    settings = {
        "model": model, "config": config.to_dict(), "batch_size": int(batch_size), "lr": lr,
        "warmup_steps": int(warmup_steps), "seed": int(seed), "max_images": max_images,
        "train_rows": [int(r) for r in view.rows], "store": str(Path(store.path).resolve()),
        "augment": augmenter.describe(), "conditional": bool(conditional), "ema": bool(ema),
        "ema_decay": float(ema_decay), "ema_power": float(ema_power), "bf16": None, "grad_clip": grad_clip,
        "options": {**trainer_cls.OPTIONS, **options},
    }
    settings = json.loads(json.dumps(settings, default=str))  # compare as the checkpoint will hold them

    # -- resume or start ---------------------------------------------------------------------------
    source = None
    if resume and out.exists():
        source = latest_checkpoint(out)
    # bf16="auto": measured on this machine (workbench.device); a resumed run keeps the precision it
    # started with, so that it ends bit-identical to an uninterrupted one
    requested_bf16 = bf16
    state = read_trainer_state(source) if source is not None else None
    if state is not None and bf16 == "auto" and isinstance(state[1].get("settings", {}).get("bf16"), bool):
        bf16 = state[1]["settings"]["bf16"]
    bf16 = use_bf16(bf16, device)
    settings["bf16"] = bf16
    work = out
    if overwrite and out.exists() and not resume:
        # keep the previous model until the new one is complete: train in a temporary folder beside
        # it and swap the two at the end; a killed run leaves the old model as it was (and a stale
        # temporary that `workbench clean` finds)
        if not out.is_dir():
            raise FileExistsError(f"{out}: is a file, not a run folder; choose another --out")
        work = temporary_name(out)
        work.mkdir()
    n_train = len(view)
    images = None
    if n_train * int(np.prod(store.image_shape)) * 4 <= IN_MEMORY_BYTES:
        images = torch.from_numpy(view.to_array()).to(device)
    label_t = torch.from_numpy(labels).to(device) if labels is not None else None

    def batch(idx: np.ndarray):
        if images is not None:
            x = images[torch.from_numpy(idx).to(device)]
        else:
            order = np.argsort(idx)
            x = torch.from_numpy(view.read(idx[order])).to(device)
            x = x[torch.from_numpy(np.argsort(order)).to(device)]
        return x, (label_t[torch.from_numpy(idx).to(device)] if label_t is not None else None)

    torch.manual_seed(seed)
    trainer = trainer_cls(config, lr=lr, warmup_steps=warmup_steps, grad_clip=grad_clip, ema=ema,
                          ema_decay=ema_decay, ema_power=ema_power, bf16=bf16, device=device, options=options,
                          label_channels=label_channels, total_steps=total)
    trainer.view = view  # the LDM measures its latent scale and reconstruction error on it
    start, history, elapsed, resumed_at = 0, {}, 0.0, []
    if source is not None:
        tensors, doc = state
        diffs = _differences(doc.get("settings", {}), settings)
        if diffs:
            raise CheckpointError(f"{source}: cannot resume with different settings: " + "; ".join(diffs))
        if doc["step"] > total:
            raise CheckpointError(f"{source}: is at step {doc['step']}, beyond the {total} steps asked for")
        weights, meta = read_tensors(source / WEIGHTS)
        trainer.load(split_modules(weights, meta, config.family, source / WEIGHTS), tensors, doc,
                     file=source / WEIGHTS)
        load_rng_state(tensors)
        start, history, elapsed = int(doc["step"]), doc.get("history", {}), float(doc.get("seconds", 0.0))
        resumed_at = list(doc.get("resumed_at", [])) + [start]
        if start == total and source == out:
            print(f"{out}: already trained for {total} steps; nothing to do")
            return out
        print(f"resuming {out} from {source} (step {start} of {total})")

    started = datetime.now(timezone.utc)
    saved_steps: list[int] = []

    def info(step_done: int, seconds: float) -> dict:
        import diffusers

        main = history.get(trainer.MAIN_LOSS, [])
        return {
            "run": run_name, "model": model, "family": config.family, "preset": preset,
            "steps": int(steps), "steps_done": int(step_done), "total_steps": int(total),
            "batch_size": int(batch_size), "lr": lr, "warmup_steps": int(warmup_steps), "grad_clip": grad_clip,
            "seed": int(seed), "bf16": bool(bf16), "precision": describe_precision(requested_bf16, bf16, device),
            "augment": augmenter.describe(), "label_channels": store.label_channels, "conditional": bool(conditional),
            "ema": bool(ema), "ema_decay": float(ema_decay), "ema_power": float(ema_power),
            "options": settings["options"], "device": str(device), "store": settings["store"],
            "store_kind": store.kind, "image_shape": list(store.image_shape), "max_images": max_images,
            "n_train": int(n_train),
            "train_rows": settings["train_rows"], "loss_every": log_every, "loss": main, "losses": history,
            "final_loss": main[-1][1] if main else None, "resumed_at": resumed_at,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "train_seconds": round(seconds, 2), "steps_per_second": round(step_done / max(seconds, 1e-9), 4),
            "images_per_second": round(step_done * batch_size / max(seconds, 1e-9), 3),
            **trainer.extra_info(),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "python": platform.python_version()},
            "machine": platform.machine(), "threads": torch.get_num_threads(),
        }

    def save(folder: Path, step_done: int, seconds: float) -> None:
        tensors, doc = trainer.state()
        tensors.update(rng_state())
        doc.update(step=step_done, settings=settings, history=history, seconds=seconds, resumed_at=resumed_at)
        write_trainer_state(folder, tensors, doc)
        write_model_files(folder, trainer.saved_modules(), config, info(step_done, seconds))

    def checkpoint(step_done: int, seconds: float) -> None:
        folder = work / CHECKPOINTS / f"step-{step_done:07d}"
        with atomic_dir(folder, overwrite=True) as tmp:
            save(tmp, step_done, seconds)
        saved_steps.append(step_done)
        if keep_checkpoints:
            for old in sorted((work / CHECKPOINTS).glob("step-*"))[:-keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    window: dict[str, list[float]] = {}

    def _train_steps() -> None:
        nonlocal window
        for step in range(start + 1, total + 1):
            s = step_seed(seed, step)
            torch.manual_seed(s)
            gen = torch.Generator(device=device).manual_seed(s)
            x, y = batch(batch_positions(seed, step, batch_size, n_train, distinct=trainer_cls.DISTINCT_BATCHES))
            x = augmenter(x, gen)
            losses = trainer.step(x * 2.0 - 1.0, y, step, gen)
            for name, value in losses.items():
                if not math.isfinite(value):
                    raise WorkbenchError(f"train {model}: {name} became {value} at step {step} "
                                         f"(try a lower learning rate than {lr}, or float32: "
                                         f"{'--no-bf16' if option_hint('bf16') == '--bf16' else 'bf16=False'})")
                window.setdefault(name, []).append(value)
            if step % log_every == 0 or step == total:
                logged = {name: float(np.mean(values)) for name, values in window.items()}
                for name, value in logged.items():
                    history.setdefault(name, []).append([step, value])
                window = {}
                bar.set_postfix({k: f"{v:.4f}" for k, v in list(logged.items())[:3]}, refresh=False)
                if callback is not None and logged:
                    callback(step, logged.get(trainer.MAIN_LOSS, next(iter(logged.values()))))
            bar.update(batch_size)
            if checkpoint_every and step % checkpoint_every == 0 and step < total:
                checkpoint(step, elapsed + time.perf_counter() - t0)

    t0 = time.perf_counter()
    bar = tqdm(total=total * batch_size, initial=start * batch_size, desc=f"train {model} {run_name}",
               unit="img", unit_scale=False, disable=not progress)
    try:
        try:
            _train_steps()
        finally:
            bar.close()
        seconds = elapsed + time.perf_counter() - t0
        trainer.on_finish(view)
        work.mkdir(parents=True, exist_ok=True)
        (work / TRAINING).unlink(missing_ok=True)  # the folder is unfinished until training.json is back
        save(work, total, seconds)
        if work != out:
            replace_path(work, out)
    except BaseException:
        if work != out:
            remove_path(work)  # the previous model stays as it was
        raise
    final = read_training_info(out)
    loss = final["final_loss"]
    print(f"wrote {model.upper()} model {out} ({config.preset} preset, {total} steps on {n_train} images of "
          f"{store.path}, final {trainer.MAIN_LOSS} {loss if loss is None else round(loss, 4)}, {seconds:.0f} s, "
          f"{final['images_per_second']:.1f} images/s)")
    return out


def train_ddpm(store, out, **kwargs) -> Path:
    """:func:`train_model` with ``model="ddpm"``."""
    return train_model(store, out, model="ddpm", **kwargs)


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


__all__ = ["check_store_geometry", "train_model", "train_ddpm", "training_view", "latest_checkpoint"]
