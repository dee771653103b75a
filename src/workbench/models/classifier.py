"""The utility classifier's network (compute layer): a small CNN trained from scratch.

DuMont Schütte et al. (2021) measure what synthetic images are worth by training the same
classifier on real and on synthetic images and testing both on real held-out images.  Users in a
hospital cannot download ImageNet weights, so the network is small and trained from scratch on
the user's own data: four stride-2 convolution stages with GroupNorm and SiLU, global average
pooling, and one logit (tumour in the slice; pneumonia vs normal).  The pooled vector before the
logit is also a feature extractor for the fidelity figures (:meth:`Classifier.features`).

>>> config = ClassifierConfig(channels=4, image_size=32)
>>> net = Classifier(config)                                   # doctest: +SKIP
>>> net(torch.rand(2, 4, 32, 32)).shape                        # doctest: +SKIP
torch.Size([2])
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import WorkbenchError


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the utility classifier; round-trips to JSON."""

    channels: int
    image_size: int
    widths: tuple[int, ...] = (16, 32, 64, 64)
    groups: int = 8
    dropout: float = 0.2

    def __post_init__(self):
        if self.channels < 1 or self.image_size < 2 ** len(self.widths):
            raise WorkbenchError(f"classifier: {self.channels} channels of {self.image_size} px do not fit "
                                 f"{len(self.widths)} stride-2 stages (need at least {2 ** len(self.widths)} px)")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "widths": list(self.widths)})

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        d = json.loads(text)
        return cls(**{**d, "widths": tuple(d["widths"])})


class Classifier(nn.Module):
    """Images ``(N, C, H, W)`` in [0, 1] -> one logit per image."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers, c = [], config.channels
        for w in config.widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(min(config.groups, w), w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(min(config.groups, w), w), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled vector before the logit: ``(N, widths[-1])``."""
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)
