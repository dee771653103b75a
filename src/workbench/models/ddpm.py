"""DDPM for multi-channel MRI slices: config, UNet, noise scheduler and checkpoints.

One model per file, as in diffusers: :class:`DDPMConfig` holds every choice that shapes the
network and the noise schedule and round-trips to JSON; :func:`build_unet` turns it into a
diffusers ``UNet2DModel`` and :func:`build_scheduler` into the ``DDPMScheduler`` it was trained
with.  A checkpoint is a folder::

    checkpoint/
      model.safetensors   the UNet weights (nothing is unpickled when loading)
      config.json         DDPMConfig.to_dict()
      training.json       steps, seed, loss history, training store path and rows, timing

written under a temporary name and renamed when complete, so a killed run never leaves a
checkpoint that looks finished.

Example
-------
>>> config = DDPMConfig.preset("tiny", image_size=64, channels=["t1", "t1ce", "t2", "flair", "seg"])
>>> unet = build_unet(config)                                           # doctest: +SKIP
>>> save_checkpoint("runs/demo/ckpt", unet, config, {"steps": 0})       # doctest: +SKIP
>>> unet, config, info = load_checkpoint("runs/demo/ckpt")              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_dir
from ..errors import CheckpointError, WorkbenchError

CONFIG_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING = "training.json"

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

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


@dataclass
class DDPMConfig:
    """Everything that shapes a DDPM: the UNet and its training noise schedule.

    Parameters
    ----------
    image_size : height = width of the images, in pixels (divisible by ``2 ** (levels - 1)``).
    channels : channel names, in order (e.g. ``["t1", "t1ce", "t2", "flair", "seg"]``).
    block_out_channels : feature channels per resolution level; its length is the number of levels.
    layers_per_block : ResNet layers per level.
    attention : self-attention at the lowest resolution and in the middle block.
    attention_head_dim : channels per attention head.
    norm_num_groups : GroupNorm groups (must divide every entry of ``block_out_channels``).
    num_train_timesteps, beta_schedule, beta_start, beta_end : the forward noise schedule.
    prediction_type : what the UNet predicts: ``"epsilon"`` (noise), ``"v_prediction"`` or ``"sample"``.
    preset : name of the preset it was made from (informative only).
    """

    image_size: int
    channels: tuple[str, ...]
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    preset: str | None = None
    version: int = field(default=CONFIG_VERSION)

    def __post_init__(self):
        self.channels = tuple(str(c) for c in self.channels)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)

    # -- presets and checks ----------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, *, image_size: int, channels, **overrides) -> "DDPMConfig":
        """A config from a size preset (``"tiny"``, ``"small"``, ``"base"``), with overrides."""
        if name not in PRESETS:
            raise WorkbenchError(f"unknown DDPM preset {name!r}; choose one of {sorted(PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"image_size", "channels", "preset", "version"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise WorkbenchError(f"unknown DDPM config option(s) {unknown}; valid options are {sorted(names)}")
        values = {**PRESETS[name], **overrides}
        config = cls(image_size=image_size, channels=channels, preset=name, **values)
        config.validate()
        return config

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def validate(self) -> "DDPMConfig":
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        def bad(msg):
            raise WorkbenchError(f"DDPM config: {msg}")

        if not isinstance(self.image_size, int) or self.image_size < 1:
            bad(f"image_size must be a positive integer, got {self.image_size!r}")
        if len(self.channels) < 1:
            bad("channels is empty; the model needs at least one channel")
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
        if self.num_train_timesteps < 2:
            bad(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            bad(f"beta_schedule {self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if not 0 < self.beta_start < self.beta_end < 1:
            bad(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.prediction_type not in PREDICTION_TYPES:
            bad(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        return self

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "DDPMConfig":
        """Rebuild a config from :meth:`to_dict` output; unknown or missing keys are an error."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unknown:
                parts.append(f"unknown keys {unknown}")
            raise CheckpointError(f"{source}: not a DDPM config written by this workbench ({'; '.join(parts)})")
        if d["version"] != CONFIG_VERSION:
            raise CheckpointError(f"{source}: config version {d['version']!r}, this workbench reads {CONFIG_VERSION}")
        try:
            return cls(**d).validate()
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: invalid DDPM config ({err})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config.json") -> "DDPMConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(d, source=source)


# -- model and scheduler -------------------------------------------------------------------
def build_unet(config: DDPMConfig):
    """A freshly initialised diffusers ``UNet2DModel`` for ``config``."""
    from diffusers import UNet2DModel

    config.validate()
    levels = config.levels
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        add_attention=config.attention,
    )


def build_scheduler(config: DDPMConfig):
    """The diffusers ``DDPMScheduler`` (training noise schedule) for ``config``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(path, model, config: DDPMConfig, training_info: dict | None = None, *,
                    overwrite: bool = False) -> Path:
    """Write ``model`` + ``config`` (+ ``training_info``) as a checkpoint folder, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "workbench": "ddpm"})
        (tmp / CONFIG).write_text(config.to_json())
        (tmp / TRAINING).write_text(json.dumps(training_info or {}, indent=2, default=str))
    return path


def read_config(path) -> DDPMConfig:
    """The :class:`DDPMConfig` of a checkpoint folder, without loading weights."""
    path = Path(path)
    _check_folder(path)
    file = path / CONFIG
    try:
        text = file.read_text()
    except OSError as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    return DDPMConfig.from_json(text, source=str(file))


def read_training_info(path) -> dict:
    """The ``training.json`` of a checkpoint folder (steps, seed, loss history, train rows...)."""
    file = Path(path) / TRAINING
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; the checkpoint is incomplete or was not written by the workbench")
    try:
        info = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found {type(info).__name__}")
    return info


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint here (folder does not exist)")
    for name in (WEIGHTS, CONFIG, TRAINING):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}; the checkpoint is incomplete or was not written by the workbench")


def load_checkpoint(path, *, device: str = "cpu"):
    """Load a checkpoint folder: returns ``(model, config, training_info)``; the model is in eval mode.

    Weights are read with safetensors only (nothing is unpickled).  A missing or truncated file,
    or weights that do not fit the config, raise :class:`CheckpointError` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config(path)
    info = read_training_info(path)
    file = path / WEIGHTS
    try:
        state = load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file}: unreadable or truncated ({err})") from None
    model = build_unet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        problems = []
        if shapes:
            problems.append(f"{len(shapes)} tensor(s) of the wrong shape, e.g. {shapes[0]}")
        if missing:
            problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{file}: weights do not match {path / CONFIG} ({'; '.join(problems)})")
    model.load_state_dict(state)
    model.to(device).eval()
    return model, config, info
