"""Turn volumes into 2D slices: intensity scaling, foreground selection, padding, resizing.

All functions take arrays and return arrays (scikit-image style).  Images leave this module
as float32 in [0, 1] per channel, in display orientation: anterior at the top, the subject's
left on the image's left (volumes are RAS+ after :func:`workbench.data.brats.read_volume`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

SCALINGS = ("max", "percentile")


def scale_intensity(volume: np.ndarray, *, method: str = "max", percentile: float = 99.5) -> np.ndarray:
    """Scale a volume to [0, 1]: divide by its maximum (as Akbar et al. did) or by a percentile.

    With ``method="percentile"`` the value at ``percentile`` of the non-zero voxels maps to 1 and
    brighter voxels are clipped, which keeps a few hot voxels from darkening the whole volume.

    >>> scale_intensity(np.array([0., 50., 100.]))
    array([0. , 0.5, 1. ], dtype=float32)
    """
    if method not in SCALINGS:
        raise DataError(f"unknown scaling {method!r}; use one of {SCALINGS}")
    volume = np.asarray(volume, dtype=np.float32)
    volume = np.clip(volume, 0, None)
    if method == "max":
        top = float(volume.max())
    else:
        nonzero = volume[volume > 0]
        top = float(np.percentile(nonzero, percentile)) if nonzero.size else 0.0
    if top <= 0:
        return np.zeros_like(volume)
    return np.clip(volume / top, 0.0, 1.0)


def scale_labels(seg: np.ndarray) -> np.ndarray:
    """Map BraTS labels {0, 1, 2, 4} to [0, 1] by dividing by 4 (same scale for every subject)."""
    return np.asarray(seg, dtype=np.float32) / 4.0


def foreground_fraction(volume: np.ndarray) -> np.ndarray:
    """Fraction of non-zero pixels in each axial slice ``volume[:, :, z]`` (BraTS is skull-stripped)."""
    return (volume > 0).mean(axis=(0, 1))


def axial_slices(volume: np.ndarray, zs) -> np.ndarray:
    """Axial slices ``(len(zs), H, W)`` of a RAS+ volume, rotated so anterior is at the top."""
    out = np.stack([np.rot90(volume[:, :, z]) for z in zs]) if len(zs) else np.zeros((0,) + volume.shape[1::-1], np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def pad_to(images: np.ndarray, size: int = 256) -> np.ndarray:
    """Zero-pad the last two axes symmetrically to ``size`` (BraTS 240 -> 256, as in the study)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise DataError(f"cannot pad images of {h}x{w} to {size}x{size}: they are larger")
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0)] * (images.ndim - 2) + [(top, size - h - top), (left, size - w - left)]
    return np.pad(images, pad)


def resize(images: np.ndarray, size: int, *, labels: bool = False) -> np.ndarray:
    """Resize ``(n, H, W)`` or ``(n, C, H, W)`` images to ``size`` x ``size``.

    Intensities use area averaging (anti-aliased when shrinking); label maps use nearest
    neighbour so that no in-between label values appear.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    if labels:
        y = F.interpolate(x, size=(size, size), mode="nearest-exact")
    elif size < x.shape[-1]:
        y = F.interpolate(x, size=(size, size), mode="area")
    else:
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    if squeeze:
        y = y[:, 0]
    return y.numpy()
