"""3D latent diffusion (LDM3D) for multi-channel MRI volumes, on MONAI's generative networks.

The 3D twin of :mod:`.ldm`, built the same way and trained by the same loop, but with MONAI's
networks (``monai.networks.nets``), which exist in 3D where diffusers' do not:

1. **Autoencoder.**  A MONAI ``AutoencoderKL(spatial_dims=3)`` (:func:`build_autoencoder`) squeezes
   a volume ``(C, S, S, S)`` into a latent ``(latent_channels, S/f, S/f, S/f)`` with ``f = 2**(levels-1)``
   (:attr:`LDM3DConfig.downsample_factor`) and back.  Its loss (:func:`autoencoder_loss`) is the
   2D family's: pixel reconstruction error plus a small KL pull towards N(0, 1), optionally plus
   the hinge loss of a MONAI ``PatchDiscriminator(spatial_dims=3)`` (:func:`build_patch_discriminator`).
2. **Latent UNet.**  With the autoencoder frozen, a MONAI ``DiffusionModelUNet(spatial_dims=3)``
   (:func:`build_latent_unet`) is trained as a DDPM on ``scale * z`` with MONAI's
   ``DDPMScheduler`` (:func:`diffusion_loss`); :func:`generate` denoises latents with MONAI's
   ``DDIMScheduler`` (or ``DDPMScheduler``) and decodes them.

The latent scale factor (``1 / std`` of the training latents, Rombach et al. 2022) is measured
once at the first UNet step, as in the 2D family, and stored in ``training.json`` as
``latent_scale``.  Tensor-level functions work in model space ([-1, 1]); :func:`latent_scale` and
:func:`reconstruction_error` take store volumes in [0, 1] (an array, a tensor or a SliceStore
view, read a few volumes at a time).

**Why not MONAI's LatentDiffusionInferer.**  Its training call takes no class labels (a
conditional model could not use it) and its sampler draws the noise of a whole batch from the
global random stream, so an image would depend on the batch it was made in; the workbench
promises that an image depends only on its own seed.  The few lines it would save are written
here with MONAI's schedulers (``add_noise``, ``get_velocity``, ``step``) instead.

**Presets** (volumes are cubes, ``D == H == W``; sizes measured or meant for):

=======  ==========================================================================================
tiny     CPU demos and tests: 32^3 volumes (16^3-64^3 work), autoencoder (8, 16, 32) -> 8^3 latents
         of 4 channels, latent UNet (32, 64).  Meant to train (a few hundred autoencoder steps,
         a few hundred UNet steps, batches of 2-4 volumes) and sample within minutes on a 2-core
         CPU (measured: BENCHMARKS.md); learns the gross shape of a brain, not its detail.
small    one GPU, 48^3-96^3 volumes: autoencoder (32, 64, 64) -> (S/4)^3 latents, UNet
         (64, 128, 128) with attention at its lowest level.
base     a large GPU, 64^3-128^3 volumes: autoencoder (64, 128, 128), UNet (128, 256, 256, 512)
         with attention at its lowest level (as in Pinaya et al. 2022, "Brain imaging generation
         with latent diffusion models", scaled down).
=======  ==========================================================================================

Example
-------
>>> config = LDM3DConfig.preset("tiny", image_size=32, channels=["t1", "t1ce", "t2", "flair", "seg"])
>>> config.latent_shape
(4, 8, 8, 8)
>>> config.image_shape
(5, 32, 32, 32)
>>> vae, unet = build_autoencoder(config), build_latent_unet(config)           # doctest: +SKIP
>>> z = encode(vae, x, scale=scale)          # x: (N, 5, 32, 32, 32) in [-1, 1]  # doctest: +SKIP
>>> volumes = decode(vae, z, scale=scale)    # (N, 5, 32, 32, 32) in [-1, 1]      # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import WorkbenchError
from .config import ModelConfig, model_config
from .scheduler import SchedulerConfig

RECON_LOSSES = ("l1", "mse")
#: MONAI's name of each beta schedule (the config keeps diffusers' names, as every family does)
MONAI_SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta", "squaredcos_cap_v2": "cosine",
                   "sigmoid": "sigmoid_beta"}
#: the latent scale and the reconstruction error are measured on at most this many volumes
MEASURE_VOLUMES = 64

#: Network sizes (module docstring: what each is for).  All downsample by 4, so a 32^3 volume has
#: 8^3 latents: 64x fewer voxels, at the cost of fine detail.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(latent_channels=4, ae_block_out_channels=(8, 16, 32), ae_layers_per_block=1, ae_norm_num_groups=8,
                 ae_attention=False, unet_block_out_channels=(32, 64), unet_layers_per_block=1,
                 unet_norm_num_groups=8, unet_attention=False, attention_head_dim=32),
    "small": dict(latent_channels=4, ae_block_out_channels=(32, 64, 64), ae_layers_per_block=1,
                  ae_norm_num_groups=32, ae_attention=True, unet_block_out_channels=(64, 128, 128),
                  unet_layers_per_block=2, unet_norm_num_groups=32, unet_attention=True, attention_head_dim=32),
    "base": dict(latent_channels=4, ae_block_out_channels=(64, 128, 128), ae_layers_per_block=2,
                 ae_norm_num_groups=32, ae_attention=True, unet_block_out_channels=(128, 256, 256, 512),
                 unet_layers_per_block=2, unet_norm_num_groups=32, unet_attention=True, attention_head_dim=64),
}


@dataclasses.dataclass
class MonaiSchedulerConfig(SchedulerConfig):
    """The noise schedule of an LDM3D, built as MONAI's schedulers.

    The same settings, names and JSON as every diffusion family's ``scheduler`` section
    (:class:`~workbench.models.scheduler.SchedulerConfig`); :meth:`build` makes MONAI's
    ``DDPMScheduler`` / ``DDIMScheduler`` (same class names as diffusers', same betas: the
    cosine schedule is the same ``alpha_bar`` ratio clipped at 0.999) instead of diffusers'.
    """

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "_library": "monai"}

    def build(self, sampler: str = "ddpm", *, steps: int | None = None, device=None):
        """MONAI's ``DDPMScheduler`` (training; ancestral sampling) or ``DDIMScheduler`` (``"ddim"``), set
        to ``steps`` sampling steps when given."""
        from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

        classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
        if sampler not in classes:
            raise ValueError(f"sampler must be one of {sorted(classes)}, got {sampler!r}")
        kwargs: dict[str, Any] = dict(num_train_timesteps=self.num_train_timesteps,
                                      schedule=MONAI_SCHEDULES[self.beta_schedule], clip_sample=self.clip_sample,
                                      prediction_type=self.prediction_type)
        if self.beta_schedule != "squaredcos_cap_v2":  # the cosine schedule has no beta range
            kwargs.update(beta_start=self.beta_start, beta_end=self.beta_end)
        scheduler = classes[sampler](**kwargs)
        if steps is not None:
            scheduler.set_timesteps(int(steps), device=device)
        return scheduler


@model_config
class LDM3DConfig(ModelConfig):
    """Everything that shapes a 3D latent diffusion model (the 2D :class:`~workbench.models.ldm.LDMConfig`'s
    options, with the same names, for MONAI's 3D networks).

    Parameters
    ----------
    image_size : side of the cube volumes ``(C, S, S, S)`` in voxels; divisible by the autoencoder's
        downsampling factor, and the latent side by the latent UNet's ``2 ** (levels - 1)``.
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]``).

    latent_channels : channels of the latent volume.
    ae_block_out_channels : autoencoder feature channels per level (MONAI ``channels``); the volume is
        halved between levels, so the downsampling factor is ``2 ** (len - 1)``.
    ae_layers_per_block : residual blocks per autoencoder level (MONAI ``num_res_blocks``).
    ae_norm_num_groups : GroupNorm groups in the autoencoder (must divide every ``ae_block_out_channels``).
    ae_attention : non-local self-attention at the lowest level of the encoder and decoder (MONAI's
        ``with_encoder_nonlocal_attn`` / ``with_decoder_nonlocal_attn``); never at full resolution,
        where 3D attention would cost ``(S^3)^2``.
    kl_weight, recon_loss : as in the 2D family (KL summed over latent voxels, mean over the batch;
        reconstruction error averaged over voxels).
    disc_weight, disc_start, disc_layers, disc_channels : MONAI's 3D ``PatchDiscriminator`` (instance
        norm, so a logit does not depend on the other volumes in the batch); ``disc_weight=0`` (the
        presets) trains without one.

    unet_block_out_channels : latent UNet feature channels per level (MONAI ``channels``).
    unet_layers_per_block : residual blocks per UNet level.
    unet_attention : self-attention at the UNet's lowest level; MONAI's UNet has attention in its
        middle block in any case.
    unet_norm_num_groups : GroupNorm groups in the UNet.
    attention_head_dim : channels per attention head (MONAI ``num_head_channels``); must divide the
        last entry of ``unet_block_out_channels``.
    scheduler : the noise schedule (:class:`MonaiSchedulerConfig`; by default cosine,
        ``v_prediction``, no clipping, as in the 2D LDM); its options are set by name.
    num_classes : 0 for an unconditional model; else the number of class labels (e.g. tumour absent /
        present) the UNet is conditioned on.
    preset : name of the preset it was made from (informative only).
    """

    family: ClassVar[str] = "ldm3d"
    VERSION: ClassVar[int] = 1
    SPATIAL_DIMS: ClassVar[int] = 3
    PRESETS: ClassVar[dict] = PRESETS
    TUPLE_FIELDS: ClassVar[tuple] = ("channels", "ae_block_out_channels", "unet_block_out_channels")
    NESTED: ClassVar[dict] = {"scheduler": MonaiSchedulerConfig}

    image_size: int
    channels: tuple[str, ...]
    # autoencoder
    latent_channels: int = 4
    ae_block_out_channels: tuple[int, ...] = (8, 16, 32)
    ae_layers_per_block: int = 1
    ae_norm_num_groups: int = 8
    ae_attention: bool = False
    kl_weight: float = 1e-6
    recon_loss: str = "l1"
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_layers: int = 3
    disc_channels: int = 16
    # latent UNet
    unet_block_out_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_attention: bool = False
    unet_norm_num_groups: int = 8
    attention_head_dim: int = 32
    scheduler: MonaiSchedulerConfig = field(default_factory=lambda: MonaiSchedulerConfig(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False))
    num_classes: int = 0
    preset: str | None = None
    version: int = field(default=1)

    @property
    def downsample_factor(self) -> int:
        """How many voxels one latent voxel covers along each axis: ``2 ** (AE levels - 1)``."""
        return 2 ** (len(self.ae_block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent cube."""
        return self.image_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size, self.latent_size)

    def adversarial_at(self, step: int) -> bool:
        """Whether autoencoder step ``step`` uses the discriminator term: ``disc_weight > 0`` and ``step >= disc_start``."""
        return self.disc_weight > 0 and step >= self.disc_start

    def validate(self) -> "LDM3DConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        super().validate()
        bad = self._bad
        ae = self.ae_block_out_channels
        if len(ae) < 1 or min(ae) < 1:
            bad(f"ae_block_out_channels must be positive integers, got {ae}")
        factor = self.downsample_factor
        if self.image_size % factor:
            bad(f"volume size {self.image_size} is not divisible by the autoencoder's downsampling factor "
                f"{factor} (2**(levels-1), {len(ae)} levels in ae_block_out_channels {ae}); use volumes whose "
                f"side is a multiple of {factor} (prepare_volume_store(size=...)) or fewer autoencoder levels")
        if isinstance(self.latent_channels, bool) or not isinstance(self.latent_channels, int) \
                or self.latent_channels < 1:
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
        if isinstance(self.disc_start, bool) or not isinstance(self.disc_start, int) or self.disc_start < 0:
            bad(f"disc_start must be an autoencoder step >= 0, got {self.disc_start!r}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            bad(f"disc_layers and disc_channels must be >= 1, got {self.disc_layers} and {self.disc_channels}")
        if self.disc_weight > 0 and self.image_size < 3 * 2 ** self.disc_layers:
            bad(f"volume size {self.image_size} is too small for a patch discriminator with disc_layers="
                f"{self.disc_layers} (needs at least {3 * 2 ** self.disc_layers} voxels); use fewer disc_layers")
        un = self.unet_block_out_channels
        if len(un) < 1 or min(un) < 1:
            bad(f"unet_block_out_channels must be positive integers, got {un}")
        unet_factor = 2 ** (len(un) - 1)
        if self.image_size % factor == 0 and self.latent_size % unet_factor:
            bad(f"the latent size {self.latent_size} (volume size {self.image_size} / downsampling factor "
                f"{factor}) is not divisible by the latent UNet's 2**(levels-1) = {unet_factor} ({len(un)} "
                f"levels in unet_block_out_channels {un}); use fewer UNet levels, fewer autoencoder levels "
                f"or larger volumes")
        if self.unet_layers_per_block < 1:
            bad(f"unet_layers_per_block must be >= 1, got {self.unet_layers_per_block}")
        if self.unet_norm_num_groups < 1 or any(c % self.unet_norm_num_groups for c in un):
            bad(f"unet_norm_num_groups {self.unet_norm_num_groups} must divide every entry of "
                f"unet_block_out_channels {un}")
        # MONAI's UNet has attention in its middle block whatever unet_attention says
        if self.attention_head_dim < 1 or un[-1] % self.attention_head_dim:
            bad(f"attention_head_dim {self.attention_head_dim} must divide {un[-1]} (the last entry of "
                f"unet_block_out_channels; MONAI's UNet always has attention in its middle block)")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0 \
                or self.num_classes == 1:
            bad(f"num_classes must be 0 (unconditional) or >= 2, got {self.num_classes!r}")
        return self


# -- networks and scheduler ----------------------------------------------------------------
def build_autoencoder(config: LDM3DConfig):
    """A freshly initialised MONAI ``AutoencoderKL(spatial_dims=3)`` for ``config``."""
    from monai.networks.nets import AutoencoderKL

    config.validate()
    levels = len(config.ae_block_out_channels)
    return AutoencoderKL(
        spatial_dims=3, in_channels=config.in_channels, out_channels=config.in_channels,
        num_res_blocks=config.ae_layers_per_block, channels=config.ae_block_out_channels,
        attention_levels=(False,) * levels, latent_channels=config.latent_channels,
        norm_num_groups=config.ae_norm_num_groups, with_encoder_nonlocal_attn=config.ae_attention,
        with_decoder_nonlocal_attn=config.ae_attention,
    )


def build_latent_unet(config: LDM3DConfig):
    """A freshly initialised MONAI ``DiffusionModelUNet(spatial_dims=3)`` that denoises latents of ``config``."""
    from monai.networks.nets import DiffusionModelUNet

    config.validate()
    levels = len(config.unet_block_out_channels)
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=config.latent_channels, out_channels=config.latent_channels,
        num_res_blocks=config.unet_layers_per_block, channels=config.unet_block_out_channels,
        attention_levels=(False,) * (levels - 1) + (bool(config.unet_attention),),
        norm_num_groups=config.unet_norm_num_groups, num_head_channels=config.attention_head_dim,
        num_class_embeds=config.num_classes or None,
    )


