"""DDPM for multi-channel MRI slices and X-rays: config, UNet, noise scheduler and checkpoints.

One model per file, as in diffusers: :class:`DDPMConfig` holds every choice that shapes the
network, and in its ``scheduler`` section (:class:`~workbench.models.scheduler.SchedulerConfig`,
diffusers' scheduler settings) the noise schedule; it round-trips to JSON.  :func:`build_unet`
turns it into a diffusers ``UNet2DModel`` and :func:`build_scheduler` into the ``DDPMScheduler``
it was trained with; :func:`generate` makes images with DDIM or the ancestral sampler.
Checkpoints are folders in the format shared by every family (:mod:`.checkpoint`), with the
modules ``unet`` and (when trained with EMA) ``ema``; the family's record is in :mod:`.family`.

Example
-------
>>> config = DDPMConfig.preset("tiny", image_size=64, channels=["t1", "t1ce", "t2", "flair", "seg"])
>>> unet = build_unet(config)                                           # doctest: +SKIP
>>> save_checkpoint("runs/demo/ckpt", unet, config, {"steps": 0})       # doctest: +SKIP
>>> unet, config, info = load_checkpoint("runs/demo/ckpt")              # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from .checkpoint import CONFIG, TRAINING, WEIGHTS, read_training_info  # noqa: F401
from .config import ModelConfig, model_config
from .scheduler import SchedulerConfig, denoise

#: Network sizes.  ``tiny`` trains at ~0.35 s per step (batch 16, 64x64x5, bf16) on a 2-core CPU.
#: It goes four levels deep (64 -> 8 pixels at 64x64): the deep, cheap levels give it the global
#: view it needs to learn whole slices; the three-level (32, 64, 64) net it replaced was 25 %
#: faster per step but, after 1200 steps on 8 slices, still made blurry blobs (BENCHMARKS.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=8, attention=False),
    "small": dict(block_out_channels=(64, 128, 128, 256), layers_per_block=2, norm_num_groups=32, attention=True),
    "base": dict(block_out_channels=(128, 128, 256, 256, 512), layers_per_block=2, norm_num_groups=32,
                 attention=True),
}


@model_config
class DDPMConfig(ModelConfig):
    """Everything that shapes a DDPM: the UNet, and its training noise schedule in ``scheduler``.

    Parameters
    ----------
    image_size : height = width of the images, in pixels (divisible by ``2 ** (levels - 1)``).
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]``).
    block_out_channels : feature channels per resolution level; its length is the number of levels.
    layers_per_block : ResNet layers per level.
    attention : self-attention at the lowest resolution and in the middle block.
    attention_head_dim : channels per attention head.
    norm_num_groups : GroupNorm groups (must divide every entry of ``block_out_channels``).
    scheduler : the noise schedule (:class:`~workbench.models.scheduler.SchedulerConfig`):
        ``num_train_timesteps``, ``beta_schedule`` (``"squaredcos_cap_v2"`` is the cosine schedule),
        ``beta_start``, ``beta_end``, ``prediction_type`` (what the UNet predicts: ``"epsilon"``
        (noise), ``"v_prediction"`` or ``"sample"``) and ``clip_sample``; set them by name like any
        option (``DDPMConfig.preset("tiny", ..., beta_schedule="squaredcos_cap_v2")``).
    num_classes : 0 for an unconditional model; otherwise the number of class labels (e.g. 2:
        tumour absent / present in the slice, normal / pneumonia) the UNet is conditioned on.
    preset : name of the preset it was made from (informative only).
    """

    family: ClassVar[str] = "ddpm"
    #: 3: the noise schedule in its own ``scheduler`` section (versions 1-2 held its keys at the top)
    VERSION: ClassVar[int] = 3
    PRESETS: ClassVar[dict] = PRESETS
    TUPLE_FIELDS: ClassVar[tuple] = ("channels", "block_out_channels")
    NESTED: ClassVar[dict] = {"scheduler": SchedulerConfig}

    image_size: int
    channels: tuple[str, ...]
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_classes: int = 0
    preset: str | None = None
    version: int = field(default=3)

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    def validate(self) -> "DDPMConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        super().validate()
        bad = self._bad
        if self.levels < 1 or min(self.block_out_channels) < 1:
            bad(f"block_out_channels must be positive integers, got {self.block_out_channels}")
        factor = 2 ** (self.levels - 1)
        if self.image_size % factor:
            bad(f"image_size {self.image_size} is not divisible by 2**(levels-1) = {factor} "
                f"({self.levels} levels in block_out_channels {self.block_out_channels}); "
                f"use an image size that is a multiple of {factor} or fewer levels")
        if self.layers_per_block < 1:
            bad(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            bad(f"norm_num_groups {self.norm_num_groups} must divide every entry of "
                f"block_out_channels {self.block_out_channels}")
        if self.attention and (self.attention_head_dim < 1 or self.block_out_channels[-1] % self.attention_head_dim):
            bad(f"attention_head_dim {self.attention_head_dim} must divide {self.block_out_channels[-1]}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0 or self.num_classes == 1:
            bad(f"num_classes must be 0 (unconditional) or >= 2, got {self.num_classes!r}")
        return self


# -- model and scheduler -------------------------------------------------------------------
def unet2d(*, sample_size: int, channels: int, block_out_channels, layers_per_block: int, attention: bool,
           norm_num_groups: int, attention_head_dim: int, num_classes: int):
    """A diffusers ``UNet2DModel``: plain ResNet levels, self-attention at the lowest one if asked,
    class embeddings when ``num_classes`` > 0.  Shared by the DDPM and the latent diffusion UNet."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim, add_attention=attention, num_class_embeds=num_classes or None,
    )


