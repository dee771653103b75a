"""A self-supervised copy detector: a small CNN whose embeddings match an image to its copies.

Why.  Pixel Pearson r (:mod:`workbench.search`) finds exact and near-exact copies, but a copy
shifted by a few pixels, turned by a few degrees or slightly rescaled no longer lines up pixel by
pixel, and its r with the source drops to the level of an unrelated slice.  Dar et al. (2024)
therefore used a contrastive copy detector next to pixel similarity.  This module is that
detector, trained from scratch on the training split (no downloaded weights, ever).

What.  An :class:`~workbench.models.detector.Encoder` (3x3 convolutions + GroupNorm + SiLU, strided downsampling, global
average pool, a two-layer projection MLP) maps an image ``(C, H, W)`` in [0, 1] to a unit vector of
``embedding_dim`` (128) numbers.  It is trained SimCLR-style (Chen et al. 2020): every training
image in a batch is augmented twice (:func:`~workbench.train.detector.augment_pair`: the shared
training augmentations of :mod:`workbench.train.augment` -- a small random affine transform, an
optional left-right flip -- plus a per-channel brightness / contrast jitter), and the NT-Xent loss
(:func:`~workbench.models.detector.nt_xent_loss`, temperature 0.07) pulls the two views of one
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

Where things are.  The detector is a model family like the generative ones (``"detector"`` in
:mod:`workbench.models.family`): its config, network and loss are in :mod:`workbench.models.detector`,
its trainer in :mod:`workbench.train.detector`, and it is trained by the loop every family shares
(checkpoints, resume after a kill, optional EMA).  This module is its friendly face
(:func:`train_detector`, :func:`load_detector`) and uses it (:func:`embed`, :func:`embedding_topk`).

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

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.store import SliceStore
from ..errors import CheckpointError, StoreError, WorkbenchError
from ..models.checkpoint import CONFIG, WEIGHTS, load_model, load_state, read_tensors, save_model
from ..models.detector import DetectorConfig, Encoder, nt_xent_loss
from ..train.detector import augment_pair

#: the files of the detectors written before the detector was a model family (still read)
LEGACY_WEIGHTS = "detector.safetensors"
LEGACY_CONFIG = "detector.json"
KIND = "workbench-copy-detector"

__all__ = ["CONFIG", "WEIGHTS", "DetectorConfig", "Encoder", "augment_pair", "embed", "embedding_match_table",
           "embedding_topk", "load_detector", "nt_xent_loss", "save_detector", "train_detector"]


# -- images --------------------------------------------------------------------------------------
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


# -- training ------------------------------------------------------------------------------------
def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise WorkbenchError(f"train_detector: {name} must be a positive integer, got {value!r}")
    return int(value)


def train_detector(store, out, *, steps: int = 800, batch_size: int = 128, lr: float = 2e-3,
                   weight_decay: float = 1e-4, warmup_steps: int = 20, seed: int = 0, bf16: bool | str = "auto",
                   device: str = "auto", progress: bool = True, overwrite: bool = False, resume: bool = False,
                   ema: bool = False, checkpoint_every: int | None = 200, **config_overrides) -> Path:
    """Train a copy detector on a SliceStore view (the training split) and write it to ``out``.

    The detector is the model family ``"detector"``, trained by the loop every family shares
    (:func:`workbench.train.train_model`): ``out`` is a checkpoint folder like a generative
    model's (``model.safetensors``, ``config.json``, ``training.json``, and resumable
    ``checkpoints/step-…``), and a killed run continues with ``resume=True`` to the weights an
    uninterrupted run ends with.

    Parameters
    ----------
    store : a SliceStore (view) or its folder: the images whose copies are to be found.  Its label
        channels (:attr:`~workbench.data.store.SliceStore.label_channels`) are resampled with
        nearest neighbours and not jittered.
    out : folder to write (appears complete only at the end; training info: steps, seed, loss
        history, seconds, store path and rows, in ``training.json``).
    steps, batch_size : optimisation steps of ``batch_size`` images (each seen as two views);
        a batch never holds an image twice, so it is capped at the number of images.
    lr, weight_decay, warmup_steps : AdamW, with a linear warm-up and a cosine decay to zero.
    seed : seeds the weights, the batches and the augmentations (written to ``training.json``).
    bf16 : bfloat16 autocast for the network: ``"auto"`` where measured faster than float32 on this
        machine (:mod:`workbench.device`); the loss is always float32.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    progress : progress bar with images/s.
    overwrite : replace an existing ``out`` (the old one stays until the new one is complete).
    resume : continue a killed run from its latest checkpoint in ``out``.
    ema : also keep an EMA of the encoder's weights (``load_detector`` then returns the EMA copy).
    checkpoint_every : a resumable checkpoint every this many steps (None: only at the end).
    **config_overrides : :class:`DetectorConfig` options, e.g. ``embedding_dim=64``,
        ``max_translate=0.15``, ``flip=False`` (chest X-rays).

    With the defaults a 64x64, 5-channel training split trains in about 2.5 minutes on a 2-core
    AMX CPU (module docstring).  Returns ``out``.
    """
    from ..train import train_model

    steps = _check_positive_int("steps", steps)
    batch_size = _check_positive_int("batch_size", batch_size)
    unknown = sorted(set(config_overrides) - set(DetectorConfig.option_names()))
    if unknown:
        raise WorkbenchError(f"train_detector: unknown option(s) {unknown}; detector options are "
                             f"{DetectorConfig.option_names()}")
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    if len(store) < 2:
        raise StoreError(f"{store.path}: the view to train on holds {len(store)} image(s); "
                         "contrastive training needs at least 2 (check the split / filter)")
    return train_model(store, out, model="detector", preset="tiny", steps=steps, batch_size=min(batch_size, len(store)),
                       lr=lr, warmup_steps=warmup_steps, seed=seed, bf16=bf16, device=device, progress=progress,
                       overwrite=overwrite, resume=resume, ema=ema, grad_clip=None,
                       checkpoint_every=checkpoint_every, log_every=1, weight_decay=weight_decay, **config_overrides)


# -- saving and loading --------------------------------------------------------------------------
def save_detector(out, encoder: Encoder, info: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write an encoder as a detector checkpoint folder (``model.safetensors``, ``config.json``,
    ``training.json`` holding ``info``), atomically."""
    return save_model(out, {"encoder": encoder}, encoder.config, info or {}, overwrite=overwrite)