def build_patch_discriminator(config: LDM3DConfig):
    """MONAI's 3D ``PatchDiscriminator`` for ``config`` (used only when ``disc_weight > 0``); it returns
    a list of features whose last entry is the patch logits (:func:`patch_logits`)."""
    from monai.networks.nets import PatchDiscriminator

    config.validate()
    return PatchDiscriminator(spatial_dims=3, channels=config.disc_channels, in_channels=config.in_channels,
                              out_channels=1, num_layers_d=config.disc_layers, norm="INSTANCE")


def build_scheduler(config: LDM3DConfig, sampler: str = "ddpm", *, steps: int | None = None, device=None):
    """MONAI's training ``DDPMScheduler``, or the sampling scheduler ``sampler`` (``"ddpm"`` / ``"ddim"``)
    set to ``steps`` steps."""
    return config.scheduler.build(sampler, steps=steps, device=device)


def patch_logits(discriminator, x: torch.Tensor) -> torch.Tensor:
    """The patch logits ``(N, 1, d, h, w)`` of MONAI's PatchDiscriminator (positive = looks real)."""
    return discriminator(x)[-1]


# -- losses --------------------------------------------------------------------------------
def _model_dtype(module, t: torch.Tensor) -> torch.Tensor:
    return t.to(next(module.parameters()).dtype)


