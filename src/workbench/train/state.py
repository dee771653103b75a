"""Trainer state without pickle: optimizer, EMA and RNG states as safetensors + JSON.

``torch.save`` of an optimizer's ``state_dict()`` would be simplest, but loading it back means
unpickling, which runs arbitrary code from a file; the workbench never does that.  An optimizer's
state is tensors (Adam's moments and step counts) plus plain numbers (learning rate, betas), so
it splits cleanly into a safetensors file and a JSON document.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError

TENSORS = "trainer.safetensors"
DOC = "trainer.json"


def _jsonable(value):
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def optimizer_state(name: str, optimizer) -> tuple[dict, dict]:
    """Tensors ``{"opt.<name>.<param>.<key>": t}`` and a JSON-able description of one optimizer."""
    import torch

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{name}.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    doc = {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars,
           "params": sorted(int(p) for p in sd["state"])}
    return tensors, doc


def load_optimizer_state(name: str, optimizer, tensors: dict, doc: dict, *, file: Path) -> None:
    import torch

    state: dict = {}
    prefix = f"opt.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, _, k = key[len(prefix):].partition(".")
            state.setdefault(int(pid), {})[k] = value
    for key, value in doc.get("scalars", {}).items():
        pid, _, k = key.partition(".")
        state.setdefault(int(pid), {})[k] = value
    sd = {"state": state, "param_groups": _from_json(doc["param_groups"])}
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{file}: optimizer {name!r} state does not fit the model ({err})") from None
    # load_state_dict keeps Adam's step counts as given; make sure they are float32 CPU scalars as torch makes them
    for entry in optimizer.state.values():
        if isinstance(entry.get("step"), torch.Tensor):
            entry["step"] = entry["step"].to(torch.float32)


def ema_state(ema) -> dict:
    """The JSON part of a diffusers ``EMAModel`` (its shadow weights are saved as a module)."""
    sd = ema.state_dict()
    return {k: v for k, v in sd.items() if k != "shadow_params"}


def load_ema_state(ema, doc: dict, module) -> None:
    """Restore an ``EMAModel`` from its JSON counters and the module holding its shadow weights."""
    for key, value in doc.items():
        setattr(ema, key, value)
    ema.shadow_params = [p.detach().clone() for p in module.parameters()]


def rng_state() -> dict:
    """The global torch RNG states (CPU, and every CUDA device when there is one)."""
    import torch

    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def load_rng_state(tensors: dict) -> None:
    import torch

    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def write_trainer_state(folder, tensors: dict, doc: dict) -> None:
    """Write ``trainer.safetensors`` and ``trainer.json`` into ``folder`` (each through a temporary name)."""
    from safetensors.torch import save_file

    from ..data.atomic import atomic_file

    folder = Path(folder)
    with atomic_file(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "workbench": "trainer"})
    with atomic_file(folder / DOC) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=str))


def read_trainer_state(folder) -> tuple[dict, dict]:
    """``(tensors, doc)`` of a resumable checkpoint; a missing or damaged file is a CheckpointError."""
    from ..models.checkpoint import read_tensors

    folder = Path(folder)
    for name in (TENSORS, DOC):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; this checkpoint cannot be resumed")
    tensors, _ = read_tensors(folder / TENSORS)
    try:
        doc = json.loads((folder / DOC).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / DOC}: unreadable ({err})") from None
    if not isinstance(doc, dict) or "step" not in doc:
        raise CheckpointError(f"{folder / DOC}: not a trainer state written by the workbench")
    return tensors, doc