def _load_legacy(path: Path, device) -> tuple[Encoder, DetectorConfig, dict]:
    """A detector folder written before the detector was a model family (detector.json + detector.safetensors)."""
    file = path / LEGACY_CONFIG
    retrain = "; train it again with train_detector (or `workbench detector --overwrite`)"
    try:
        doc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable or truncated ({err}){retrain}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{file}: expected a JSON object with a 'config' entry{retrain}")
    d = dict(doc["config"])
    if d.pop("kind", None) != KIND:
        raise CheckpointError(f"{file}: not a copy-detector config{retrain}")
    config = DetectorConfig.from_dict({**d, "family": DetectorConfig.family}, source=str(file))
    weights = path / LEGACY_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; the detector is incomplete{retrain}")
    tensors, meta = read_tensors(weights)
    if meta.get("workbench") != KIND:
        raise CheckpointError(f"{weights}: not copy-detector weights (metadata says {meta.get('workbench')!r})")
    encoder = Encoder(config)
    load_state(encoder, tensors, name="detector", file=weights, config_file=file)
    return encoder.to(device).eval(), config, doc.get("training") or {}


def load_detector(path, *, device: str = "cpu") -> tuple[Encoder, DetectorConfig, dict]:
    """Load a detector folder written by :func:`train_detector`: ``(encoder, config, training info)``.

    ``path`` is the folder (or a file in it), or one of its ``checkpoints/step-…`` folders.  The
    encoder is the EMA copy when the detector was trained with ``ema=True``, and is returned in
    eval mode.  Weights are read from safetensors only, never unpickled.  A missing, truncated or
    mismatched file raises :class:`CheckpointError` naming it.  Detectors written before the
    detector was trained by the shared loop (``detector.json``) load too.
    """
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, CONFIG, LEGACY_WEIGHTS, LEGACY_CONFIG):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"{path}: no copy detector here (folder does not exist)")
    if (path / LEGACY_CONFIG).is_file() and not (path / CONFIG).is_file():
        return _load_legacy(path, device)
    loaded = load_model(path, family=DetectorConfig.family, device=device)
    return loaded.sampling_module(), loaded.config, loaded.info