def posterior(autoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the latent posterior of ``x`` (float32, also under bf16 autocast)."""
    mu, sigma = autoencoder.encode(x)
    return mu.float(), sigma.float()


def _sample(mu, sigma, generator):
    # MONAI's AutoencoderKL.sampling draws from the global stream; a generator keeps every step reproducible
    return mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device)


def autoencoder_loss(autoencoder, x: torch.Tensor, *, config: LDM3DConfig, generator: torch.Generator | None = None,
                     discriminator=None, use_adversarial: bool = False):
    """The autoencoder's training loss on volumes ``x`` in [-1, 1]: ``(total, parts, reconstruction)``.

    ``total = recon + kl_weight * kl + disc_weight * adv`` as in the 2D family
    (:func:`workbench.models.ldm.autoencoder_loss`): ``recon`` the L1 (or MSE) error averaged over
    voxels and channels, ``kl`` the KL divergence from N(0, 1) summed over each latent's voxels and
    averaged over the batch, ``adv = -mean(D(reconstruction))`` when ``use_adversarial``.  The latent
    is sampled with ``generator``, so the same seed gives the same loss.
    """
    if use_adversarial and discriminator is None:
        raise WorkbenchError("autoencoder_loss: use_adversarial=True needs a discriminator "
                             "(build_patch_discriminator(config))")
    mu, sigma = posterior(autoencoder, x)
    z = _sample(mu, sigma, generator)
    recon = autoencoder.decode(_model_dtype(autoencoder, z))
    target = x.float()
    diff = recon.float() - target
    rec = diff.abs().mean() if config.recon_loss == "l1" else diff.pow(2).mean()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).sum() / x.shape[0]
    total = rec + config.kl_weight * kl
    adv = torch.zeros((), device=x.device)
    if use_adversarial:
        flags = [p.requires_grad for p in discriminator.parameters()]
        discriminator.requires_grad_(False)
        try:
            adv = -patch_logits(discriminator, recon).float().mean()
        finally:
            for p, f in zip(discriminator.parameters(), flags):
                p.requires_grad_(f)
        total = total + config.disc_weight * adv
    parts = {"recon": float(rec.detach()), "kl": float(kl.detach()), "adv": float(adv.detach()),
             "total": float(total.detach())}
    return total, parts, recon


def patch_discriminator_loss(discriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator; pass ``fake = reconstruction.detach()``."""
    real_logits = patch_logits(discriminator, real).float()
    fake_logits = patch_logits(discriminator, fake).float()
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


def diffusion_loss(unet, z0: torch.Tensor, labels, *, scheduler, generator, amp) -> torch.Tensor:
    """MSE of the latent UNet's prediction (noise, v or z0, per the scheduler's ``prediction_type``) at a
    random timestep, for clean scaled latents ``z0``; noise and timesteps come from ``generator``, the
    noising from MONAI's scheduler (``add_noise``, ``get_velocity``)."""
    import torch.nn.functional as F

    noise = torch.randn(z0.shape, generator=generator, device=z0.device)
    t = torch.randint(0, scheduler.num_train_timesteps, (z0.shape[0],), generator=generator, device=z0.device)
    zt = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
    if scheduler.prediction_type == "epsilon":
        target = noise
    elif scheduler.prediction_type == "v_prediction":
        target = scheduler.get_velocity(z0, noise, t)
    else:
        target = z0
    with amp:
        pred = unet(zt, timesteps=t, class_labels=labels)
    return F.mse_loss(pred.float(), target)


# -- encode / decode -----------------------------------------------------------------------
def encode(autoencoder, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
           scale: float = 1.0) -> torch.Tensor:
    """Latents of volumes ``x`` in [-1, 1] (posterior mean, or a sample with ``sample=True``), times ``scale``."""
    mu, sigma = posterior(autoencoder, x)
    return (_sample(mu, sigma, generator) if sample else mu) * scale


def decode(autoencoder, z: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """Volumes in [-1, 1] (clamped) from latents ``z``, divided by ``scale`` first (the inverse of :func:`encode`)."""
    return autoencoder.decode(_model_dtype(autoencoder, z / scale)).clamp(-1.0, 1.0)


# -- sampling ------------------------------------------------------------------------------
def denoise(unet, scheduler, seeds, shape, *, labels=None, eta: float = 0.0, sampler: str = "ddim", amp, device,
            on_step=None) -> torch.Tensor:
    """Run MONAI's reverse process for one batch of latents, one random generator per image.

    The latents stay on the CPU in float32 between steps (they are small) and each image is
    stepped with its own generator, so an image depends only on its seed, not on its batch or
    device.  Returns the denoised latents ``(len(seeds), *shape)`` on the CPU.
    """
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in gens])
    n = len(gens)
    class_labels = None if labels is None else torch.as_tensor(labels, device=device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            t_cpu = t.to("cpu")
            with amp:
                out = unet(x.to(device), timesteps=t_cpu.repeat(n).to(device), class_labels=class_labels)
            out = out.float().cpu()
            if sampler == "ddim":
                x = torch.cat([scheduler.step(out[i:i + 1], t_cpu, x[i:i + 1], eta=float(eta), generator=g)[0]
                               for i, g in enumerate(gens)])
            else:
                x = torch.cat([scheduler.step(out[i:i + 1], t_cpu, x[i:i + 1], generator=g)[0]
                               for i, g in enumerate(gens)])
            if on_step is not None:
                on_step()
    return x


def check_sampling(config: LDM3DConfig, *, sampler: str, steps: int, source="ldm3d") -> None:
    """Refuse sampler settings MONAI's schedulers cannot honour (before any work).

    MONAI's ``DDPMScheduler.step`` always steps from ``t`` to ``t - 1``, so ancestral sampling with
    fewer steps than the training timesteps would skip noise levels without accounting for them.
    """
    n = config.scheduler.num_train_timesteps
    if sampler == "ddpm" and steps != n:
        raise WorkbenchError(f"{source}: ancestral (ddpm) sampling of an ldm3d model needs steps={n} (MONAI's "
                             f"DDPMScheduler steps one training timestep at a time), got steps={steps}; for fewer "
                             f"steps use sampler='ddim' (eta=1 is close to ancestral sampling)")


def generate(loaded, seeds, *, labels=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
             ema: bool = True, amp, device, on_step=None, **_):
    """Volumes ``(len(seeds), C, S, S, S)`` in [-1, 1] from a loaded LDM3D (the family's sampler): denoise
    latents with the (EMA) latent UNet and MONAI's scheduler, then decode them with the checkpoint's
    ``latent_scale``."""
    config = loaded.config
    check_sampling(config, sampler=sampler, steps=steps, source=str(loaded.path))
    scale = loaded.info.get("latent_scale")
    if scale is None:
        raise WorkbenchError(f"{loaded.path}: has no latent_scale in training.json: it was saved during the "
                             f"autoencoder steps (step {loaded.info.get('steps_done')}), before the latent UNet "
                             f"trained; sample a checkpoint from after the autoencoder steps")
    scale = float(scale)
    scheduler = build_scheduler(config, sampler, steps=steps)
    z = denoise(loaded.sampling_module(ema=ema), scheduler, seeds, config.latent_shape, labels=labels, eta=eta,
                sampler=sampler, amp=amp, device=device, on_step=on_step)
    with torch.no_grad():
        return decode(loaded.modules["autoencoder"], z.to(device), scale=scale).float()


# -- measurements on store volumes ---------------------------------------------------------
def measure_positions(n: int, most: int = MEASURE_VOLUMES) -> np.ndarray:
    """At most ``most`` positions of ``n`` volumes, evenly spread (the volumes the scale and the
    reconstruction error are measured on)."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(np.int64))


def _batches(volumes, batch_size: int, device, name: str, progress: bool = False):
    """Float32 batches of store volumes in [0, 1] (numpy, tensor or SliceStore view) mapped to [-1, 1]."""
    from ..data.store import SliceStore
    from ..progress import tqdm

    if batch_size < 1:
        raise WorkbenchError(f"{name}: batch_size must be >= 1, got {batch_size}")
    shape = tuple(volumes.shape) if hasattr(volumes, "shape") else ()
    if len(shape) != 5:
        raise WorkbenchError(f"{name}: expected volumes of shape (N, C, D, H, W), got shape {shape}")
    if shape[0] == 0:
        raise WorkbenchError(f"{name}: no volumes given")
    for start in tqdm(range(0, shape[0], batch_size), desc=name.replace("_", " "), unit="batch", disable=not progress):
        stop = min(start + batch_size, shape[0])
        if isinstance(volumes, SliceStore):
            chunk = volumes.read(np.arange(start, stop))
        else:
            chunk = volumes[start:stop]
        t = chunk.float() if torch.is_tensor(chunk) else torch.as_tensor(np.asarray(chunk, dtype=np.float32))
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise WorkbenchError(f"{name}: volumes must be in [0, 1] as in a SliceStore, found values in "
                                 f"[{lo:.3g}, {hi:.3g}] (volumes {start}..{stop - 1})")
        yield t.to(device) * 2 - 1


def _device_of(module, device):
    return torch.device(device) if device is not None else next(module.parameters()).device


def latent_scale(autoencoder, volumes, *, batch_size: int = 4, sample: bool = False,
                 generator: torch.Generator | None = None, device=None, progress: bool = False) -> float:
    """The scale factor ``1 / std`` of the latents of ``volumes`` (in [0, 1]), as in the 2D family's
    :func:`workbench.models.ldm.latent_scale`: accumulated in float64, without grad, in eval mode."""
    device = _device_of(autoencoder, device)
    n, s, s2 = 0, 0.0, 0.0
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        with torch.no_grad():
            for x in _batches(volumes, batch_size, device, "latent_scale", progress):
                z = encode(autoencoder, x, sample=sample, generator=generator).double()
                n += z.numel()
                s += float(z.sum())
                s2 += float((z * z).sum())
    finally:
        autoencoder.train(was_training)
    mean = s / n
    std = math.sqrt(max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1))
    if not math.isfinite(std) or std <= 0:
        raise WorkbenchError(f"latent_scale: the latents have standard deviation {std}; the autoencoder "
                             f"collapsed or produced non-finite values, so no scale factor can be set")
    return 1.0 / std


def reconstruction_error(autoencoder, volumes, *, batch_size: int = 4, device=None, progress: bool = False) -> dict:
    """How well the autoencoder reproduces ``volumes`` (in [0, 1]): ``{"mse", "mae", "psnr", "per_channel",
    "r_median", "r_min", "n_images"}`` over all voxels, in the [0, 1] range, as the 2D family's
    :func:`workbench.models.ldm.reconstruction_error` (PSNR in dB, peak 1, from the pooled MSE)."""
    device = _device_of(autoencoder, device)
    from .ldm import r_summary, row_pearson

    sq = ab = None
    count = 0
    rs = []
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        with torch.no_grad():
            for x in _batches(volumes, batch_size, device, "reconstruction_error", progress):
                recon = decode(autoencoder, encode(autoencoder, x)).float()
                rs.append(row_pearson(recon, x))
                diff = (recon - x.float()) / 2
                b_sq = diff.pow(2).sum(dim=(0, 2, 3, 4)).double().cpu()
                b_ab = diff.abs().sum(dim=(0, 2, 3, 4)).double().cpu()
                sq = b_sq if sq is None else sq + b_sq
                ab = b_ab if ab is None else ab + b_ab
                count += x.shape[0] * x.shape[2] * x.shape[3] * x.shape[4]
    finally:
        autoencoder.train(was_training)

    def summary(sq_sum, ab_sum, n):
        mse = float(sq_sum) / n
        return {"mse": mse, "mae": float(ab_sum) / n, "psnr": math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)}

    out = summary(sq.sum(), ab.sum(), count * len(sq))
    out["per_channel"] = {i: summary(sq[i], ab[i], count) for i in range(len(sq))}
    out.update(r_summary(rs))  # Pearson r of each volume with its reconstruction: the copy search's ceiling
    out["n_images"] = int(volumes.shape[0])
    return out
