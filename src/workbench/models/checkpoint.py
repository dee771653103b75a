"""Checkpoint folders for every model family: safetensors weights, a JSON config, training info.

A checkpoint is a folder::

    checkpoint/
      config.json          the family's config (``"family": "ddpm" | "ldm" | "ldm3d" | "gan" | "detector"``)
      model.safetensors    every module's weights, keys ``<module>.<tensor>`` (e.g. ``unet.…``,
                           ``ema.…``, ``generator.…``); the module names are in the file's metadata
      training.json        steps, seed, hyper-parameters, loss history, training store and rows
      trainer.safetensors  optimizer tensors and RNG states  (resumable checkpoints only)
      trainer.json         optimizer settings, EMA counters, step, history  (resumable only)

Nothing is unpickled when loading: weights and optimizer state are safetensors, everything else
is JSON.  A missing or truncated file, a config of another family, or weights that do not fit
the config raise :class:`~workbench.errors.CheckpointError` naming the file.

Which networks each family saves, how they are built and which one makes images is in the
family's record (:mod:`.family`); this module reads it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, option_hint
from .config import ModelConfig, family_of
from .family import Family, get_family

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING = "training.json"
REQUIRED = (WEIGHTS, CONFIG, TRAINING)

# -- writing -------------------------------------------------------------------------------------
def state_tensors(modules: dict) -> dict:
    """``{"<module>.<key>": tensor}`` of every module's state dict, on the CPU and contiguous."""
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def write_model_files(folder, modules: dict, config: ModelConfig, info: dict) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``training.json`` into an existing folder.

    ``training.json`` is written last, each file through a temporary name: a folder is a
    complete checkpoint only once its ``training.json`` exists.
    """
    from safetensors.torch import save_file

    from ..data.atomic import atomic_file

    folder = Path(folder)
    with atomic_file(folder / WEIGHTS) as tmp:
        save_file(state_tensors(modules), str(tmp),
                  metadata={"format": "pt", "workbench": config.family, "modules": ",".join(modules)})
    with atomic_file(folder / CONFIG) as tmp:
        tmp.write_text(config.to_json())
    with atomic_file(folder / TRAINING) as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=str))


def save_model(path, modules: dict, config: ModelConfig, info: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write a checkpoint folder (weights + config + training info) atomically."""
    from ..data.atomic import atomic_dir

    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        write_model_files(tmp, modules, config, info or {})
    return path


# -- reading -------------------------------------------------------------------------------------
def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint here (folder does not exist)")
    for name in REQUIRED:
        if not (path / name).is_file():
            hint = ""
            ckpts = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
            if ckpts:
                hint = (f"; training has not finished: the latest checkpoint is {ckpts[-1]} "
                        f"(train again with {option_hint('resume')} to continue, or load that folder)")
            raise CheckpointError(f"{path}: missing {name}; the checkpoint is incomplete or was not written "
                                  f"by the workbench{hint}")


def read_config(path) -> ModelConfig:
    """The config of a checkpoint folder (of whichever family), without loading weights.

    Configs written in an older layout (e.g. a DDPM's noise schedule at the top level, before it
    had its own ``scheduler`` section) are brought to the current one as they are read.
    """
    path = Path(path)
    _check_folder(path)
    file = path / CONFIG
    try:
        d = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    try:
        family = get_family(family_of(d), error=CheckpointError)
    except CheckpointError as err:
        raise CheckpointError(f"{file}: {err}") from None
    return family.config_class.from_dict(d, source=str(file))


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