# -- embedding and search ------------------------------------------------------------------------
def embed(encoder: Encoder, images, *, batch_size: int = 256, bf16: bool = False, progress: bool = False) -> np.ndarray:
    """Embeddings ``(N, embedding_dim)`` float32, unit length, of a SliceStore or an image array.

    ``images``: a SliceStore (view) whose channels and image size are the detector's, or an array /
    tensor ``(N, C, H, W)`` (``(N, H, W)`` for one channel) in [0, 1].  Runs on the encoder's
    device in eval mode, in float32 unless ``bf16``.
    """
    from ..progress import tqdm

    if not isinstance(encoder, Encoder):
        raise WorkbenchError(f"embed: expected a detector Encoder (from load_detector), got {type(encoder).__name__}")
    config = encoder.config
    size = config.image_size
    want = (len(config.channels), size, size)
    if isinstance(images, (str, os.PathLike)):  # a store's folder
        images = SliceStore.open(images)
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


#: the similarities :func:`embedding_topk` computes between two embedding vectors
EMBEDDING_METRICS = ("cosine", "correlation")


def embedding_topk(query_embeddings, reference_embeddings, k: int = 1, *, metric: str = "cosine",
                   **search_options) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k nearest reference embeddings of every query, by cosine similarity or Pearson correlation.

    Returns ``(values, indices)``, both ``(Q, k)``: similarities (descending, ties to the lower
    index) and positions in the reference.

    ``metric``:

    * ``"cosine"`` (default): the cosine of the two embedding vectors, the similarity the
      detector's NT-Xent loss trained;
    * ``"correlation"``: the Pearson r of the two embedding vectors (each vector centred on the mean
      of its own components, then the cosine), i.e. ``np.corrcoef(a, b)[0, 1]``.  This is Dar et
      al.'s similarity: their notebook (Cardio-AI/memorization-ldm, ``memorization_assessement3D.ipynb``)
      compares embeddings with scipy ``cdist(..., "correlation")``, the distance ``1 - r``.  An
      embedding whose components are all equal has no correlation and is refused.

    The search is :func:`workbench.search.topk_correlation`, fed each unit (for "correlation":
    centred, then unit) vector ``z`` as the "image" ``[z, -z]`` (shape ``(N, 1, 1, 2D)``): that
    vector has mean exactly 0 and squared norm ``2``, so its Pearson r with ``[y, -y]`` is
    ``2 z.y / 2 = z.y``, and the search's exact float64 rescore makes the values exact (to
    ~1e-15).  ``search_options`` go to ``topk_correlation`` (``device``, ``progress``...).

    >>> z = np.random.default_rng(0).normal(size=(4, 8))
    >>> r, i = embedding_topk(z[:1], z[1:], k=1, metric="correlation")
    >>> bool(np.isclose(r[0, 0], max(np.corrcoef(z)[0, 1:])))
    True
    """
    from ..search import topk_correlation

    if metric not in EMBEDDING_METRICS:
        raise WorkbenchError(f"metric must be one of {EMBEDDING_METRICS}, got {metric!r}")
    q = _as_embeddings(query_embeddings, "query_embeddings")
    r = _as_embeddings(reference_embeddings, "reference_embeddings")
    if q.shape[1] != r.shape[1]:
        raise WorkbenchError(f"query embeddings have {q.shape[1]} dimensions but the reference has {r.shape[1]}; "
                             "embed both with the same detector")
    if metric == "correlation":  # Pearson r is unchanged by the scaling _as_embeddings did; centre, renormalise
        centred = []
        for z, name in ((q, "query_embeddings"), (r, "reference_embeddings")):
            z = z - z.mean(axis=1, keepdims=True)
            norm = np.linalg.norm(z, axis=1)
            flat = norm <= 1e-12
            if flat.any():
                raise WorkbenchError(f"{name}: embedding(s) {np.flatnonzero(flat)[:10].tolist()} have all components "
                                     "equal, so their correlation is undefined; use metric='cosine'")
            centred.append(z / norm[:, None])
        q, r = centred
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

    The same columns as ``match_table``, with ``r`` holding the detector's cosine similarity (or,
    with ``metric="correlation"``, the Pearson correlation of the embeddings, as Dar et al. compare them)
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
    metric = search_options.get("metric", "cosine")
    table.attrs["similarity"] = ("Pearson correlation" if metric == "correlation" else "cosine similarity") + \
        " of copy-detector embeddings"
    table.attrs["constant_queries"] = []
    return table
