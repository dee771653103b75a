"""Models (compute layer): every family's config, networks and sampler, its record, and checkpoints.

:mod:`.family` holds one record per model family (ddpm, ldm, gan, detector) that every dispatcher
reads; each family's config and networks are in its own file (:mod:`.ddpm`, :mod:`.ldm`,
:mod:`.gan`, :mod:`.detector`), diffusion noise schedules in :mod:`.scheduler`, the checkpoint
folder format in :mod:`.checkpoint`.  Training and sampling live in :mod:`workbench.train` and
:mod:`workbench.sample`.
"""
from .checkpoint import LoadedModel, load_model, read_config, read_training_info
from .ddpm import (
    PRESETS,
    DDPMConfig,
    build_scheduler,
    build_unet,
    load_checkpoint,
    save_checkpoint,
)
from .family import FAMILIES, Family, family_names, get_family
from .scheduler import SchedulerConfig

__all__ = [
    "FAMILIES",
    "PRESETS",
    "DDPMConfig",
    "Family",
    "LoadedModel",
    "SchedulerConfig",
    "build_scheduler",
    "build_unet",
    "family_names",
    "get_family",
    "load_checkpoint",
    "load_model",
    "read_config",
    "read_training_info",
    "save_checkpoint",
]
