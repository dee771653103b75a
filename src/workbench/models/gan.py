"""A StyleGAN2-type GAN for multi-channel medical images: config, networks, losses, DiffAugment.

Written for this project from the descriptions in the StyleGAN2 paper (Karras et al. 2020,
"Analyzing and Improving the Image Quality of StyleGAN") and the StyleGAN2-ADA paper (Karras et
al. 2020, "Training Generative Adversarial Networks with Limited Data"); DiffAugment follows Zhao
et al. 2020 ("Differentiable Augmentation for Data-Efficient GAN Training").  No NVIDIA code.

What is here
------------
* :class:`GANConfig` -- every choice that shapes the two networks; round-trips to JSON and has
  the size presets ``tiny`` / ``small`` / ``base``.
* :class:`Generator` -- a mapping network (pixel-normalised z, optionally concatenated with a
  normalised class embedding, ``mapping_layers`` fully connected layers at a reduced learning
  rate) to a style vector w; a tracked average ``w_avg`` (and, when class-conditional, one per
  class) for the truncation trick; a synthesis network that starts from a learned 4x4 constant
  and doubles the resolution up to ``image_size`` with modulated / demodulated 3x3
  convolutions, per-layer noise inputs with learned strength, and a ``"skip"`` (image outputs
  summed over resolutions) or ``"resnet"`` (residual blocks, one image output) architecture.
  Style mixing is available through ``forward(..., style_mixing_prob=p)``.
* :class:`Discriminator` -- ``"resnet"``, ``"skip"`` or ``"orig"`` architecture, minibatch
  standard deviation layer, two final dense layers; class conditioning by projection (inner
  product of the final features with a label embedding, as StyleGAN2-ADA's ``cmap``).
* Building blocks with equalized learning rate: :class:`EqualLinear`, :class:`EqualConv2d`,
  :class:`ModulatedConv2d` (and the function :func:`modulated_conv2d`), :class:`NoiseInjection`,
  :class:`ToImage`, :func:`minibatch_std`.
* Losses: :func:`generator_loss` (non-saturating logistic), :func:`discriminator_loss`
  (logistic), :func:`r1_penalty` (R1 gradient penalty on real images).
* :func:`diff_augment` -- DiffAugment ``"color"``, ``"translation"``, ``"cutout"``.

Images
------
The networks work on images scaled to [-1, 1] (the package's [0, 1] images times 2 minus 1); the
generator's output is linear (no tanh), so it is only *roughly* in [-1, 1] -- clip it when
writing a SliceStore.  Any channel count works (5 for BraTS, 1 for chest X-rays).

Simplified compared with the papers
-----------------------------------
* Up- and down-sampling are bilinear (``F.interpolate``) and 2x2 average pooling instead of the
  papers' FIR low-pass filters (upfirdn2d); the discriminator pools *before* its stride-1
  convolution instead of blurring and using a stride-2 convolution (4x fewer multiply-adds).
* The modulated convolution is computed in its "non-fused" form (scale the input channels by
  the style, ordinary convolution with the shared weight, scale the output channels by the
  demodulation coefficients), which is mathematically the same as the grouped convolution
  with per-sample weights; on a CPU it is the faster of the two.
* No path-length regularisation, no lazy path-length step, no ``conv_clamp`` / fp16 tricks
  (bfloat16 autocast works without them), no truncation cutoff (all layers are truncated).
* The discriminator's label embedding is a single learned matrix (a projection discriminator)
  rather than a mapping network; the generator's label embedding is a single equalized
  linear layer, as in StyleGAN2-ADA.
* ADA (adaptive augmentation probability) is not implemented; DiffAugment with a fixed policy is.

Training conventions (the loop lives elsewhere)
-----------------------------------------------
* G step: ``generator_loss(D, diff_augment(G(z, y), policy, generator=g), y)``.
* D step: ``discriminator_loss(D, aug(real), aug(fake), y)`` where the same ``diff_augment``
  policy is applied to real and fake images (the fake is detached inside the loss).
* Lazy R1 regularisation: every ``r1_interval`` D steps (StyleGAN2 uses 16), add
  ``r1_penalty(D, real, y) * (config.r1_gamma / 2) * r1_interval`` to the D loss (pass
  ``augment=config.diffaugment`` to take the gradient through the augmentation D saw).
* Exponential moving average of G's weights: the loop keeps it (diffusers ``EMAModel``); copy
  the trained G's buffers (``w_avg``, ``w_avg_class``, the constant noise maps) into the EMA copy
  too, since ``EMAModel`` tracks parameters only.  Call the G of the G step with
  ``update_w_avg=True`` so that ``w_avg`` follows the mapping network.

Example
-------
>>> import torch
>>> config = GANConfig.preset("tiny", image_size=32, channels=["t1", "t1ce", "t2", "flair", "seg"], num_classes=2)
>>> G, D = build_generator(config), build_discriminator(config)
>>> z = torch.randn(4, config.z_dim)
>>> y = torch.tensor([0, 1, 0, 1])
>>> images = G(z, y, truncation_psi=0.7, noise_mode="const")
>>> tuple(images.shape), tuple(D(images, y).shape)
((4, 5, 32, 32), (4,))
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

G_ARCHITECTURES = ("skip", "resnet")
D_ARCHITECTURES = ("resnet", "skip", "orig")
NOISE_MODES = ("random", "const", "none")
AUGMENTATIONS = ("color", "translation", "cutout")

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)

#: Network sizes.  Feature channels at resolution r are ``min(channel_base // r, channel_max)``;
#: e.g. tiny at 64x64 has 64 channels at 4..32 px and 32 at 64 px (0.35 M parameters in G and in
#: D); small 128 channels up to 64 px (1.6 M each); base 256 up to 64 px, 128 at 128 px (6.7 M
#: each at 64x64).  tiny is sized so that a D step plus a G step at 64x64, batch 8, takes well
#: under a second on a 2-core CPU; small and base are for a GPU.  Timings go in BENCHMARKS.md.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(z_dim=64, w_dim=64, mapping_layers=2, channel_base=2048, channel_max=64),
    "small": dict(z_dim=128, w_dim=128, mapping_layers=4, channel_base=8192, channel_max=128),
    "base": dict(z_dim=256, w_dim=256, mapping_layers=8, channel_base=16384, channel_max=256),
}


@model_config
class GANConfig(ModelConfig):
    """Everything that shapes a StyleGAN2-type generator and discriminator.

    Parameters
    ----------
    image_size : height = width of the images, a power of two >= 8.
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]`` or ``["xray"]``).
    z_dim : size of the latent vector z.
    w_dim : size of the intermediate latent (style) vector w.
    mapping_layers : fully connected layers in the mapping network z -> w.
    channel_base, channel_max : feature channels at resolution ``r`` (4, 8, ..., image_size) are
        ``min(channel_base // r, channel_max)``, for the generator and the discriminator alike.
    generator_architecture : ``"skip"`` (an image output at every resolution, summed after
        upsampling) or ``"resnet"`` (residual blocks, one image output at the end).
    discriminator_architecture : ``"resnet"`` (residual blocks), ``"skip"`` (the downsampled image
        fed in at every resolution) or ``"orig"`` (plain convolution blocks).
    mbstd_group_size : group size of the minibatch standard deviation layer (0 = no such layer);
        a batch whose size is not a multiple uses the largest divisor of it below this value.
    num_classes : 0 for an unconditional GAN; otherwise the number of class labels (e.g. 2:
        tumour absent / present, normal / pneumonia).
    r1_gamma : weight of the R1 penalty (the loop adds ``r1_gamma / 2 * interval * r1_penalty``
        every ``interval`` D steps).  0.5 suits 32-128 px images; StyleGAN2-ADA's heuristic is
        ``0.0002 * image_size**2 / batch_size``.
    diffaugment : DiffAugment policy, comma separated names from ``"color"``, ``"translation"``,
        ``"cutout"`` (e.g. ``"color,translation,cutout"``); ``""`` turns augmentation off.
    mapping_lr_multiplier : learning-rate multiplier of the mapping network (equalized learning
        rate: the weights are stored scaled by ``1 / multiplier``).
    preset : name of the preset it was made from (informative only).
    """

    family: ClassVar[str] = "gan"
    VERSION: ClassVar[int] = 1
    PRESETS: ClassVar[dict] = PRESETS
    TUPLE_FIELDS: ClassVar[tuple] = ("channels",)

    image_size: int
    channels: tuple[str, ...]
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    channel_base: int = 8192
    channel_max: int = 128
    generator_architecture: str = "skip"
    discriminator_architecture: str = "resnet"
    mbstd_group_size: int = 4
    num_classes: int = 0
    r1_gamma: float = 0.5
    diffaugment: str = ""
    mapping_lr_multiplier: float = 0.01
    preset: str | None = None
    version: int = field(default=1)

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def resolutions(self) -> list[int]:
        """The resolutions 4, 8, ..., image_size the networks work at."""
        return [2 ** i for i in range(2, int(round(math.log2(self.image_size))) + 1)]

    def feature_channels(self, resolution: int) -> int:
        """Feature channels at ``resolution``: ``min(channel_base // resolution, channel_max)``."""
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def augment_policy(self) -> tuple[str, ...]:
        return _parse_policy(self.diffaugment)

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> "GANConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        super().validate()
        bad = self._bad
        s = self.image_size
        if s < 8 or s & (s - 1):
            bad(f"image_size must be a power of two >= 8 (8, 16, 32, 64, 128, 256...), got {s}; "
                f"the generator doubles a 4x4 start until it reaches the image size")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(f"{name} must be a positive integer, got {value!r}")
        if self.feature_channels(s) < 1:
            bad(f"channel_base {self.channel_base} is too small for image_size {s}: the feature channels at "
                f"{s} px are channel_base // {s} = 0; use channel_base >= {s}")
        if self.generator_architecture not in G_ARCHITECTURES:
            bad(f"generator_architecture {self.generator_architecture!r} is not one of {G_ARCHITECTURES}")
        if self.discriminator_architecture not in D_ARCHITECTURES:
            bad(f"discriminator_architecture {self.discriminator_architecture!r} is not one of {D_ARCHITECTURES}")
        if not isinstance(self.mbstd_group_size, int) or self.mbstd_group_size < 0:
            bad(f"mbstd_group_size must be 0 (off) or a positive integer, got {self.mbstd_group_size!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) \
                or self.num_classes < 0 or self.num_classes == 1:
            bad(f"num_classes must be 0 (unconditional) or >= 2, got {self.num_classes!r}")
        if not isinstance(self.r1_gamma, (int, float)) or not self.r1_gamma >= 0:
            bad(f"r1_gamma must be a number >= 0, got {self.r1_gamma!r}")
        if not isinstance(self.mapping_lr_multiplier, (int, float)) or not self.mapping_lr_multiplier > 0:
            bad(f"mapping_lr_multiplier must be > 0, got {self.mapping_lr_multiplier!r}")
        if not isinstance(self.diffaugment, str):
            bad(f"diffaugment must be a string such as 'color,translation,cutout' (or '' for none), "
                f"got {self.diffaugment!r}")
        try:
            _parse_policy(self.diffaugment)
        except WorkbenchError as err:
            bad(str(err))
        return self


# -- small helpers -----------------------------------------------------------------------------
def _parse_policy(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in str(policy).split(",") if p.strip())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise WorkbenchError(f"unknown DiffAugment policy name(s) {unknown} in {policy!r}; "
                             f"use a comma separated list of {AUGMENTATIONS}, or '' for none")
    return names


def _rand(shape, generator, device, dtype=torch.float32):
    """Uniform [0, 1) numbers from ``generator`` (or the global RNG), moved to ``device``."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _randn(shape, generator, device, dtype=torch.float32):
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _randint(high, shape, generator, device, low=0):
    if generator is None:
        return torch.randint(low, high, shape, device=device)
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pixel norm: scale each row to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with gain sqrt(2), so unit-variance input keeps roughly unit variance."""
    return F.leaky_relu(x, 0.2) * _SQRT2


def _upsample(x: torch.Tensor) -> torch.Tensor:
    # bilinear instead of the paper's FIR filter (simplification)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    # 2x2 box filter instead of the paper's FIR filter (simplification)
    return F.avg_pool2d(x, 2)


def _check_labels(labels, num_classes: int, batch: int, device, who: str) -> torch.Tensor | None:
    """Class labels as a long tensor ``(batch,)``, with plain errors for the usual mistakes."""
    if num_classes == 0:
        if labels is not None:
            raise WorkbenchError(f"{who} is unconditional (num_classes=0) but labels were given; "
                                 f"train a model with num_classes >= 2 to use class labels")
        return None
    if labels is None:
        raise WorkbenchError(f"{who} is class-conditional (num_classes={num_classes}); pass labels, "
                             f"a tensor of {batch} class indices in 0..{num_classes - 1}")
    labels = torch.as_tensor(labels, device=device)
    if labels.is_floating_point() or labels.is_complex():
        raise WorkbenchError(f"{who}: labels must be integer class indices in 0..{num_classes - 1}, "
                             f"got a {labels.dtype} tensor")
    labels = labels.long()
    if labels.ndim == 0:
        labels = labels.expand(batch)
    if labels.shape != (batch,):
        raise WorkbenchError(f"{who}: expected {batch} labels (one per image), got shape {tuple(labels.shape)}")
    if labels.device.type == "cpu" and batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise WorkbenchError(f"{who}: labels must lie in 0..{num_classes - 1}, "
                             f"got values {int(labels.min())}..{int(labels.max())}")
    return labels


# -- equalized learning-rate layers ---------------------------------------------------------------
class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    The weight is stored as N(0, 1) / ``lr_multiplier`` and multiplied at run time by
    ``lr_multiplier / sqrt(in_features)``; the bias is stored divided by ``lr_multiplier`` and
    multiplied by it.  With Adam this scales the layer's effective learning rate by
    ``lr_multiplier`` (0.01 in the mapping network).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: str = "linear"):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, b)
        return _lrelu(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate (weights N(0, 1) times ``1 / sqrt(fan_in)``).

    ``down=True`` halves the resolution by 2x2 average pooling *before* the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str = "linear", down: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.down = activation, down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = _downsample(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.kernel_size // 2)
        return _lrelu(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"activation={self.activation}, down={self.down}")


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     padding: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's modulated convolution, equalized learning rate included.

    ``x`` is ``(N, I, H, W)``, ``weight`` ``(O, I, k, k)`` (stored N(0, 1); multiplied here by
    ``1 / sqrt(I k k)``), ``styles`` ``(N, I)``.  Per sample n the effective weight is
    ``w[o, i] * styles[n, i]``; with ``demodulate`` each output channel's effective weight is then
    scaled to unit L2 norm, so unit-variance input gives unit-variance output whatever the style
    magnitude.  Computed in the "non-fused" form -- scale the input channels, one ordinary
    convolution with the shared weight, scale the output channels -- which equals the grouped
    convolution with per-sample weights.  The demodulation coefficients are computed in float32.
    """
    n, i = x.shape[:2]
    o, _, kh, kw = weight.shape
    w = weight * (1.0 / math.sqrt(i * kh * kw))
    x = x * styles.reshape(n, i, 1, 1).to(x.dtype)
    x = F.conv2d(x, w, padding=padding)
    if demodulate:
        wsq = w.float().square().sum(dim=(2, 3))  # (O, I)
        d = ((styles.float().square()[:, None, :] * wsq[None]).sum(-1) + eps).rsqrt()  # (N, O)
        x = x * d.reshape(n, o, 1, 1).to(x.dtype)
    return x


class ModulatedConv2d(nn.Module):
    """A modulated (and optionally demodulated) convolution whose style comes from w.

    ``forward(x, w)``: an equalized affine layer maps w ``(N, w_dim)`` to one scale per input
    channel (bias initialised to 1, so an untrained layer starts near an ordinary convolution),
    then :func:`modulated_conv2d`.  No bias, noise or activation: :class:`SynthesisLayer` adds those.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, *,
                 demodulate: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate = demodulate
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        return modulated_conv2d(x, self.weight, styles, demodulate=self.demodulate, padding=self.kernel_size // 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}")


class NoiseInjection(nn.Module):
    """Adds per-pixel noise ``(N, 1, H, W)`` times a learned strength (initialised to 0).

    ``noise_mode``: ``"random"`` draws fresh noise (from ``generator`` when given, so results are
    reproducible), ``"const"`` uses a fixed noise map stored in the module (a buffer), ``"none"``
    adds nothing.
    """

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, *, noise_mode: str = "random", generator: torch.Generator | None = None):
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        elif noise_mode == "random":
            noise = _randn((x.shape[0], 1, x.shape[2], x.shape[3]), generator, x.device)
        else:
            raise WorkbenchError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        return x + noise.to(x.dtype) * self.strength.to(x.dtype)


class SynthesisLayer(nn.Module):
    """Optional 2x upsampling, modulated 3x3 convolution, noise, bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, *, noise_mode="random", generator=None, gain: float = 1.0):
        if self.up:
            x = _upsample(x)  # then a stride-1 convolution: the paper uses a transposed conv + FIR blur
        x = self.conv(x, w)
        x = self.noise(x, noise_mode=noise_mode, generator=generator)
        x = _lrelu(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        return x * gain if gain != 1.0 else x


class ToImage(nn.Module):
    """Modulated 1x1 convolution to the image channels, without demodulation, plus a bias."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x, w):
        x = self.conv(x, w)
        return x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (const or upsampling conv), conv, image output.

    It reads ``num_conv + num_image`` consecutive style vectors; the image output shares its
    style vector with the next block's first convolution (as in StyleGAN2).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, *,
                 architecture: str, is_last: bool):
        super().__init__()
        self.resolution, self.architecture = resolution, architecture
        self.is_first = in_channels == 0
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.to_image = ToImage(out_channels, img_channels, w_dim) if (architecture == "skip" or is_last) else None
        if architecture == "resnet" and not self.is_first:
            self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)
        else:
            self.skip = None
        self.num_conv = 1 if self.is_first else 2
        self.num_image = 1 if self.to_image is not None else 0

    def forward(self, x, img, ws, *, noise_mode="random", generator=None):
        kw = dict(noise_mode=noise_mode, generator=generator)
        if self.is_first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], **kw)
        elif self.skip is not None:
            y = self.skip(_upsample(x)) * _SQRT_HALF
            x = self.conv0(x, ws[:, 0], **kw)
            x = self.conv1(x, ws[:, 1], gain=_SQRT_HALF, **kw)
            x = y.to(x.dtype) + x
        else:
            x = self.conv0(x, ws[:, 0], **kw)
            x = self.conv1(x, ws[:, 1], **kw)
        if img is not None:
            img = _upsample(img)  # bilinear instead of the paper's FIR filter
        if self.to_image is not None:
            y = self.to_image(x, ws[:, self.num_conv]).float()
            img = y if img is None else img + y
        return x, img


