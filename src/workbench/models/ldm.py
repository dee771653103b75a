"""Latent diffusion (LDM) for multi-channel MRI slices and radiographs: config, autoencoder, latent UNet, losses.

One model per file, as in diffusers.  A latent diffusion model is trained in two stages:

1. **Autoencoder.**  A diffusers ``AutoencoderKL`` (:func:`build_autoencoder`) learns to squeeze an
   image ``(C, H, W)`` into a small latent ``(latent_channels, H/f, W/f)`` with ``f = 2**(levels-1)``
   (:attr:`LDMConfig.downsample_factor`) and back.  Its loss (:func:`autoencoder_loss`) is a pixel
   reconstruction error plus a small KL pull of the latent posterior towards N(0, 1), optionally plus
   the hinge loss of a patch discriminator (:class:`PatchDiscriminator`, trained with
   :func:`patch_discriminator_loss`) that sharpens the reconstructions.
2. **Latent UNet.**  With the autoencoder frozen, a diffusers ``UNet2DModel`` (:func:`build_latent_unet`)
   is trained as an ordinary DDPM on the latents of the training images, with the noise schedule of
   the config's ``scheduler`` section (:func:`build_scheduler`).  Sampling (:func:`generate`)
   denoises a latent and :func:`decode` turns it into an image.

**Scale factor.**  The KL term is tiny, so the latents' spread is whatever the encoder happened to
learn; the diffusion noise schedule assumes unit variance.  As in the LDM paper (Rombach et al. 2022,
sec. 4.3.2 and D.1) the latents are multiplied by ``scale = 1 / std(latents)``, measured once on the
training images after stage 1 with :func:`latent_scale`, and divided by it again before decoding.
:func:`encode` and :func:`decode` take it as ``scale=`` (diffusers keeps the same number as
``vae.config.scaling_factor``).  Store it next to the checkpoint: the UNet is useless without it.

**Ranges.**  Tensor-level functions (:func:`encode`, :func:`decode`, :func:`autoencoder_loss`) work
in model space, images in [-1, 1] (``x * 2 - 1`` of the stored [0, 1] images).  The report functions
that take store arrays (:func:`latent_scale`, :func:`reconstruction_error`) take images in [0, 1],
numpy or torch ``(N, C, H, W)``, and map them themselves.

**Losses.**  ``recon`` is the L1 (or MSE) error averaged over pixels and channels; ``kl`` is the KL
divergence of the posterior from N(0, 1) *summed* over latent elements and averaged over the batch;
``adv`` is the hinge generator loss ``-mean(D(reconstruction))``.  The total is
``recon + kl_weight * kl + disc_weight * adv``.  This is the weighting of diffusers' AutoencoderKL
training example and MONAI generative (a pixel-mean reconstruction term); the original LDM code sums
the reconstruction over pixels too, so its ``kl_weight`` is ``C*H*W`` times smaller for the same
balance.  The taming-transformers adaptive adversarial weight (ratio of gradient norms) is not used;
``disc_weight`` is a fixed factor, switched on by the training loop from step ``disc_start``
(:meth:`LDMConfig.adversarial_at`).

Example
-------
>>> import torch
>>> config = LDMConfig.preset("tiny", image_size=64, channels=["t1", "t1ce", "t2", "flair", "seg"])
>>> config.latent_size
16
>>> vae = build_autoencoder(config)                                          # doctest: +SKIP
>>> x = torch.rand(8, 5, 64, 64) * 2 - 1                                     # doctest: +SKIP
>>> loss, parts, recon = autoencoder_loss(vae, x, config=config)             # doctest: +SKIP
>>> scale = latent_scale(vae, store_images)        # after stage 1, images in [0, 1]  # doctest: +SKIP
>>> z = encode(vae, x, scale=scale)                # (8, 4, 16, 16), unit variance   # doctest: +SKIP
>>> unet, scheduler = build_latent_unet(config), build_scheduler(config)     # doctest: +SKIP
>>> images = decode(vae, z, scale=scale)           # (8, 5, 64, 64) in [-1, 1]       # doctest: +SKIP
>>> reconstruction_error(vae, store_images)["psnr"]                          # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import WorkbenchError
from .config import ModelConfig, model_config
from .scheduler import SchedulerConfig, denoise

RECON_LOSSES = ("l1", "mse")

#: Network sizes.  All use a downsampling factor of 4 (64x64 images -> 16x16 latents), the LDM
#: paper's best trade-off between compression and detail.  ``tiny`` is for CPU demos and tests
#: (16x16 latents at 64x64); ``small`` and ``base`` are for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(latent_channels=4, ae_block_out_channels=(32, 64, 128), ae_layers_per_block=1,
                 ae_norm_num_groups=8, ae_attention=True,
                 unet_block_out_channels=(64, 128, 128), unet_layers_per_block=1, unet_norm_num_groups=8,
                 unet_attention=True),
    "small": dict(latent_channels=4, ae_block_out_channels=(64, 128, 256), ae_layers_per_block=2,
                  ae_norm_num_groups=32, ae_attention=True,
                  unet_block_out_channels=(128, 256, 256), unet_layers_per_block=2, unet_norm_num_groups=32,
                  unet_attention=True),
    "base": dict(latent_channels=4, ae_block_out_channels=(128, 256, 512), ae_layers_per_block=2,
                 ae_norm_num_groups=32, ae_attention=True,
                 unet_block_out_channels=(128, 256, 256, 512), unet_layers_per_block=2, unet_norm_num_groups=32,
                 unet_attention=True),
}


@model_config
class LDMConfig(ModelConfig):
    """Everything that shapes a latent diffusion model: autoencoder, its losses, latent UNet, noise schedule.

    Parameters
    ----------
    image_size : height = width of the images, in pixels (divisible by the downsampling factor, and
        the latent size by the latent UNet's ``2 ** (levels - 1)``).
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]`` or ``["xray"]``).

    latent_channels : channels of the latent image.
    ae_block_out_channels : autoencoder feature channels per level; the image is halved between
        levels, so the downsampling factor is ``2 ** (len - 1)``.
    ae_layers_per_block : ResNet layers per encoder level (the decoder has one more, as in diffusers).
    ae_norm_num_groups : GroupNorm groups in the autoencoder (must divide every ``ae_block_out_channels``).
    ae_attention : self-attention in the middle block of the encoder and decoder.
    kl_weight : weight of the KL term (KL summed over latent elements, mean over the batch).
    recon_loss : ``"l1"`` or ``"mse"``, averaged over pixels.
    disc_weight : weight of the patch discriminator's hinge loss; 0 trains without a discriminator.
    disc_start : autoencoder step from which the adversarial term is used (a discriminator switched
        on too early, before reconstructions are sensible, tends to destabilise training).
    disc_layers, disc_channels : strided layers and first-layer channels of the patch discriminator.

    unet_block_out_channels : latent UNet feature channels per level.
    unet_layers_per_block : ResNet layers per UNet level.
    unet_attention : self-attention at the UNet's lowest resolution and in its middle block.
    unet_norm_num_groups : GroupNorm groups in the UNet.
    attention_head_dim : channels per attention head in the UNet.
    scheduler : the noise schedule on latents (:class:`~workbench.models.scheduler.SchedulerConfig`;
        by default cosine, ``v_prediction``, and ``clip_sample=False``: latents are not confined to
        [-1, 1] as images are); set its options by name, as for the DDPM.
    num_classes : 0 for an unconditional model; otherwise the number of class labels the UNet is
        conditioned on (e.g. 2: tumour absent / present, normal / pneumonia).
    preset : name of the preset it was made from (informative only).
    """

    family: ClassVar[str] = "ldm"
    #: 2: the noise schedule in its own ``scheduler`` section (version 1 held its keys at the top)
    VERSION: ClassVar[int] = 2
    PRESETS: ClassVar[dict] = PRESETS
    TUPLE_FIELDS: ClassVar[tuple] = ("channels", "ae_block_out_channels", "unet_block_out_channels")
    NESTED: ClassVar[dict] = {"scheduler": SchedulerConfig}

    image_size: int
    channels: tuple[str, ...]
    # autoencoder
    latent_channels: int = 4
    ae_block_out_channels: tuple[int, ...] = (32, 64, 128)
    ae_layers_per_block: int = 1
    ae_norm_num_groups: int = 8
    ae_attention: bool = True
    kl_weight: float = 1e-6
    recon_loss: str = "l1"
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_layers: int = 3
    disc_channels: int = 32
    # latent UNet
    unet_block_out_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_attention: bool = False
    unet_norm_num_groups: int = 8
    attention_head_dim: int = 8
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False))
    num_classes: int = 0
    preset: str | None = None
    version: int = field(default=2)

    @property
    def downsample_factor(self) -> int:
        """How many image pixels one latent pixel covers along each side: ``2 ** (AE levels - 1)``."""
        return 2 ** (len(self.ae_block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Height = width of the latent images."""
        return self.image_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def adversarial_at(self, step: int) -> bool:
        """Whether autoencoder step ``step`` uses the discriminator term: ``disc_weight > 0`` and ``step >= disc_start``."""
        return self.disc_weight > 0 and step >= self.disc_start

    def validate(self) -> "LDMConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        super().validate()
        bad = self._bad
        # -- autoencoder
        ae = self.ae_block_out_channels
        if len(ae) < 1 or min(ae) < 1:
            bad(f"ae_block_out_channels must be positive integers, got {ae}")
        factor = self.downsample_factor
        if self.image_size % factor:
            bad(f"image_size {self.image_size} is not divisible by the autoencoder's downsampling factor "
                f"{factor} (2**(levels-1), {len(ae)} levels in ae_block_out_channels {ae}); use an image "
                f"size that is a multiple of {factor} or fewer autoencoder levels")
        if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
            bad(f"latent_channels must be a positive integer, got {self.latent_channels!r}")
        if self.ae_layers_per_block < 1:
            bad(f"ae_layers_per_block must be >= 1, got {self.ae_layers_per_block}")
        if self.ae_norm_num_groups < 1 or any(c % self.ae_norm_num_groups for c in ae):
            bad(f"ae_norm_num_groups {self.ae_norm_num_groups} must divide every entry of "
                f"ae_block_out_channels {ae}")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            bad(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if self.recon_loss not in RECON_LOSSES:
            bad(f"recon_loss {self.recon_loss!r} is not one of {RECON_LOSSES}")
        if not (self.disc_weight >= 0 and math.isfinite(self.disc_weight)):
            bad(f"disc_weight must be a finite number >= 0 (0 = no discriminator), got {self.disc_weight!r}")
        if not isinstance(self.disc_start, int) or self.disc_start < 0:
            bad(f"disc_start must be an autoencoder step >= 0, got {self.disc_start!r}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            bad(f"disc_layers and disc_channels must be >= 1, got {self.disc_layers} and {self.disc_channels}")
        if self.disc_weight > 0 and self.image_size < 3 * 2 ** self.disc_layers:
            bad(f"image_size {self.image_size} is too small for a patch discriminator with disc_layers="
                f"{self.disc_layers} (needs at least {3 * 2 ** self.disc_layers} pixels); use fewer disc_layers")
        # -- latent UNet
        un = self.unet_block_out_channels
        if len(un) < 1 or min(un) < 1:
            bad(f"unet_block_out_channels must be positive integers, got {un}")
        unet_factor = 2 ** (len(un) - 1)
        if self.image_size % factor == 0 and self.latent_size % unet_factor:
            bad(f"the latent size {self.latent_size} (image_size {self.image_size} / downsampling factor "
                f"{factor}) is not divisible by the latent UNet's 2**(levels-1) = {unet_factor} ({len(un)} "
                f"levels in unet_block_out_channels {un}); use fewer UNet levels, fewer autoencoder levels "
                f"or a larger image")
        if self.unet_layers_per_block < 1:
            bad(f"unet_layers_per_block must be >= 1, got {self.unet_layers_per_block}")
        if self.unet_norm_num_groups < 1 or any(c % self.unet_norm_num_groups for c in un):
            bad(f"unet_norm_num_groups {self.unet_norm_num_groups} must divide every entry of "
                f"unet_block_out_channels {un}")
        if self.unet_attention and (self.attention_head_dim < 1 or un[-1] % self.attention_head_dim):
            bad(f"attention_head_dim {self.attention_head_dim} must divide {un[-1]} (the last entry of "
                f"unet_block_out_channels)")
        if not isinstance(self.num_classes, int) or self.num_classes < 0 or self.num_classes == 1:
            bad(f"num_classes must be 0 (unconditional) or >= 2, got {self.num_classes!r}")
        return self


# -- models and scheduler ------------------------------------------------------------------
def build_autoencoder(config: LDMConfig):
    """A freshly initialised diffusers ``AutoencoderKL`` for ``config`` (no pretrained weights)."""
    from diffusers import AutoencoderKL

    config.validate()
    levels = len(config.ae_block_out_channels)
    return AutoencoderKL(
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.ae_block_out_channels,
        layers_per_block=config.ae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.ae_norm_num_groups,
        sample_size=config.image_size,
        mid_block_add_attention=config.ae_attention,
        force_upcast=False,
        scaling_factor=1.0,  # the real one is measured after training: latent_scale()
    )


def build_latent_unet(config: LDMConfig):
    """A freshly initialised diffusers ``UNet2DModel`` that denoises latents of ``config``."""
    from .ddpm import unet2d

    config.validate()
    return unet2d(sample_size=config.latent_size, channels=config.latent_channels,
                  block_out_channels=config.unet_block_out_channels, layers_per_block=config.unet_layers_per_block,
                  attention=config.unet_attention, norm_num_groups=config.unet_norm_num_groups,
                  attention_head_dim=config.attention_head_dim, num_classes=config.num_classes)


def build_scheduler(config: LDMConfig, sampler: str = "ddpm", *, steps: int | None = None, device=None):
    """The diffusers scheduler of the latent UNet: the training ``DDPMScheduler``, or the sampling
    scheduler ``sampler`` (``"ddpm"`` / ``"ddim"``) set to ``steps`` steps."""
    return config.scheduler.build(sampler, steps=steps, device=device)


def generate(loaded, seeds, *, labels=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
             ema: bool = True, amp, device, on_step=None, **_):
    """Images ``(len(seeds), C, H, W)`` in [-1, 1] from a loaded LDM (the family's sampler): denoise
    latents with the (EMA) latent UNet, then decode them with the checkpoint's ``latent_scale``."""
    config = loaded.config
    scale = float(loaded.info.get("latent_scale", 1.0))
    scheduler = build_scheduler(config, sampler, steps=steps, device=device)
    z = denoise(loaded.sampling_module(ema=ema), scheduler, seeds, config.latent_shape, labels=labels, eta=eta,
                sampler=sampler, amp=amp, device=device, on_step=on_step)
    with torch.no_grad():
        return decode(loaded.modules["autoencoder"], z.float(), scale=scale)


def _groups(channels: int, most: int = 32) -> int:
    """The largest power of two <= ``most`` that divides ``channels`` (GroupNorm groups)."""
    g = most
    while channels % g:
        g //= 2
    return g


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix, taming-transformers' ``NLayerDiscriminator``).

    ``layers`` strided 4x4 convolutions (stride 2) with LeakyReLU(0.2), channel count doubling up
    to 8x ``channels``, then two 4x4 stride-1 convolutions; each output logit judges one patch of the
    input.  GroupNorm instead of BatchNorm, so a logit does not depend on the other images in the
    batch.  Needs inputs of at least ``3 * 2**layers`` pixels.

    >>> d = PatchDiscriminator(5, channels=32, layers=3)
    >>> d(torch.zeros(2, 5, 64, 64)).shape
    torch.Size([2, 1, 6, 6])
    """

    def __init__(self, in_channels: int, channels: int = 32, layers: int = 3):
        super().__init__()
        self.in_channels, self.channels, self.layers = in_channels, channels, layers
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            c = channels * mult
            seq += [nn.Conv2d(channels * prev, c, 4, stride=stride, padding=1, bias=False),
                    nn.GroupNorm(_groups(c), c), nn.LeakyReLU(0.2)]
        seq.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # DCGAN / taming initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits ``(N, 1, h, w)``: positive = looks real."""
        return self.net(x)


def build_patch_discriminator(config: LDMConfig) -> PatchDiscriminator:
    """The :class:`PatchDiscriminator` for ``config`` (used only when ``disc_weight > 0``)."""
    config.validate()
    return PatchDiscriminator(config.in_channels, channels=config.disc_channels, layers=config.disc_layers)


# -- losses --------------------------------------------------------------------------------
def _posterior(autoencoder, x):
    """The latent posterior of ``x``, rebuilt in float32 (stable KL and sampling under bf16 autocast)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    params = autoencoder.encode(x).latent_dist.parameters
    return DiagonalGaussianDistribution(params.float())


def _model_dtype(module, t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype of ``module``'s weights (float32 latents into a bf16 model; autocast handles the rest)."""
    return t.to(next(module.parameters()).dtype)


def autoencoder_loss(autoencoder, x: torch.Tensor, *, config: LDMConfig, generator: torch.Generator | None = None,
                     discriminator: nn.Module | None = None, use_adversarial: bool = False
                     ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """The autoencoder's training loss on a batch ``x`` of images in [-1, 1].

    Encodes ``x``, samples a latent from the posterior with ``generator`` (the same seed gives the
    same loss), decodes it and returns ``(total, parts, reconstruction)``:

    - ``total = recon + kl_weight * kl + disc_weight * adv``, a scalar tensor to ``backward()``;
    - ``parts``: floats ``{"recon", "kl", "adv", "total"}``, unweighted (``adv`` is 0.0 when unused);
    - ``reconstruction``: the decoded batch (with grad), to be ``.detach()``-ed for the
      discriminator's step.

    ``recon`` is the L1 (or MSE, ``config.recon_loss``) error averaged over all pixels; ``kl`` is
    the KL divergence from N(0, 1) summed over each latent's elements, averaged over the batch.  With
    ``use_adversarial`` (the loop passes ``config.adversarial_at(step)``) the hinge generator loss
    ``adv = -mean(discriminator(reconstruction))`` is added; the discriminator's own parameters get
    no gradient from it.
    """
    if use_adversarial and discriminator is None:
        raise WorkbenchError("autoencoder_loss: use_adversarial=True needs a discriminator "
                             "(build_patch_discriminator(config))")
    posterior = _posterior(autoencoder, x)
    z = posterior.sample(generator=generator)
    recon = autoencoder.decode(_model_dtype(autoencoder, z)).sample
    target = x.float()
    if config.recon_loss == "l1":
        rec = (recon.float() - target).abs().mean()
    else:
        rec = (recon.float() - target).pow(2).mean()
    kl = posterior.kl().sum() / x.shape[0]
    total = rec + config.kl_weight * kl
    adv = torch.zeros((), device=x.device)
    if use_adversarial:
        flags = [p.requires_grad for p in discriminator.parameters()]
        discriminator.requires_grad_(False)
        try:
            adv = -discriminator(recon).float().mean()
        finally:
            for p, f in zip(discriminator.parameters(), flags):
                p.requires_grad_(f)
        total = total + config.disc_weight * adv
    parts = {"recon": float(rec.detach()), "kl": float(kl.detach()), "adv": float(adv.detach()),
             "total": float(total.detach())}
    return total, parts, recon


def patch_discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.

    Pass ``fake = reconstruction.detach()`` so the autoencoder gets no gradient from this step.
    """
    real_logits = discriminator(real).float()
    fake_logits = discriminator(fake).float()
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


# -- encode / decode -----------------------------------------------------------------------
def encode(autoencoder, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
           scale: float = 1.0) -> torch.Tensor:
    """Latents of images ``x`` in [-1, 1]: the posterior mode, or a sample with ``sample=True``.

    The latents are multiplied by ``scale`` (give the :func:`latent_scale` of the autoencoder to get
    the unit-variance latents the UNet is trained on).
    """
    posterior = _posterior(autoencoder, x)
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    return z * scale


def decode(autoencoder, z: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """Images in [-1, 1] (clamped) from latents ``z``, divided by ``scale`` first (the inverse of :func:`encode`)."""
    return autoencoder.decode(_model_dtype(autoencoder, z / scale)).sample.clamp(-1.0, 1.0)


# -- measurements on store images ----------------------------------------------------------
def _batches(images, batch_size: int, device, name: str, progress: bool = False):
    """Yield float32 batches of store images (numpy or tensor, (N, C, H, W), in [0, 1]) mapped to [-1, 1]."""
    from ..progress import tqdm

    if batch_size < 1:
        raise WorkbenchError(f"{name}: batch_size must be >= 1, got {batch_size}")
    if getattr(images, "ndim", None) != 4:
        raise WorkbenchError(f"{name}: expected images of shape (N, C, H, W), got shape "
                             f"{tuple(getattr(images, 'shape', ()))}")
    if len(images) == 0:
        raise WorkbenchError(f"{name}: no images given")
    for start in tqdm(range(0, len(images), batch_size), desc=name.replace("_", " "), unit="batch",
                      disable=not progress):
        chunk = images[start:start + batch_size]
        t = torch.as_tensor(np.asarray(chunk, dtype=np.float32)) if not torch.is_tensor(chunk) else chunk.float()
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise WorkbenchError(f"{name}: images must be in [0, 1] as in a SliceStore, found values in "
                                 f"[{lo:.3g}, {hi:.3g}] (images {start}..{start + len(t) - 1})")
        yield t.to(device) * 2 - 1


class _EvalMode:
    """Put a module in eval mode for a ``with`` block and restore its training flag afterwards."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)


def _device_of(autoencoder, device):
    return torch.device(device) if device is not None else next(autoencoder.parameters()).device


def latent_scale(autoencoder, images, *, batch_size: int = 32, sample: bool = False,
                 generator: torch.Generator | None = None, device=None, progress: bool = False) -> float:
    """The LDM scale factor ``1 / std`` of the latents of ``images`` (in [0, 1], numpy or tensor).

    The standard deviation is taken over every element of every latent (posterior mode, or a
    sample with ``sample=True``), accumulated in float64 batch by batch, without grad and in eval
    mode.  ``encode(..., scale=latent_scale(...))`` then gives latents of unit variance.  ``device``
    defaults to the autoencoder's; ``progress`` shows a progress bar.
    """
    device = _device_of(autoencoder, device)
    n, s, s2 = 0, 0.0, 0.0
    with torch.no_grad(), _EvalMode(autoencoder):
        for x in _batches(images, batch_size, device, "latent_scale", progress):
            z = encode(autoencoder, x, sample=sample, generator=generator).double()
            n += z.numel()
            s += float(z.sum())
            s2 += float((z * z).sum())
    mean = s / n
    var = max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1)
    std = math.sqrt(var)
    if not math.isfinite(std) or std <= 0:
        raise WorkbenchError(f"latent_scale: the latents have standard deviation {std}; the autoencoder "
                             f"collapsed or produced non-finite values, so no scale factor can be set")
    return 1.0 / std


def reconstruction_error(autoencoder, images, *, batch_size: int = 32, device=None, progress: bool = False) -> dict:
    """How well the autoencoder reproduces ``images`` (in [0, 1], numpy or tensor ``(N, C, H, W)``).

    Each image is encoded (posterior mode), decoded and mapped back to [0, 1]; the errors are taken
    in that range, without grad and in eval mode.  Returns::

        {"mse": ..., "mae": ..., "psnr": ...,          # over all pixels and channels
         "per_channel": {0: {"mse", "mae", "psnr"}, 1: {...}, ...},
         "r_median": ..., "r_min": ...,              # Pearson r of each image with its reconstruction
         "n_images": N}

    ``psnr = 10 * log10(1 / mse)`` in dB with peak 1.0, from the pooled mean squared error (not a
    mean of per-image PSNRs); ``inf`` for a perfect reconstruction.  ``r_median`` (the median
    Pearson r of an image with its reconstruction) is about the highest r a copy made through this
    decoder reaches: a synthetic image whose highest r with a training image is near it is a copy
    as close as the autoencoder can make.  ``device`` defaults to the autoencoder's; ``progress``
    shows a progress bar.
    """
    device = _device_of(autoencoder, device)
    sq = ab = None
    count = 0
    rs = []
    with torch.no_grad(), _EvalMode(autoencoder):
        for x in _batches(images, batch_size, device, "reconstruction_error", progress):
            recon = decode(autoencoder, encode(autoencoder, x)).float()
            rs.append(row_pearson(recon, x))
            diff = (recon - x.float()) / 2  # the difference of the [0, 1] images
            b_sq = diff.pow(2).sum(dim=(0, 2, 3)).double().cpu()
            b_ab = diff.abs().sum(dim=(0, 2, 3)).double().cpu()
            sq = b_sq if sq is None else sq + b_sq
            ab = b_ab if ab is None else ab + b_ab
            count += x.shape[0] * x.shape[2] * x.shape[3]

    def summary(sq_sum, ab_sum, n):
        mse = float(sq_sum) / n
        return {"mse": mse, "mae": float(ab_sum) / n, "psnr": _psnr(mse)}

    out = summary(sq.sum(), ab.sum(), count * len(sq))
    out["per_channel"] = {i: summary(sq[i], ab[i], count) for i in range(len(sq))}
    out.update(r_summary(rs))
    out["n_images"] = len(images)
    return out


def row_pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson r of each item of ``a`` with the same item of ``b`` over all its values (float64).

    NaN where either is constant."""
    a = a.detach().reshape(a.shape[0], -1).double().cpu()
    b = b.detach().reshape(b.shape[0], -1).double().cpu()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(dim=1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan"))).numpy()


def r_summary(rs) -> dict:
    """``{"r_median", "r_min"}`` of per-image r arrays (from :func:`row_pearson`), constant images left out."""
    r = np.concatenate(rs) if rs else np.zeros(0)
    r = r[np.isfinite(r)]
    return {"r_median": float(np.median(r)) if r.size else math.nan, "r_min": float(r.min()) if r.size else math.nan}


def _psnr(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)
