"""Copy-detector trainer: SimCLR's NT-Xent loss on two augmented views of every image of a batch.

The shared loop (:mod:`.loop`) gives it batches of distinct training images (``DISTINCT_BATCHES``:
epochs of whole batches, as a contrastive loss needs: an image twice in a batch would be its own
negative), seeds, bf16 autocast, checkpoints, resuming and EMA; this trainer makes two views of
each image with the shared augmentations (:func:`augment_pair`: :class:`~.augment.Augment` with
the detector config's strengths plus intensity jitter; label channels of the store resampled
with nearest neighbours and not jittered), embeds both with the encoder and minimises
:func:`~workbench.models.detector.nt_xent_loss`.  AdamW with weight decay, a linear warm-up and a
cosine decay to zero over the run.
"""
from __future__ import annotations

import math

from ..errors import WorkbenchError
from .augment import Augment
from .trainer import Trainer


def view_augment(config, *, label_channels=()) -> Augment:
    """The shared augmentation that makes one random view of an image for the detector ``config``."""
    return Augment(flip=bool(config.flip), affine=True, max_rotation_deg=config.max_rotation_deg,
                   max_translate=config.max_translate, max_scale=config.max_scale,
                   brightness=config.brightness, contrast=config.contrast, label_channels=list(label_channels))


def augment_pair(x, generator, config, *, label_channels=()):
    """Two independent random views of every image of a batch ``(N, C, H, W)`` in [0, 1].

    Each view: a left-right flip with probability 1/2 (if ``config.flip``), a random affine
    transform (rotation up to ``max_rotation_deg``, scale in ``1 +- max_scale``, shift up to
    ``max_translate`` of the image size in x and y; bilinear, zero border, nearest neighbours for
    ``label_channels``), then per channel ``x * gain + offset`` with gain in ``1 +- contrast`` and
    offset in ``+- brightness`` (label channels unchanged), clipped to [0, 1].  All randomness
    comes from ``generator`` (a ``torch.Generator`` on the images' device), so the same seed gives
    the same views.

    >>> g = torch.Generator().manual_seed(0)                                   # doctest: +SKIP
    >>> v1, v2 = augment_pair(images, g, config, label_channels=[4])           # doctest: +SKIP
    """
    import numpy as np
    import torch

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise WorkbenchError(f"augment_pair: expected images (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    if x.shape[1] != len(config.channels):
        raise WorkbenchError(f"augment_pair: images have {x.shape[1]} channels but the config names "
                             f"{len(config.channels)} ({list(config.channels)})")
    views = view_augment(config, label_channels=label_channels)
    x = x.float()
    return views(x, generator), views(x, generator)


class DetectorTrainer(Trainer):
    family = "detector"
    DEFAULT_LR = 2e-3
    EMA_OF = {"ema": "encoder"}
    OPTIONS = {"weight_decay": 1e-4}
    DISTINCT_BATCHES = True

    @classmethod
    def check_options(cls, options):
        wd = options["weight_decay"]
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise WorkbenchError(f"train detector: weight_decay must be a number >= 0, got {wd!r}")

    def build(self) -> None:
        from ..models.detector import build_encoder

        self.modules["encoder"] = build_encoder(self.config)
        self.add_optimizer("encoder", self.modules["encoder"].parameters(), lr=self.lr,
                           weight_decay=float(self.options["weight_decay"]))
        self.views = view_augment(self.config, label_channels=self.label_channels)

    def set_lr(self, step: int, names=None) -> None:
        """Linear warm-up over ``warmup_steps``, then a cosine decay to zero at the run's last step."""
        if step <= self.warmup_steps:
            factor = step / max(1, self.warmup_steps)
        else:
            total = self.run_steps or step
            factor = 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / max(1, total - self.warmup_steps)))
        for name in (names or self.optimizers):
            for group in self.optimizers[name].param_groups:
                group["lr"] = self.base_lr[name] * factor

    def step(self, x, labels, step, generator):
        import torch

        from ..models.detector import nt_xent_loss

        encoder = self.modules["encoder"]
        x = (x + 1.0) / 2.0  # the loop hands images in [-1, 1]; views and encoder work in [0, 1]
        v1, v2 = self.views(x, generator), self.views(x, generator)
        self.set_lr(step)
        with self.amp:
            z = encoder(torch.cat([v1, v2]))
        loss = nt_xent_loss(z[:len(x)], z[len(x):], self.config.temperature)
        self.optimize("encoder", loss, encoder)
        self.update_ema("encoder")
        return {"loss": loss.item()}
