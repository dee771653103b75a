"""Training augmentation for every model family: left-right flips and small affine transforms.

Dar et al. found that augmentation lowers memorization, so it is a training option of every
family (``augment="flip"``, ``"affine"`` or ``"flip,affine"``).  Transforms act on images in
[0, 1] before they are mapped to the model's range, so the border that an affine transform
brings in is background (0).  Channels that hold labels (the tumour segmentation; the training
store says which: :attr:`workbench.data.store.SliceStore.label_channels`) are resampled with
nearest neighbours so they stay labels, and get no intensity jitter.  All randomness comes from
the ``generator`` the training loop derives from (seed, step), so a resumed run augments exactly
as an uninterrupted one.

The copy detector's two views of an image (:mod:`.detector`) are made by the same transforms,
stronger, plus a per-channel brightness / contrast jitter (``brightness``, ``contrast``).

A left-right flip suits axial brain slices (the brain is nearly symmetric).  It does *not* suit
chest radiographs, where the heart is on the patient's left: use ``"affine"`` alone for X-rays.

Volumes ``(N, C, D, H, W)`` (the 3D family) get the same transforms in 3D: the flip mirrors the
last axis (left-right, as for a slice), the affine transform rotates within the axial plane (about
the D axis, as a slice is rotated), scales all three axes alike and shifts along each.

>>> aug = Augment.parse("flip,affine", label_channels=[4])        # doctest: +SKIP
>>> x = aug(x, generator)                                         # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import WorkbenchError

KINDS = ("flip", "affine")


@dataclass
class Augment:
    """Which transforms to apply, and how strong the affine one is."""

    flip: bool = False
    affine: bool = False
    max_rotation_deg: float = 5.0
    max_translate: float = 0.04  # fraction of the image size
    max_scale: float = 0.05  # scale in [1 - s, 1 + s]
    #: per channel (not label channels): add an offset in [-brightness, brightness] after
    #: multiplying by a gain in [1 - contrast, 1 + contrast], then clip to [0, 1]
    brightness: float = 0.0
    contrast: float = 0.0
    label_channels: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, spec, *, label_channels=()) -> "Augment":
        """``None`` / ``""`` / ``"none"``: off; otherwise a comma-separated list of ``flip``, ``affine``."""
        if spec is None or spec is False:
            return cls(label_channels=list(label_channels))
        if not isinstance(spec, str):
            raise WorkbenchError(f"augment must be a string such as 'flip,affine' or 'none', got {spec!r}")
        parts = [p.strip().lower() for p in spec.split(",") if p.strip()]
        parts = [p for p in parts if p != "none"]
        unknown = sorted(set(parts) - set(KINDS))
        if unknown:
            raise WorkbenchError(f"augment: unknown transform(s) {unknown}; choose from {list(KINDS)} or 'none'")
        return cls(flip="flip" in parts, affine="affine" in parts, label_channels=list(label_channels))

    @property
    def jitter(self) -> bool:
        return bool(self.brightness or self.contrast)

    @property
    def enabled(self) -> bool:
        return self.flip or self.affine or self.jitter

    def describe(self) -> str:
        return ",".join([k for k in KINDS if getattr(self, k)] + (["jitter"] if self.jitter else [])) or "none"

    def __call__(self, x, generator):
        """Augment a batch ``(N, C, H, W)`` of images (or ``(N, C, D, H, W)`` of volumes) in [0, 1] with
        randomness from ``generator``."""
        import torch
        import torch.nn.functional as F

        if not self.enabled:
            return x
        if x.ndim not in (4, 5):
            raise WorkbenchError(f"augment: expected a batch of images (N, C, H, W) or volumes (N, C, D, H, W), "
                                 f"got shape {tuple(x.shape)}")
        n = x.shape[0]
        dev = x.device
        ones = (1,) * (x.ndim - 1)  # broadcast one value per image over its channels and voxels

        def uniform(low, high):
            return low + (high - low) * torch.rand(n, generator=generator, device=dev)

        if self.flip:
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
            x = torch.where(flip.view(-1, *ones), x.flip(-1), x)
        if self.affine:
            angle = uniform(-self.max_rotation_deg, self.max_rotation_deg) * (math.pi / 180)
            scale = uniform(1 - self.max_scale, 1 + self.max_scale)
            tx = uniform(-self.max_translate, self.max_translate) * 2  # grid coordinates span [-1, 1]
            ty = uniform(-self.max_translate, self.max_translate) * 2
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            if x.ndim == 4:
                theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            else:  # grid coordinates are (W, H, D): rotate in the axial (W, H) plane, scale D alike
                tz = uniform(-self.max_translate, self.max_translate) * 2
                zero = torch.zeros_like(cos)
                theta = torch.stack([torch.stack([cos, -sin, zero, tx], 1), torch.stack([sin, cos, zero, ty], 1),
                                     torch.stack([zero, zero, 1 / scale, tz], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if self.label_channels:
                idx = torch.tensor(self.label_channels, device=dev)
                labels = F.grid_sample(x[:, idx], grid, mode="nearest", padding_mode="zeros", align_corners=False)
                out[:, idx] = labels
            x = out
        if self.jitter:
            c = x.shape[1]
            gain = 1 + (torch.rand(n, c, generator=generator, device=dev) * 2 - 1) * self.contrast
            offset = (torch.rand(n, c, generator=generator, device=dev) * 2 - 1) * self.brightness
            if self.label_channels:
                idx = torch.tensor(self.label_channels, device=dev)
                gain[:, idx] = 1.0
                offset[:, idx] = 0.0
            spatial = (1,) * (x.ndim - 2)
            x = (x * gain.view(n, c, *spatial).to(x.dtype) + offset.view(n, c, *spatial).to(x.dtype)).clamp_(0.0, 1.0)
        return x
