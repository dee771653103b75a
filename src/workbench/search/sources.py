"""Input adapters: numpy arrays, torch tensors and SliceStores (views too) as one source of image rows.

A source is read block by block (:func:`iter_blocks`, the streaming screen) or by row positions
(:func:`read_rows`, the exact rescore); :class:`Selector` picks the pixels that enter r (the
chosen channels, within the mask) and flattens them.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..data.store import SliceStore
from ..errors import WorkbenchError

#: reference images per block: about this many bytes of float32 per block
BLOCK_BYTES = 128 * 2**20


def as_source(x, name: str):
    """Wrap numpy arrays, torch tensors and SliceStores (or a store's folder) in one block-reading interface."""
    if isinstance(x, SliceStore):
        return x
    if isinstance(x, (str, os.PathLike)):  # a store's folder, as everywhere a store is taken
        return SliceStore.open(x)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 3:  # (N, H, W): one channel
            x = x[:, None]
        if x.ndim not in (4, 5):  # slices (N, C, H, W) or volumes (N, C, D, H, W): each is one long vector
            raise WorkbenchError(f"{name}: expected images (N, C, H, W) or (N, H, W), or volumes (N, C, D, H, W), "
                                 f"got shape {x.shape}")
        return x
    raise WorkbenchError(f"{name}: expected a numpy array, torch tensor, SliceStore or a store's folder, "
                         f"got {type(x).__name__}")


def iter_blocks(src, size: int, copy: bool = True):
    """``(start, images)`` for consecutive blocks of ``size`` rows; every block is a private copy
    (normalisation in float32 works on blocks in place and must not touch the caller's array),
    or, with ``copy=False``, an array's blocks are views (a store's are read either way)."""
    if isinstance(src, SliceStore):
        yield from src.blocks(size)
    else:
        for start in range(0, len(src), size):
            yield start, np.array(src[start:start + size]) if copy else src[start:start + size]


def read_rows(src, positions: np.ndarray) -> np.ndarray:
    """The images at ``positions`` (sorted), read into memory."""
    return src.read(positions) if isinstance(src, SliceStore) else np.asarray(src[positions])


def channel_index(src, channels, n_channels: int):
    """Channel positions from names (SliceStores) or integers."""
    if channels is None:
        return None
    names = src.channels if isinstance(src, SliceStore) else None
    out = []
    for c in channels:
        if isinstance(c, str):
            if names is None or c not in names:
                raise WorkbenchError(f"channel {c!r} not found; available: {names if names else list(range(n_channels))}")
            out.append(names.index(c))
        else:
            if not 0 <= int(c) < n_channels:
                raise WorkbenchError(f"channel {c} out of range 0..{n_channels - 1}")
            out.append(int(c))
    if not out:
        raise WorkbenchError("channels: choose at least one channel")
    return out


class Selector:
    """Picks the pixels that enter r: the chosen channels, within the mask, flattened."""

    def __init__(self, image_shape, channels, mask):
        # image_shape is (C, H, W) for slices or (C, D, H, W) for volumes: a mask is given over
        # the spatial axes (shared by every channel) or over channels and spatial axes
        c, *spatial = image_shape
        spatial = tuple(spatial)
        self.channels = channels
        self.mask = None
        n_ch = len(channels) if channels else c
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            names = "(D, H, W)" if len(spatial) == 3 else "(H, W)"
            if mask.shape == spatial:
                mask = np.broadcast_to(mask, (n_ch, *spatial))
            want = (n_ch, *spatial)
            if mask.shape != want:
                raise WorkbenchError(f"mask has shape {mask.shape}; it must be {names} = {spatial} or "
                                     f"(C, {names[1:]} = {want}")
            if mask.sum() < 2:
                raise WorkbenchError("mask selects fewer than 2 pixels; Pearson r needs at least 2")
            self.mask = mask.reshape(-1)
        self.dim = int(self.mask.sum()) if self.mask is not None else n_ch * int(np.prod(spatial))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.channels is not None:
            block = block[:, self.channels]
        flat = block.reshape(len(block), -1)
        return flat[:, self.mask] if self.mask is not None else flat
