"""A self-supervised copy detector: a small CNN whose embeddings match an image to its copies.

Why.  Pixel Pearson r (:mod:`workbench.search`) finds exact and near-exact copies, but a copy
shifted by a few pixels, turned by a few degrees or slightly rescaled no longer lines up pixel by
pixel, and its r with the source drops to the level of an unrelated slice.  Dar et al. (2024)
therefore used a contrastive copy detector next to pixel similarity.  This module is that
detector, trained from scratch on the training split (no downloaded weights, ever).

What.  An :class:`Encoder` (3x3 convolutions + GroupNorm + SiLU, strided downsampling, global
average pool, a two-layer projection MLP) maps an image ``(C, H, W)`` in [0, 1] to a unit vector of
``embedding_dim`` (128) numbers.  It is trained SimCLR-style (Chen et al. 2020): every training
image in a batch is augmented twice (:func:`augment_pair`: a small random affine transform --
rotation, translation, scale -- an optional left-right flip and a per-channel brightness / contrast
jitter), and the NT-Xent loss (:func:`nt_xent_loss`, temperature 0.07) pulls the two views of one
image together and pushes them away from the other 2N - 2 views of the batch.  The encoder so
learns to ignore exactly the changes that a copy may carry (shifts, small rotations, intensity
changes) while telling different slices apart.

The embedding used for similarity is the L2-normalised *output of the projection head* (the vector
the loss was trained on), not the pooled features before it.  For SimCLR's downstream
classification the pre-projection features are better because the head discards what the
augmentations change; for copy detection discarding that is the point: we want an image and its
shifted or jittered copy to land on the same vector (SSCD, Pizzi et al. 2022, likewise compares
the trained descriptor).  On the 32x32 phantom after a short training the pooled features gave
held-out slices a mean nearest similarity of 0.993 against 0.995 for shifted copies, the
projection 0.954 against 0.985.

Similarity between two embeddings is their cosine similarity (their dot product, both being unit
vectors), in [-1, 1]; :func:`embedding_topk` finds the nearest neighbours exactly with
:func:`workbench.search.topk_correlation` (its docstring says how an exact Pearson-r search gives
exact cosine similarities).  Calibration and copy rates then work as for pixel r: the held-out slices'
nearest-neighbour similarities give the baseline (:func:`embedding_match_table` returns the same
table as :func:`workbench.memorization.match_table`).

Training time: with the defaults (800 steps of 128 images, bf16 autocast) a 64x64, 5-channel store
trains in a few minutes on a 2-core CPU with AMX; the measured time, and what the detector finds
that pixel r misses, are in BENCHMARKS.md (``benchmarks/detector.py``).  The time depends on the
steps, not on the store's size: a training split of 100,000 slices may need more steps.

Example
-------
>>> store = open_store("runs/brats64")                                                # doctest: +SKIP
>>> train_detector(store.where(split="train"), "runs/detector64")                      # doctest: +SKIP
>>> encoder, config, info = load_detector("runs/detector64")                          # doctest: +SKIP
>>> ref = embed(encoder, store.where(split="train"))                                  # doctest: +SKIP
>>> syn = embed(encoder, open_store("runs/ddpm64/samples"))                            # doctest: +SKIP
>>> similarity, nearest = embedding_topk(syn, ref, k=1)                               # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data.atomic import atomic_dir, atomic_file
from ..data.brats import LABEL_CONTRASTS
from ..data.store import SliceStore
from ..errors import CheckpointError, StoreError, WorkbenchError, option_hint
from ..device import describe as describe_precision
from ..device import resolve_device, use_bf16

WEIGHTS = "detector.safetensors"
CONFIG = "detector.json"
KIND = "workbench-copy-detector"
#: a training view up to this many bytes of float32 is held in memory; larger ones are read per batch
IN_MEMORY_BYTES = 1 << 30


# -- configuration -------------------------------------------------------------------------------
@dataclasses.dataclass
class DetectorConfig:
    """Architecture, loss and augmentation settings of a copy detector; round-trips to JSON.

    ``image_size`` and ``channels`` come from the training store: a detector embeds only images
    of that size with those channels, in that order.  Channels named like label maps (``seg``)
    are resampled with nearest neighbours and get no intensity jitter.
    """

    image_size: int
    channels: tuple[str, ...]
    embedding_dim: int = 128
    #: channels of the stages; each stage halves the image size (a stride-2 convolution)
    widths: tuple[int, ...] = (32, 64, 128, 128)
    #: hidden units of the projection MLP
    head_dim: int = 256
    #: BatchNorm after the projection's hidden layer (as in SimCLR)
    head_batchnorm: bool = True
    #: GroupNorm groups (divides every width)
    groups: int = 8
    temperature: float = 0.07
    max_rotation_deg: float = 10.0
    #: largest shift, as a fraction of the image size (0.1: 6 pixels at 64x64, 3 at 32x32)
    max_translate: float = 0.1
    #: scale in [1 - s, 1 + s]
    max_scale: float = 0.05
    #: random left-right flips (brain slices: yes; chest X-rays: no, the heart is on one side)
    flip: bool = True
    #: per channel, add a brightness offset in [-b, b] ...
    brightness: float = 0.1
    #: ... after multiplying by a contrast gain in [1 - c, 1 + c]
    contrast: float = 0.2
    version: int = 1

    VERSION = 1
    TUPLE_FIELDS = ("channels", "widths")

    def __post_init__(self):
        for name in self.TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, tuple(str(v) if name == "channels" else v for v in value))

    @classmethod
    def option_names(cls) -> list[str]:
        """Fields a user may set (all but image_size, channels and version)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("image_size", "channels", "version")]

    @property
    def label_channels(self) -> list[int]:
        """Positions of label-map channels (``seg``)."""
        return [i for i, c in enumerate(self.channels) if c in LABEL_CONTRASTS]

    def _bad(self, msg: str):
        raise WorkbenchError(f"detector config: {msg}")

    def validate(self) -> "DetectorConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        def number(name, low, high, *, low_open=False, high_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self._bad(f"{name} must be a number, got {v!r}")
            if v < low or (low_open and v == low) or v > high or (high_open and v == high):
                lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
                self._bad(f"{name} must be in {lo}{low}, {high}{hi}, got {v}")

        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            self._bad(f"image_size must be an integer of at least 8 pixels, got {self.image_size!r}")
        if not isinstance(self.channels, tuple) or len(self.channels) < 1:
            self._bad("channels is empty; name the image channels (e.g. ['t1', 'flair'])")
        if len(set(self.channels)) != len(self.channels):
            self._bad(f"channels {list(self.channels)} name a channel twice")
        if isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or self.embedding_dim < 2:
            self._bad(f"embedding_dim must be an integer >= 2, got {self.embedding_dim!r}")
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            self._bad(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if not isinstance(self.widths, tuple) or not self.widths or \
                not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in self.widths):
            self._bad(f"widths must be a non-empty list of positive integers, got {self.widths!r}")
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            self._bad(f"groups must be a positive integer, got {self.groups!r}")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            self._bad(f"every width must be divisible by groups={self.groups}; {bad} is not")
        if 2 ** len(self.widths) > self.image_size:
            self._bad(f"{len(self.widths)} stages halve the image {len(self.widths)} times, too often for "
                      f"{self.image_size}x{self.image_size} images; use fewer widths")
        number("temperature", 0, 10, low_open=True)
        number("max_rotation_deg", 0, 180)
        number("max_translate", 0, 0.5, high_open=True)
        number("max_scale", 0, 0.5, high_open=True)
        number("brightness", 0, 1)
        number("contrast", 0, 1, high_open=True)
        for name in ("flip", "head_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                self._bad(f"{name} must be true or false, got {getattr(self, name)!r}")
        return self

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": KIND}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "detector config") -> "DetectorConfig":
        """Rebuild a config from :meth:`to_dict` output; unknown, missing or invalid values are errors."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        kind = d.pop("kind", None)
        if kind != KIND:
            raise CheckpointError(f"{source}: not a copy-detector config (kind {kind!r}, expected {KIND!r})")
        version = d.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= cls.VERSION:
            raise CheckpointError(f"{source}: config version {version!r}; this workbench reads copy-detector "
                                  f"configs of versions 1..{cls.VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        missing = sorted(fields - set(d))
        if unknown or missing:
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
            raise CheckpointError(f"{source}: not a copy-detector config written by this workbench ({'; '.join(parts)})")
        try:
            return cls(**d).validate()
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: invalid copy-detector config ({err})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "detector config") -> "DetectorConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(d, source=source)


# -- the network ---------------------------------------------------------------------------------
def _conv(c_in: int, c_out: int, groups: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU()]


class Encoder(nn.Module):
    """Small CNN: image ``(N, C, H, W)`` in [0, 1] -> unit embedding ``(N, embedding_dim)``.

    Per width a stride-2 convolution, followed (from the second width on) by a stride-1
    convolution, each with GroupNorm and SiLU: 64x64 images become 4x4 maps of ``widths[-1]``
    features.  The first stage has a single convolution because at half the input size it is
    the costliest (in a rough trial, a full-size stem and a second convolution there made a
    training step several times slower).  Then a global average pool (the source of most of
    the shift invariance) and the projection MLP ``Linear -> BatchNorm -> ReLU -> Linear``
    (SimCLR's head; in a short trial on the phantom the BatchNorm spread held-out slices
    further from the training ones: mean nearest similarity 0.91 against 0.97 without it,
    after 240 steps at 32x32).

    :meth:`forward` returns the L2-normalised projection: the embedding compared by the
    detector (the module docstring says why).  :meth:`features` gives the pooled features
    before the projection.
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        config.validate()
        self.config = config
        g = config.groups
        prev, layers = len(config.channels), []
        for i, w in enumerate(config.widths):
            layers += _conv(prev, w, g, stride=2)
            if i > 0:  # a second convolution per stage, except at the costly first (half-size) level
                layers += _conv(w, w, g)
            prev = w
        self.body = nn.Sequential(*layers)
        norm = [nn.BatchNorm1d(config.head_dim)] if config.head_batchnorm else []
        self.head = nn.Sequential(nn.Linear(prev, config.head_dim), *norm, nn.ReLU(),
                                  nn.Linear(config.head_dim, config.embedding_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``(N, widths[-1])`` before the projection head."""
        return self.body(x * 2.0 - 1.0).float().mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(N, embedding_dim)``.

        Under autocast only the convolutions run in bfloat16: the head runs in float32, since
        the loss compares cosine similarities that differ in the third decimal between
        neighbouring slices, below bfloat16's resolution.
        """
        h = self.features(x).float()
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(self.head(h), dim=1)


# -- loss ----------------------------------------------------------------------------------------
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two views ``z1``, ``z2`` (each ``(N, D)``) of the same N images.

    The 2N views are L2-normalised; each view's logits are its cosine similarities with the other
    2N - 1 views divided by ``temperature`` (its similarity with itself is left out), and its
    target is the other view of the same image.  The loss is the cross entropy averaged over all
    2N views:

        l(i) = -log( exp(s(i, j(i)) / t) / sum_{k != i} exp(s(i, k) / t) )

    Computed in float32.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise WorkbenchError(f"nt_xent_loss: views must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if len(z1) < 2:
        raise WorkbenchError("nt_xent_loss: needs at least 2 images (the other images are the negatives)")
    if not temperature > 0:
        raise WorkbenchError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


# -- augmentation --------------------------------------------------------------------------------
def _as_images(x, name: str = "images") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, torch.Tensor):
        raise WorkbenchError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim == 3:  # (N, H, W): one channel
        x = x[:, None]
    if x.ndim != 4:
        raise WorkbenchError(f"{name}: expected images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _view(x: torch.Tensor, generator: torch.Generator, config: DetectorConfig) -> torch.Tensor:
    """One random view of every image; the random numbers are drawn on the CPU in a fixed order."""
    n, c = x.shape[:2]

    def uniform(*shape, low=-1.0, high=1.0):
        return (low + (high - low) * torch.rand(*shape, generator=generator)).to(x.device)

    flip = torch.rand(n, generator=generator).to(x.device) < 0.5
    angle = uniform(n) * (config.max_rotation_deg * math.pi / 180)
    scale = 1 + uniform(n) * config.max_scale
    shift = uniform(n, 2) * (2 * config.max_translate)  # grid coordinates span [-1, 1]
    gain = 1 + uniform(n, c) * config.contrast
    offset = uniform(n, c) * config.brightness
    if config.flip:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = config.label_channels
    if labels:
        idx = torch.tensor(labels, device=x.device)
        out[:, idx] = F.grid_sample(x[:, idx], grid, mode="nearest", padding_mode="zeros", align_corners=False)
        gain[:, idx] = 1.0
        offset[:, idx] = 0.0
    out = out * gain[:, :, None, None] + offset[:, :, None, None]
    return out.clamp_(0.0, 1.0)


def augment_pair(x, generator: torch.Generator, config: DetectorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of every image of a batch ``(N, C, H, W)`` in [0, 1].

    Each view: a left-right flip with probability 1/2 (if ``config.flip``), a random affine
    transform (rotation up to ``max_rotation_deg``, scale in ``1 +- max_scale``, shift up to
    ``max_translate`` of the image size in x and y; bilinear, zero border, nearest neighbours for
    label channels), then per channel ``x * gain + offset`` with gain in ``1 +- contrast`` and
    offset in ``+- brightness`` (label channels unchanged), clipped to [0, 1].  All randomness
    comes from ``generator`` (a CPU ``torch.Generator``), so the same seed gives the same views.

    >>> g = torch.Generator().manual_seed(0)                       # doctest: +SKIP
    >>> v1, v2 = augment_pair(images, g, config)                   # doctest: +SKIP
    """
    x = _as_images(x)
    if x.shape[1] != len(config.channels):
        raise WorkbenchError(f"augment_pair: images have {x.shape[1]} channels but the config names "
                             f"{len(config.channels)} ({list(config.channels)})")
    return _view(x, generator, config), _view(x, generator, config)


# -- training ------------------------------------------------------------------------------------
def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise WorkbenchError(f"train_detector: {name} must be a positive integer, got {value!r}")
    return int(value)


def train_detector(store, out, *, steps: int = 800, batch_size: int = 128, lr: float = 2e-3,
                   weight_decay: float = 1e-4, warmup_steps: int = 20, seed: int = 0, bf16: bool | str = "auto",
                   device: str = "auto", progress: bool = True, overwrite: bool = False,
                   **config_overrides) -> Path:
    """Train a copy detector on a SliceStore view (the training split) and write it to ``out``.

    Parameters
    ----------
    store : a SliceStore (view) or its folder: the images whose copies are to be found.
    out : folder to write: ``detector.safetensors`` (weights) and ``detector.json`` (config and
        training info: steps, seed, loss history, seconds, store path and rows).  Written
        atomically: the folder appears only when complete.
    steps, batch_size : optimisation steps of ``batch_size`` images (each seen as two views);
        a batch never holds an image twice, so it is capped at the number of images.
    lr, weight_decay, warmup_steps : AdamW, with a linear warm-up and a cosine decay to zero.
    seed : seeds the weights, the batches and the augmentations (written to ``detector.json``).
    bf16 : bfloat16 autocast for the network: ``"auto"`` where measured faster than float32 on this
        machine (:mod:`workbench.device`); the loss is always float32.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    progress : progress bar with images/s.
    overwrite : replace an existing ``out``.
    **config_overrides : :class:`DetectorConfig` options, e.g. ``embedding_dim=64``,
        ``max_translate=0.15``, ``flip=False`` (chest X-rays).

    With the defaults a 64x64, 5-channel training split trains in about 2.5 minutes on a 2-core
    AMX CPU (147 s measured, 695 images/s; module docstring).  Returns ``out``.
    """
    from tqdm.auto import tqdm

    steps = _check_positive_int("steps", steps)
    batch_size = _check_positive_int("batch_size", batch_size)
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise WorkbenchError(f"train_detector: warmup_steps must be >= 0, got {warmup_steps}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise WorkbenchError(f"train_detector: lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise WorkbenchError(f"train_detector: weight_decay must be >= 0, got {weight_decay!r}")
    unknown = sorted(set(config_overrides) - set(DetectorConfig.option_names()))
    if unknown:
        raise WorkbenchError(f"train_detector: unknown option(s) {unknown}; detector options are "
                             f"{DetectorConfig.option_names()}")
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass {option_hint('overwrite')} to replace it)")
    if len(store) < 2:
        raise StoreError(f"{store.path}: the view to train on holds {len(store)} image(s); "
                         "contrastive training needs at least 2 (check the split / filter)")
    _, height, width = store.image_shape
    if height != width:
        raise WorkbenchError(f"{store.path}: images are {height}x{width}; the detector needs square images")
    config = DetectorConfig(image_size=int(height), channels=tuple(store.channels), **config_overrides).validate()
    dev = resolve_device(device)
    requested_bf16, bf16 = bf16, use_bf16(bf16, dev)  # "auto": measured on this machine
    n = len(store)
    batch_size = min(batch_size, n)

    images = None
    if n * int(np.prod(store.image_shape)) * 4 <= IN_MEMORY_BYTES:
        images = torch.from_numpy(store.to_array()).to(dev)

    def batch(idx: np.ndarray) -> torch.Tensor:
        if images is not None:
            return images[torch.from_numpy(idx).to(dev)]
        return torch.from_numpy(store.read(np.sort(idx))).to(dev)  # order within a batch does not matter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(config).to(dev)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:  # step counts from 1
        if step <= warmup_steps:
            return lr * step / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    order, cursor = rng.permutation(n), 0
    history: list[float] = []
    encoder.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps * batch_size, desc=f"train copy detector {out.name}", unit="img", disable=not progress)
    try:
        for step in range(1, steps + 1):
            if cursor + batch_size > n:  # epochs: every image once before any repeats
                order, cursor = rng.permutation(n), 0
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            v1, v2 = augment_pair(batch(idx), gen, config)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                z = encoder(torch.cat([v1, v2]))
            loss = nt_xent_loss(z[:len(idx)], z[len(idx):], config.temperature)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise WorkbenchError(f"train_detector: the loss became {value} at step {step} "
                                     f"(try a lower lr than {lr} or bf16=False)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(round(value, 5))
            bar.update(len(idx))
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{np.mean(history[-10:]):.3f}", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    info = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "seed": int(seed), "bf16": bool(bf16),
        "precision": describe_precision(requested_bf16, bf16, dev), "device": str(dev),
        "loss": history, "final_loss": float(np.mean(history[-10:])),
        "seconds": round(seconds, 2), "images_per_second": round(steps * batch_size / max(seconds, 1e-9), 2),
        "store": str(Path(store.path).resolve()), "train_rows": [int(r) for r in store.rows], "n_images": n,
        "torch": torch.__version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_detector(out, encoder, info, overwrite=overwrite)
    if progress:
        print(f"wrote copy detector {out} ({steps} steps of {batch_size} on {n} images of {store.path}, "
              f"final loss {info['final_loss']:.3f}, {seconds:.0f} s, {info['images_per_second']:.0f} images/s)")
    return out


# -- saving and loading --------------------------------------------------------------------------
def save_detector(out, encoder: Encoder, info: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write ``detector.safetensors`` and ``detector.json`` into the folder ``out``, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    doc = {"config": encoder.config.to_dict(), "training": info or {}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with atomic_file(tmp / WEIGHTS) as f:
            save_file(tensors, str(f), metadata={"format": "pt", "workbench": KIND})
        with atomic_file(tmp / CONFIG) as f:
            f.write_text(json.dumps(doc, indent=2, default=str))
    return out


def load_detector(path, *, device: str = "cpu") -> tuple[Encoder, DetectorConfig, dict]:
    """Load a detector folder written by :func:`train_detector`: ``(encoder, config, training info)``.

    ``path`` is the folder (or either file in it).  Weights are read from safetensors only, never
    unpickled.  A missing, truncated or mismatched file raises :class:`CheckpointError` naming it.
    The encoder is returned in eval mode.
    """
    from ..models.checkpoint import load_state, read_tensors

    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, CONFIG):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"{path}: no copy detector here (folder does not exist)")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; the detector is incomplete or was not written by the workbench")
    file = path / CONFIG
    try:
        doc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable or truncated ({err})") from None
    if not isinstance(doc, dict) or "config" not in doc:
        raise CheckpointError(f"{file}: expected a JSON object with a 'config' entry")
    config = DetectorConfig.from_dict(doc["config"], source=str(file))
    info = doc.get("training") or {}
    file = path / WEIGHTS
    tensors, meta = read_tensors(file)
    if meta.get("workbench") != KIND:
        raise CheckpointError(f"{file}: not copy-detector weights (metadata says {meta.get('workbench')!r})")
    encoder = Encoder(config)
    load_state(encoder, tensors, name="detector", file=file, config_file=path / CONFIG)
    return encoder.to(device).eval(), config, info


# -- embedding and search ------------------------------------------------------------------------
def embed(encoder: Encoder, images, *, batch_size: int = 256, bf16: bool = False, progress: bool = False) -> np.ndarray:
    """Embeddings ``(N, embedding_dim)`` float32, unit length, of a SliceStore or an image array.

    ``images``: a SliceStore (view) whose channels and image size are the detector's, or an array /
    tensor ``(N, C, H, W)`` (``(N, H, W)`` for one channel) in [0, 1].  Runs on the encoder's
    device in eval mode, in float32 unless ``bf16``.
    """
    from tqdm.auto import tqdm

    if not isinstance(encoder, Encoder):
        raise WorkbenchError(f"embed: expected a detector Encoder (from load_detector), got {type(encoder).__name__}")
    config = encoder.config
    size = config.image_size
    want = (len(config.channels), size, size)
    if isinstance(images, SliceStore):
        if list(images.channels) != list(config.channels):  # matched by name: reorder, or refuse others
            if sorted(images.channels) != sorted(config.channels):
                raise WorkbenchError(f"{images.path}: channels {images.channels} differ from the detector's "
                                     f"{list(config.channels)}; embed a store with the channels the detector was "
                                     f"trained on")
            images = images.with_channels(config.channels)
        if tuple(images.image_shape) != want:
            raise WorkbenchError(f"{images.path}: images are {images.image_shape[1]}x{images.image_shape[2]} but the "
                                 f"detector was trained on {size}x{size}; use a store of that size")
        n = len(images)
        blocks = images.blocks(batch_size)
    else:
        arr = _as_images(images)
        if tuple(arr.shape[1:]) != want:
            raise WorkbenchError(f"embed: images have shape (C, H, W) = {tuple(arr.shape[1:])} but the detector "
                                 f"expects {want} (channels {list(config.channels)})")
        n = len(arr)
        blocks = ((a, arr[a:a + batch_size]) for a in range(0, n, batch_size))
    dev = next(encoder.parameters()).device
    out = np.empty((n, config.embedding_dim), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), tqdm(total=n, desc="embedding", unit="img", disable=not progress) as bar:
            for start, block in blocks:
                x = torch.as_tensor(block, dtype=torch.float32).to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    z = encoder(x)
                out[start:start + len(x)] = z.float().cpu().numpy()
                bar.update(len(x))
    finally:
        encoder.train(was_training)
    return out


def _as_embeddings(z, name: str) -> np.ndarray:
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().numpy()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise WorkbenchError(f"{name}: expected embeddings (N, D) from embed(), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise WorkbenchError(f"{name}: embeddings contain non-finite values")
    norm = np.linalg.norm(z, axis=1)
    if (norm == 0).any():
        raise WorkbenchError(f"{name}: embedding(s) {np.flatnonzero(norm == 0)[:10].tolist()} are all zero")
    return z / norm[:, None]


def embedding_topk(query_embeddings, reference_embeddings, k: int = 1, **search_options) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k nearest reference embeddings of every query by cosine similarity.

    Returns ``(values, indices)``, both ``(Q, k)``: cosine similarities (descending, ties to the
    lower index) and positions in the reference.  The search is
    :func:`workbench.search.topk_correlation`, fed each unit embedding ``z`` as the "image"
    ``[z, -z]`` (shape ``(N, 1, 1, 2D)``): that vector has mean exactly 0 and squared norm ``2``,
    so its Pearson r with ``[y, -y]`` is ``2 z.y / 2 = z.y``, the cosine similarity, and the
    search's exact float64 rescore makes the values exact (to ~1e-15).  (The Pearson r of the raw
    embeddings would instead be the cosine of the embeddings after removing each one's mean over
    its 128 components, which is not what the loss trained.)  ``search_options`` go to
    ``topk_correlation`` (``device``, ``progress``...).
    """
    from ..search import topk_correlation

    q = _as_embeddings(query_embeddings, "query_embeddings")
    r = _as_embeddings(reference_embeddings, "reference_embeddings")
    if q.shape[1] != r.shape[1]:
        raise WorkbenchError(f"query embeddings have {q.shape[1]} dimensions but the reference has {r.shape[1]}; "
                             "embed both with the same detector")
    k = int(k)
    if not 1 <= k <= len(r):
        raise WorkbenchError(f"k={k} must be between 1 and the reference size {len(r)}")
    search_options.setdefault("progress", False)
    qq = np.concatenate([q, -q], axis=1)[:, None, None, :]
    rr = np.concatenate([r, -r], axis=1)[:, None, None, :]
    # the search reads float64 rows exactly in its rescore; hand it float64 so nothing is rounded
    result = topk_correlation(qq, rr, k=k, **search_options)
    return np.asarray(result.values, dtype=np.float64), np.asarray(result.indices, dtype=np.int64)


def embedding_match_table(encoder: Encoder, queries: SliceStore, reference: SliceStore, *, k: int = 1,
                          query_embeddings=None, reference_embeddings=None, **search_options) -> pd.DataFrame:
    """:func:`workbench.memorization.match_table` in embedding space: one row per (query, rank).

    The same columns as ``match_table``, with ``r`` holding the detector's cosine similarity
    (``table.attrs["similarity"]`` says so), so the calibration and copy-rate code that reads
    pixel-r tables reads these too.  Pass precomputed ``*_embeddings`` to skip embedding.
    """
    zq = embed(encoder, queries) if query_embeddings is None else query_embeddings
    zr = embed(encoder, reference) if reference_embeddings is None else reference_embeddings
    if len(zq) != len(queries) or len(zr) != len(reference):
        raise WorkbenchError("embedding_match_table: the embeddings passed do not match the stores' sizes")
    values, indices = embedding_topk(zq, zr, k=k, **search_options)
    from .nearest import matches_frame

    table = matches_frame(queries, reference, values, indices)
    table.attrs["similarity"] = "cosine similarity of copy-detector embeddings"
    table.attrs["constant_queries"] = []
    return table
