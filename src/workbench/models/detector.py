"""The copy detector's network (compute layer): config, encoder and contrastive loss.

One model per file, as for the generative families.  :class:`DetectorConfig` (family
``"detector"``) holds the encoder's architecture, the NT-Xent temperature and the strength of
the augmentations that make the two views of an image; it round-trips to JSON like every
family's config.  :class:`Encoder` maps an image ``(C, H, W)`` in [0, 1] to a unit vector;
:func:`nt_xent_loss` is SimCLR's loss.  It is trained by the shared loop
(:func:`workbench.train.train_model` with ``model="detector"``, :mod:`workbench.train.detector`)
and used by :mod:`workbench.memorization.detector` (``train_detector``, ``load_detector``,
``embed``), whose docstring says why it exists and how it is used.

>>> config = DetectorConfig.preset("tiny", image_size=32, channels=["t1", "flair"], widths=(32, 64, 128))
>>> DetectorConfig.from_json(config.to_json()) == config
True
>>> encoder = build_encoder(config)                         # doctest: +SKIP
>>> encoder(torch.rand(4, 2, 32, 32)).shape                 # doctest: +SKIP
torch.Size([4, 128])
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WorkbenchError
from .config import ModelConfig, model_config

#: Network sizes.  ``tiny`` is the detector the memorization study trains on a CPU (800 steps of
#: 128 images of 64x64x5 in a few minutes; BENCHMARKS.md); give 32x32 stores three widths.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embedding_dim=128, widths=(32, 64, 128, 128), head_dim=256, groups=8),
}


@model_config
class DetectorConfig(ModelConfig):
    """Architecture, loss and augmentation settings of a copy detector; round-trips to JSON.

    ``image_size`` and ``channels`` come from the training store: a detector embeds only images
    of that size with those channels, in that order.  Which channels are label maps (resampled
    with nearest neighbours, no intensity jitter) is read from the training store.
    """

    family: ClassVar[str] = "detector"
    #: 2: a checkpoint folder like every family's (version 1: detector.json of the first detectors)
    VERSION: ClassVar[int] = 2
    PRESETS: ClassVar[dict] = PRESETS
    TUPLE_FIELDS: ClassVar[tuple] = ("channels", "widths")

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
    preset: str | None = None
    version: int = field(default=2)

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
    detector (:mod:`workbench.memorization.detector` says why).  :meth:`features` gives the
    pooled features before the projection.
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


def build_encoder(config: DetectorConfig) -> Encoder:
    """A freshly initialised :class:`Encoder` for ``config``."""
    return Encoder(config)


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