class Generator(nn.Module):
    """StyleGAN2-type generator: mapping network z (+ label) -> w, synthesis network ws -> image.

    ``G(z, labels)`` returns images ``(N, C, H, W)`` in float32, roughly in [-1, 1] (linear output).
    """

    def __init__(self, config: GANConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.z_dim, self.w_dim, self.num_classes = c.z_dim, c.w_dim, c.num_classes
        self.img_channels = c.in_channels
        # mapping network
        if c.num_classes:
            self.embed = EqualLinear(c.num_classes, c.w_dim)
        else:
            self.embed = None
        features = [c.z_dim + (c.w_dim if c.num_classes else 0)] + [c.w_dim] * c.mapping_layers
        self.mapping_net = nn.Sequential(*[
            EqualLinear(features[i], features[i + 1], activation="lrelu", lr_multiplier=c.mapping_lr_multiplier)
            for i in range(c.mapping_layers)])
        self.w_avg_beta = 0.995
        self.register_buffer("w_avg", torch.zeros(c.w_dim))
        if c.num_classes:
            self.register_buffer("w_avg_class", torch.zeros(c.num_classes, c.w_dim))
        # synthesis network
        blocks = []
        in_ch = 0
        for res in c.resolutions:
            out_ch = c.feature_channels(res)
            blocks.append(SynthesisBlock(in_ch, out_ch, c.w_dim, res, self.img_channels,
                                         architecture=c.generator_architecture, is_last=res == c.image_size))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(b.num_conv for b in blocks) + blocks[-1].num_image

    # -- mapping ---------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, labels=None, *, truncation_psi: float = 1.0,
                update_w_avg: bool = False) -> torch.Tensor:
        """Map latents ``z`` ``(N, z_dim)`` (and class labels) to style vectors ``(N, num_ws, w_dim)``.

        ``update_w_avg=True`` moves the tracked average(s) of w towards this batch's mean (beta
        0.995; training only).  ``truncation_psi < 1`` pulls w towards the average -- of the
        image's class when the generator is conditional -- trading variety for typicality;
        ``truncation_psi=0`` gives the average w for every z.
        """
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise WorkbenchError(f"generator: z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        labels = _check_labels(labels, self.num_classes, z.shape[0], z.device, "generator")
        x = _normalize_2nd_moment(z)
        if labels is not None:
            onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
            x = torch.cat([x, _normalize_2nd_moment(self.embed(onehot)).to(x.dtype)], dim=1)
        w = self.mapping_net(x)
        if update_w_avg:
            self._update_w_avg(w, labels)
        if truncation_psi != 1:
            if labels is not None:
                avg = self.w_avg_class[labels]
            else:
                avg = self.w_avg.unsqueeze(0)
            avg = avg.to(w.dtype)
            w = avg + float(truncation_psi) * (w - avg)
        return w.unsqueeze(1).expand(-1, self.num_ws, -1)

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, labels) -> None:
        w = w.detach().float()
        beta = self.w_avg_beta
        self.w_avg.copy_(w.mean(0).lerp(self.w_avg, beta))
        if labels is not None:
            onehot = F.one_hot(labels, self.num_classes).float()  # (N, K)
            counts = onehot.sum(0)  # (K,)
            sums = (onehot[:, :, None] * w[:, None, :]).sum(0)  # (K, w_dim)
            means = sums / counts.clamp(min=1)[:, None]
            updated = means.lerp(self.w_avg_class, beta)
            self.w_avg_class.copy_(torch.where((counts > 0)[:, None], updated, self.w_avg_class))

    # -- synthesis -------------------------------------------------------------------------
    def synthesis(self, ws: torch.Tensor, *, noise_mode: str = "random",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(N, C, H, W)`` (float32) from style vectors ``(N, num_ws, w_dim)`` or ``(N, w_dim)``.

        ``noise_mode``: ``"random"`` (fresh noise, from ``generator`` when given), ``"const"``
        (the fixed noise maps stored in the model) or ``"none"``.
        """
        if noise_mode not in NOISE_MODES:
            raise WorkbenchError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise WorkbenchError(f"generator: ws must have shape (N, {self.num_ws}, {self.w_dim}) "
                                 f"or (N, {self.w_dim}), got {tuple(ws.shape)}")
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i:i + block.num_conv + block.num_image],
                           noise_mode=noise_mode, generator=generator)
            i += block.num_conv
        return img

    def forward(self, z: torch.Tensor, labels=None, *, truncation_psi: float = 1.0, noise_mode: str = "random",
                generator: torch.Generator | None = None, update_w_avg: bool = False,
                style_mixing_prob: float = 0.0) -> torch.Tensor:
        """Images ``(N, C, H, W)`` for latents ``z`` ``(N, z_dim)`` and, if conditional, ``labels`` ``(N,)``.

        ``style_mixing_prob`` (training regulariser, default off): with this probability the
        styles from a random layer on come from a second latent drawn from ``generator``.
        """
        ws = self.mapping(z, labels, truncation_psi=truncation_psi, update_w_avg=update_w_avg)
        if style_mixing_prob > 0 and self.num_ws > 1:
            if float(_rand((), generator, "cpu")) < style_mixing_prob:
                cutoff = int(_randint(self.num_ws, (), generator, "cpu", low=1))
                z2 = _randn(z.shape, generator, z.device, z.dtype)
                ws2 = self.mapping(z2, labels, truncation_psi=truncation_psi)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return self.synthesis(ws, noise_mode=noise_mode, generator=generator)


# -- discriminator ---------------------------------------------------------------------------------
def minibatch_std(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append ``num_channels`` feature maps holding the std of features across a group of samples.

    The batch is split into groups of ``group_size`` (the largest divisor of N not above it);
    for every group the standard deviation of each feature over the group is averaged over
    features and pixels and appended as a constant map, letting D see the batch's variety.
    Computed in float32.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    f = num_channels
    y = x.float().reshape(g, n // g, f, c // f, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # (n // g, f)
    y = y.reshape(n // g, f, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """One resolution of D: (image input), 3x3 conv, 3x3 conv with 2x downsampling (+ residual)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int, *,
                 architecture: str):
        super().__init__()
        self.architecture = architecture
        self.from_image = (EqualConv2d(img_channels, tmp_channels, 1, activation="lrelu")
                           if in_channels == 0 or architecture == "skip" else None)
        self.conv0 = EqualConv2d(tmp_channels, tmp_channels, 3, activation="lrelu")
        self.conv1 = EqualConv2d(tmp_channels, out_channels, 3, activation="lrelu", down=True)
        self.skip = (EqualConv2d(tmp_channels, out_channels, 1, bias=False, down=True)
                     if architecture == "resnet" else None)

    def forward(self, x, img):
        if self.from_image is not None:
            y = self.from_image(img)
            x = y if x is None else x + y.to(x.dtype)
            img = _downsample(img) if self.architecture == "skip" else None
        if self.skip is not None:
            y = self.skip(x) * _SQRT_HALF
            x = self.conv1(self.conv0(x)) * _SQRT_HALF
            x = y.to(x.dtype) + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class Discriminator(nn.Module):
    """StyleGAN2-type discriminator: images ``(N, C, H, W)`` in [-1, 1] -> logits ``(N,)`` (float32).

    Conditional (``num_classes >= 2``): ``D(images, labels)``; the logit is the inner product of
    the final features with a learned embedding of the label, divided by sqrt(its size)
    (projection discriminator, StyleGAN2-ADA's ``cmap``).
    """

    def __init__(self, config: GANConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.num_classes, self.img_channels = c.num_classes, c.in_channels
        self.architecture = c.discriminator_architecture
        blocks = []
        resolutions = c.resolutions[::-1]  # image_size ... 4
        for i, res in enumerate(resolutions[:-1]):
            in_ch = 0 if i == 0 else c.feature_channels(res)
            blocks.append(DiscriminatorBlock(in_ch, c.feature_channels(res), c.feature_channels(res // 2),
                                             self.img_channels, architecture=self.architecture))
        self.blocks = nn.ModuleList(blocks)
        ch = c.feature_channels(4)
        self.from_image = (EqualConv2d(self.img_channels, ch, 1, activation="lrelu")
                           if self.architecture == "skip" else None)
        self.mbstd_group_size = c.mbstd_group_size
        self.conv = EqualConv2d(ch + (1 if c.mbstd_group_size else 0), ch, 3, activation="lrelu")
        self.fc = EqualLinear(ch * 16, ch, activation="lrelu")
        self.cmap_dim = ch if c.num_classes else 0
        self.out = EqualLinear(ch, self.cmap_dim or 1)
        self.embed = nn.Parameter(torch.randn(c.num_classes, ch)) if c.num_classes else None

    def forward(self, img: torch.Tensor, labels=None) -> torch.Tensor:
        c = self.config
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, c.image_size, c.image_size):
            raise WorkbenchError(f"discriminator: images must have shape (N, {self.img_channels}, {c.image_size}, "
                                 f"{c.image_size}), got {tuple(img.shape)}")
        labels = _check_labels(labels, self.num_classes, img.shape[0], img.device, "discriminator")
        x = None
        for block in self.blocks:
            x, img = block(x, img)
        if self.from_image is not None:
            x = x + self.from_image(img).to(x.dtype)
        if self.mbstd_group_size:
            x = minibatch_std(x, self.mbstd_group_size)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x).float()
        if labels is not None:
            cmap = _normalize_2nd_moment(self.embed[labels].float())
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x[:, 0]


