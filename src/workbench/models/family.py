"""Model families in one place: one :class:`Family` record per family, read by every dispatcher.

Checkpoint loading (:func:`workbench.models.checkpoint.load_model`), training
(:func:`workbench.train.train_model`), sampling (:func:`workbench.sample.sample_model`), the
command line's ``--model`` choices and the tests all look a family up here and nowhere else.
Adding a family means writing its model file (config, networks, sampler), its trainer, and one
entry in :data:`FAMILIES`.

=========  ===========================================  ===========================================
family     networks saved in ``model.safetensors``      makes
=========  ===========================================  ===========================================
ddpm       ``unet``, ``ema`` (EMA of the UNet)          images (DDIM / ancestral sampling)
ldm        ``autoencoder``, ``unet``, ``ema`` (EMA of   images (latents denoised, then decoded)
           the latent UNet), ``discriminator`` (patch)
ldm3d      as ``ldm``, MONAI's 3D networks              3D volumes (C, S, S, S), from a store of
                                                        volumes (latents denoised, then decoded)
gan        ``generator``, ``generator_ema``,            images (one generator pass)
           ``discriminator``
detector   ``encoder``, ``ema`` (EMA of the encoder)    embeddings (the copy detector)
=========  ===========================================  ===========================================

Every family but ``ldm3d`` trains on and makes 2D slices; its config class's ``SPATIAL_DIMS``
(:attr:`Family.spatial_dims`) says which, and the training loop and the sampler check a store
against it before any work.

A record names its parts by ``"module:attribute"`` and imports them when first asked: reading
the registry (the command line does, to list ``--model`` choices) costs no torch import, and the
model files, trainers and this registry do not import each other in a circle.

>>> get_family("ddpm").config_class.__name__
'DDPMConfig'
>>> family_names()
['ddpm', 'detector', 'gan', 'ldm', 'ldm3d']
>>> get_family("ldm3d").spatial_dims
3
>>> get_family("vae")
Traceback (most recent call last):
    ...
workbench.errors.WorkbenchError: unknown model family 'vae'; the workbench has ddpm, detector, gan, ldm, ldm3d
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from ..errors import CheckpointError, WorkbenchError
from .config import ModelConfig

#: what a family's networks produce
KINDS = ("diffusion", "gan", "embedding")


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Family:
    """Everything the workbench needs to know about one model family.

    Attributes
    ----------
    name : the family's name: ``config.json``'s ``"family"``, ``train_model(model=...)``, ``--model``.
    summary : one line for help texts.
    kind : ``"diffusion"`` (sampled in ``steps`` denoising steps), ``"gan"`` (one pass) or
        ``"embedding"`` (makes no images).
    config : ``"module:Class"`` of its :class:`~workbench.models.config.ModelConfig` subclass.
    networks : network name in ``model.safetensors`` -> ``"module:builder"`` (``builder(config)``
        returns the freshly initialised network).
    trainer : ``"module:Class"`` of its :class:`~workbench.train.trainer.Trainer` subclass.
    sampler : ``"module:function"`` that makes images of a loaded checkpoint
        (``generate(loaded, seeds, *, labels, steps, sampler, eta, truncation_psi, ema, amp,
        device, on_step)`` -> images in [-1, 1]); None for a family that makes none.
    sampling_networks : the network that makes images (or embeddings), preferred first: the EMA
        copy, then the trained one.
    sampling_check : ``"module:function"`` that refuses sampler settings the family cannot honour
        (``check(config, sampler=, steps=, source=)`` raises WorkbenchError), called before any
        sampling work; None: every setting the sampler accepts works.
    """

    name: str
    summary: str
    kind: str
    config: str
    networks: Mapping[str, str]
    trainer: str
    sampler: str | None
    sampling_networks: tuple[str, ...]
    sampling_check: str | None = None

    @property
    def config_class(self) -> type[ModelConfig]:
        return _resolve(self.config)

    @property
    def trainer_class(self):
        return _resolve(self.trainer)

    @property
    def spatial_dims(self) -> int:
        """2: trains on and makes 2D slices ``(C, H, W)``; 3: 3D volumes ``(C, D, H, W)`` (its config's ``SPATIAL_DIMS``)."""
        return self.config_class.SPATIAL_DIMS

    @property
    def makes_images(self) -> bool:
        return self.sampler is not None

    @property
    def diffusion(self) -> bool:
        return self.kind == "diffusion"

    def build(self, config: ModelConfig, network: str):
        """A freshly initialised network ``network`` (e.g. ``"unet"``, ``"generator_ema"``) of ``config``."""
        if network not in self.networks:
            raise CheckpointError(f"a {self.name} model has no network {network!r} (it has {sorted(self.networks)})")
        return _resolve(self.networks[network])(config)

    def check_sampling(self, config: ModelConfig, *, sampler: str, steps: int, source) -> None:
        """Raise WorkbenchError, naming ``source``, for sampler settings this family cannot honour."""
        if self.sampling_check is not None:
            _resolve(self.sampling_check)(config, sampler=sampler, steps=steps, source=source)

    def generate(self, loaded, seeds, **options):
        """Images in [-1, 1] (a torch tensor ``(len(seeds), *config.image_shape)``) from a loaded checkpoint."""
        if self.sampler is None:
            raise WorkbenchError(f"{loaded.path}: a {self.name} model makes no images ({self.summary})")
        return _resolve(self.sampler)(loaded, seeds, **options)


FAMILIES: Mapping[str, Family] = MappingProxyType({f.name: f for f in (
    Family(
        name="ddpm", summary="denoising diffusion on the images (diffusers UNet2DModel)", kind="diffusion",
        config="workbench.models.ddpm:DDPMConfig",
        networks={"unet": "workbench.models.ddpm:build_unet", "ema": "workbench.models.ddpm:build_unet"},
        trainer="workbench.train.ddpm:DDPMTrainer", sampler="workbench.models.ddpm:generate",
        sampling_networks=("ema", "unet"),
    ),
    Family(
        name="ldm", summary="latent diffusion: an AutoencoderKL, then a UNet on its latents", kind="diffusion",
        config="workbench.models.ldm:LDMConfig",
        networks={"autoencoder": "workbench.models.ldm:build_autoencoder",
                  "unet": "workbench.models.ldm:build_latent_unet", "ema": "workbench.models.ldm:build_latent_unet",
                  "discriminator": "workbench.models.ldm:build_patch_discriminator"},
        trainer="workbench.train.ldm:LDMTrainer", sampler="workbench.models.ldm:generate",
        sampling_networks=("ema", "unet"),
    ),
    Family(
        name="ldm3d", summary="3D latent diffusion on volumes: MONAI's AutoencoderKL, then its DiffusionModelUNet "
                              "on the latents", kind="diffusion",
        config="workbench.models.ldm3d:LDM3DConfig",
        networks={"autoencoder": "workbench.models.ldm3d:build_autoencoder",
                  "unet": "workbench.models.ldm3d:build_latent_unet", "ema": "workbench.models.ldm3d:build_latent_unet",
                  "discriminator": "workbench.models.ldm3d:build_patch_discriminator"},
        trainer="workbench.train.ldm3d:LDM3DTrainer", sampler="workbench.models.ldm3d:generate",
        sampling_networks=("ema", "unet"), sampling_check="workbench.models.ldm3d:check_sampling",
    ),
    Family(
        name="gan", summary="StyleGAN2-type GAN (written here)", kind="gan",
        config="workbench.models.gan:GANConfig",
        networks={"generator": "workbench.models.gan:build_generator",
                  "generator_ema": "workbench.models.gan:build_generator",
                  "discriminator": "workbench.models.gan:build_discriminator"},
        trainer="workbench.train.gan:GANTrainer", sampler="workbench.models.gan:generate",
        sampling_networks=("generator_ema", "generator"),
    ),
    Family(
        name="detector", summary="contrastive copy detector (SimCLR encoder; makes embeddings, not images)",
        kind="embedding", config="workbench.models.detector:DetectorConfig",
        networks={"encoder": "workbench.models.detector:build_encoder",
                  "ema": "workbench.models.detector:build_encoder"},
        trainer="workbench.train.detector:DetectorTrainer", sampler=None,
        sampling_networks=("ema", "encoder"),
    ),
)})


def family_names(*, makes_images: bool | None = None) -> list[str]:
    """Names of the registered families (only those that make images, or only those that do not)."""
    return sorted(n for n, f in FAMILIES.items() if makes_images is None or f.makes_images == makes_images)


def get_family(name: str, *, error: type[WorkbenchError] = WorkbenchError) -> Family:
    """The record of family ``name``; an unknown name raises ``error`` listing the known ones."""
    if name not in FAMILIES:
        raise error(f"unknown model family {name!r}; the workbench has {', '.join(family_names())}")
    return FAMILIES[name]