def build_unet(config: DDPMConfig):
    """A freshly initialised diffusers ``UNet2DModel`` for ``config``."""
    config.validate()
    return unet2d(sample_size=config.image_size, channels=config.in_channels,
                  block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                  attention=config.attention, norm_num_groups=config.norm_num_groups,
                  attention_head_dim=config.attention_head_dim, num_classes=config.num_classes)


def build_scheduler(config: DDPMConfig, sampler: str = "ddpm", *, steps: int | None = None, device=None):
    """The diffusers scheduler of ``config``'s noise schedule: the training ``DDPMScheduler``, or
    the sampling scheduler ``sampler`` (``"ddpm"`` / ``"ddim"``) set to ``steps`` steps."""
    return config.scheduler.build(sampler, steps=steps, device=device)


def generate(loaded, seeds, *, labels=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
             ema: bool = True, amp, device, on_step=None, **_):
    """Images ``(len(seeds), C, H, W)`` in [-1, 1] from a loaded DDPM (the family's sampler).

    ``loaded`` is a :class:`~workbench.models.checkpoint.LoadedModel`; image ``i`` depends only on
    ``seeds[i]``, the weights and the sampler settings.
    """
    config = loaded.config
    scheduler = build_scheduler(config, sampler, steps=steps, device=device)
    shape = (config.in_channels, config.image_size, config.image_size)
    return denoise(loaded.sampling_module(ema=ema), scheduler, seeds, shape, labels=labels, eta=eta, sampler=sampler,
                   amp=amp, device=device, on_step=on_step)


# -- checkpoints (the folder format is shared by every family: see checkpoint.py) -----------------
def save_checkpoint(path, model, config: DDPMConfig, training_info: dict | None = None, *,
                    overwrite: bool = False, ema=None) -> Path:
    """Write a UNet (and optionally its EMA copy) + config + training info as a checkpoint folder."""
    from .checkpoint import save_model

    modules = {"unet": model} if ema is None else {"unet": model, "ema": ema}
    return save_model(path, modules, config, training_info, overwrite=overwrite)


def load_checkpoint(path, *, device: str = "cpu", ema: bool = True):
    """Load a DDPM checkpoint folder: returns ``(unet, config, training_info)``, the UNet in eval mode.

    The UNet is the EMA copy when the checkpoint has one (and ``ema=True``).  Weights are read
    with safetensors only (nothing is unpickled).  A missing or truncated file, a checkpoint of
    another family, or weights that do not fit the config raise :class:`CheckpointError`.
    """
    from .checkpoint import load_model

    loaded = load_model(path, family="ddpm", device=device)
    return loaded.sampling_module(ema=ema), loaded.config, loaded.info