def build_generator(config: GANConfig) -> Generator:
    """A freshly initialised :class:`Generator` for ``config``."""
    return Generator(config.validate())


def build_discriminator(config: GANConfig) -> Discriminator:
    """A freshly initialised :class:`Discriminator` for ``config``."""
    return Discriminator(config.validate())


# -- losses ------------------------------------------------------------------------------------
def generator_loss(discriminator: nn.Module, fake: torch.Tensor, labels=None) -> torch.Tensor:
    """Non-saturating logistic loss for G: ``mean softplus(-D(fake))`` (float32 scalar)."""
    return F.softplus(-discriminator(fake, labels).float()).mean()


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       labels=None, fake_labels=None) -> torch.Tensor:
    """Logistic loss for D: ``mean softplus(D(fake)) + mean softplus(-D(real))`` (float32 scalar).

    ``fake`` is detached (the D step never updates G).  ``labels`` are the labels of the real
    images and, unless ``fake_labels`` is given, also of the fakes.
    """
    fake_labels = labels if fake_labels is None else fake_labels
    loss_fake = F.softplus(discriminator(fake.detach(), fake_labels).float()).mean()
    loss_real = F.softplus(-discriminator(real, labels).float()).mean()
    return loss_fake + loss_real


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, labels=None, *, augment: str = "",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """R1 penalty: mean over the batch of ``|| d D(real) / d real ||^2`` (float32 scalar).

    Computed in float32 with autocast switched off, with ``create_graph=True`` so that the
    result can be backpropagated to D's parameters.  With ``augment`` (a DiffAugment policy) D
    sees ``diff_augment(real, augment, generator=generator)`` and the gradient is taken with
    respect to the un-augmented images, as StyleGAN2-ADA does; by default no augmentation.

    Lazy regularisation: the caller adds ``r1_penalty(...) * (gamma / 2) * r1_interval`` to D's
    loss every ``r1_interval`` D steps (StyleGAN2: 16), instead of ``gamma / 2`` times it every step.
    """
    real = real.detach().float().requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        seen = diff_augment(real, augment, generator=generator) if augment else real
        logits = discriminator(seen, labels).float()
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


