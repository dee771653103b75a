"""Generative models (compute layer): the DDPM config, UNet, scheduler and checkpoints.

Training and sampling live in :mod:`workbench.train` and :mod:`workbench.sample`.
"""
from .ddpm import (
    PRESETS,
    DDPMConfig,
    build_scheduler,
    build_unet,
    load_checkpoint,
    read_config,
    read_training_info,
    save_checkpoint,
)

__all__ = [
    "PRESETS",
    "DDPMConfig",
    "build_scheduler",
    "build_unet",
    "load_checkpoint",
    "read_config",
    "read_training_info",
    "save_checkpoint",
]