def read_tensors(file: Path) -> tuple[dict, dict]:
    """All tensors and the metadata of a safetensors file; a truncated file is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file}: unreadable or truncated ({err})") from None
    return tensors, meta


def split_modules(tensors: dict, meta: dict, family: str, file: Path) -> dict[str, dict]:
    """``{"unet": {key: tensor}, ...}`` from the prefixed keys of ``model.safetensors``."""
    names = [n for n in meta.get("modules", "").split(",") if n]
    if not names:  # version-1 DDPM checkpoints held the bare UNet
        if family != "ddpm":
            raise CheckpointError(f"{file}: no module list in the file's metadata; not written by this workbench")
        return {"unet": tensors}
    if meta.get("workbench") not in (None, family):
        raise CheckpointError(f"{file}: weights of a {meta.get('workbench')!r} model but config.json says {family!r}")
    out: dict[str, dict] = {n: {} for n in names}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in out:
            raise CheckpointError(f"{file}: tensor {key!r} belongs to no module listed in the metadata {names}")
        out[name][rest] = value
    return out


def load_state(module, state: dict, *, name: str, file: Path, config_file: Path | None = None) -> None:
    """Load ``state`` into ``module``; a mismatch is a CheckpointError that says what differs."""
    expected = module.state_dict()
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
        raise CheckpointError(f"{file}: {name} weights do not match {config_file or file.parent / CONFIG} "
                              f"({'; '.join(problems)})")
    module.load_state_dict(state)


def check_image_shape(config: ModelConfig, info: dict, path) -> None:
    """Refuse a folder whose ``training.json`` records images of another shape than its ``config.json``
    describes (e.g. a 3D model's config beside a 2D model's training record): it mixes two models."""
    shape = info.get("image_shape")
    if shape is None:  # written before training.json recorded it
        return
    if not isinstance(shape, list) or tuple(shape) != tuple(config.image_shape):
        def what(s):
            return "3D volumes" if len(s) == 4 else "2D slices" if len(s) == 3 else "images"

        saved = tuple(shape) if isinstance(shape, list) else shape
        raise CheckpointError(
            f"{Path(path) / TRAINING}: the model was trained on {what(saved)} of shape {saved}, but "
            f"{Path(path) / CONFIG} describes a {config.family} model of {what(config.image_shape)} "
            f"{tuple(config.image_shape)}; the folder mixes two models")


@dataclass
class LoadedModel:
    """A checkpoint in memory: its config, its networks (eval mode) and its training info."""

    path: Path
    config: ModelConfig
    modules: dict
    info: dict

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def record(self) -> Family:
        """The family's record (:class:`~workbench.models.family.Family`)."""
        return get_family(self.family, error=CheckpointError)

    def sampling_module(self, *, ema: bool = True):
        """The network that makes images (or embeddings): the EMA copy when there is one (and ``ema``), else the raw one."""
        order = self.record.sampling_networks
        for name in (order if ema else order[1:]):
            if name in self.modules:
                return self.modules[name]
        raise CheckpointError(f"{self.path}: has none of the networks {list(order)} needed to make images")


def load_model(path, *, modules=None, family: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint folder of any family.

    Parameters
    ----------
    path : checkpoint folder (a run's model folder or one of its ``checkpoints/step-…`` folders).
    modules : names of the modules to load (default: all in the file).
    family : if given, the checkpoint must be of this family (a name in :data:`~workbench.models.family.FAMILIES`).
    device : where to put the networks.
    """
    path = Path(path)
    config = read_config(path)
    if family is not None and config.family != family:
        raise CheckpointError(f"{path}: this is a {config.family!r} checkpoint, not a {family!r} one")
    record = get_family(config.family, error=CheckpointError)
    info = read_training_info(path)
    check_image_shape(config, info, path)
    file = path / WEIGHTS
    tensors, meta = read_tensors(file)
    states = split_modules(tensors, meta, config.family, file)
    names = list(states) if modules is None else list(modules)
    nets = {}
    for name in names:
        if name not in states:
            raise CheckpointError(f"{file}: has no {name!r} weights (it has {sorted(states)})")
        net = record.build(config, name)
        load_state(net, states[name], name=name, file=file)
        nets[name] = net.to(device).eval()
    return LoadedModel(path=path, config=config, modules=nets, info=info)