# -- DiffAugment ---------------------------------------------------------------------------------
def diff_augment(x: torch.Tensor, policy: str, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable augmentation (DiffAugment, Zhao et al. 2020) of images ``(N, C, H, W)`` in [-1, 1].

    ``policy`` is a comma separated list of:

    * ``"color"`` -- random brightness (add U(-0.5, 0.5)), saturation (scale the deviation from
      the channel mean by U(0, 2); a no-op for 1-channel images) and contrast (scale the
      deviation from the image mean by U(0.5, 1.5)), one draw per image;
    * ``"translation"`` -- shift by up to 1/8 of the size in each direction, zero padding;
    * ``"cutout"`` -- set a random square of half the image size to zero (it may be clipped by
      the border).

    Each image gets its own random parameters, drawn from ``generator`` (or the global RNG when
    None) on its device, so a seeded generator gives reproducible output.  The result is
    differentiable with respect to ``x``; ``policy=""`` returns ``x`` itself.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> diff_augment(torch.zeros(2, 5, 16, 16), "translation,cutout", generator=g).shape
    torch.Size([2, 5, 16, 16])
    """
    names = _parse_policy(policy)
    for name in names:
        x = _AUGMENT[name](x, generator)
    return x


def _color(x, generator):
    n, c = x.shape[:2]
    r = _rand((3, n, 1, 1, 1), generator, x.device).to(x.dtype)
    x = x + (r[0] - 0.5)  # brightness
    if c > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (r[1] * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r[2] + 0.5) + mean  # contrast


def _translation(x, generator, ratio: float = 0.125):
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(2 * sy + 1, (n, 1, 1), generator, x.device) - sy
    tx = _randint(2 * sx + 1, (n, 1, 1), generator, x.device) - sx
    # output pixel (i, j) reads input pixel (i - ty, j - tx); indices outside read the zero border
    rows = (torch.arange(h, device=x.device).reshape(1, h, 1) - ty).clamp(-1, h) + 1  # (n, h, 1)
    cols = (torch.arange(w, device=x.device).reshape(1, 1, w) - tx).clamp(-1, w) + 1  # (n, 1, w)
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device).reshape(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(x, generator, ratio: float = 0.5):
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _randint(h + (1 - ch % 2), (n, 1, 1), generator, x.device)  # centre of the square
    cx = _randint(w + (1 - cw % 2), (n, 1, 1), generator, x.device)
    ys = torch.arange(h, device=x.device).reshape(1, h, 1)
    xs = torch.arange(w, device=x.device).reshape(1, 1, w)
    inside = ((ys - cy + ch // 2) >= 0) & ((ys - cy + ch // 2) < ch) & ((xs - cx + cw // 2) >= 0) & \
             ((xs - cx + cw // 2) < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENT = {"color": _color, "translation": _translation, "cutout": _cutout}


# -- sampling ------------------------------------------------------------------------------------
def generate(loaded, seeds, *, labels=None, truncation_psi: float = 1.0, ema: bool = True, amp, device,
             on_step=None, **_) -> torch.Tensor:
    """Images ``(len(seeds), C, H, W)`` from a loaded GAN (the family's sampler): the (EMA)
    generator with truncation ``truncation_psi`` and constant noise inputs; image ``i``'s latent
    comes from a generator seeded ``seeds[i]``."""
    net = loaded.sampling_module(ema=ema)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    z = torch.stack([torch.randn(loaded.config.z_dim, generator=g) for g in gens]).to(device)
    y = None if labels is None else torch.as_tensor(labels, device=device)
    with torch.no_grad(), amp:
        x = net(z, y, truncation_psi=truncation_psi, noise_mode="const")
    if on_step is not None:
        on_step()
    return x

__all__ = [
    "AUGMENTATIONS", "D_ARCHITECTURES", "G_ARCHITECTURES", "NOISE_MODES", "PRESETS",
    "Discriminator", "DiscriminatorBlock", "EqualConv2d", "EqualLinear", "GANConfig", "Generator",
    "ModulatedConv2d", "NoiseInjection", "SynthesisBlock", "SynthesisLayer", "ToImage",
    "build_discriminator", "build_generator", "diff_augment", "discriminator_loss", "generate", "generator_loss",
    "minibatch_std", "modulated_conv2d", "r1_penalty",
]
