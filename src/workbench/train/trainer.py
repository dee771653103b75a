"""What every model family's trainer provides to the one training loop (:mod:`.loop`).

A trainer owns its networks (``modules``: everything saved in ``model.safetensors``), its
optimizers and its EMA copies, and knows how to take one optimisation step on a batch.  The
loop owns everything else: data order, augmentation, seeding, bf16 autocast, logging,
checkpoints and resuming.  Each step's randomness comes from a generator seeded by
``(seed, step)``, so a resumed run repeats exactly what an uninterrupted one would have done.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar

from ..errors import WorkbenchError
from ..models.family import get_family
from .state import ema_state, load_ema_state, load_optimizer_state, optimizer_state


class Trainer:
    """Base class.  Subclasses set ``family``, ``DEFAULT_LR``, ``OPTIONS`` and implement :meth:`build` and :meth:`step`."""

    family: ClassVar[str] = "model"
    #: learning rate when the user gives none
    DEFAULT_LR: ClassVar[float] = 2e-4
    #: family-specific training options (not part of the model config) and their defaults
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: the loss that is plotted and logged as "loss"
    MAIN_LOSS: ClassVar[str] = "loss"
    #: EMA copies: ema module name -> module it averages
    EMA_OF: ClassVar[dict[str, str]] = {}
    #: True: every batch holds distinct images (epochs of whole batches; the last partial batch of
    #: an epoch is dropped), as a contrastive loss needs; False: batches run across epochs
    DISTINCT_BATCHES: ClassVar[bool] = False

    def __init__(self, config, *, lr: float, warmup_steps: int, grad_clip: float | None, ema: bool,
                 ema_decay: float, ema_power: float, bf16: bool, device, options: dict,
                 label_channels=(), total_steps: int | None = None):
        import torch

        self.config = config
        #: positions of the channels that hold label maps (from the training store)
        self.label_channels = [int(c) for c in label_channels]
        #: the optimisation steps of the whole run (for learning-rate schedules that decay)
        self.run_steps = total_steps
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.grad_clip = grad_clip
        self.use_ema = bool(ema)
        self.device = device
        self.options = {**self.OPTIONS, **options}
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
        self.modules: dict = {}
        self.optimizers: dict = {}
        self.base_lr: dict[str, float] = {}
        self.build()
        for m in self.modules.values():
            m.to(device).train()
        self.emas: dict = {}
        self.ema_modules: dict = {}
        if self.use_ema:
            from diffusers.training_utils import EMAModel

            for ema_name, source in self.EMA_OF.items():
                module = copy.deepcopy(self.modules[source]).eval().requires_grad_(False)
                self.ema_modules[ema_name] = module
                self.emas[ema_name] = EMAModel(self.modules[source].parameters(), decay=ema_decay,
                                               use_ema_warmup=True, power=ema_power)

    # -- to implement --------------------------------------------------------------------------
    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise WorkbenchError for family options out of range (before any work)."""

    @classmethod
    def total_steps(cls, steps: int, options: dict) -> int:
        """Optimisation steps the loop runs for ``steps`` (the LDM adds its autoencoder steps)."""
        return steps

    def build(self) -> None:
        """Create ``self.modules`` and ``self.optimizers`` (via :meth:`add_optimizer`)."""
        raise NotImplementedError

    def step(self, x, labels, step: int, generator) -> dict[str, float]:
        """One optimisation step on images ``x`` in [-1, 1]; returns the losses as floats."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """JSON-able state beyond weights and optimizers (e.g. the LDM's latent scale)."""
        return {}

    def load_extra_state(self, doc: dict) -> None:
        pass

    def extra_info(self) -> dict:
        """Extra figures for training.json (e.g. the autoencoder's reconstruction error)."""
        return {}

    def on_finish(self, view) -> None:
        """Called once after the last step with the training view (a SliceStore)."""

    # -- shared helpers ------------------------------------------------------------------------
    @classmethod
    def make_config(cls, preset: str, *, image_size: int, channels, **overrides):
        return get_family(cls.family).config_class.preset(preset, image_size=image_size, channels=channels,
                                                          **overrides)

    def add_optimizer(self, name: str, params, *, lr: float, **kwargs):
        import torch

        kind = kwargs.pop("kind", "adamw")
        cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[kind]
        self.optimizers[name] = cls(params, lr=lr, **kwargs)
        self.base_lr[name] = lr
        return self.optimizers[name]

    def set_lr(self, step: int, names=None) -> None:
        factor = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        for name in (names or self.optimizers):
            for group in self.optimizers[name].param_groups:
                group["lr"] = self.base_lr[name] * factor

    def optimize(self, name: str, loss, module) -> None:
        """Backward, clip, step one optimizer (and zero its gradients first)."""
        import torch

        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
        opt.step()

    def update_ema(self, source: str) -> None:
        for ema_name, src in self.EMA_OF.items():
            if src == source and ema_name in self.emas:
                self.emas[ema_name].step(self.modules[source].parameters())

    def saved_modules(self) -> dict:
        """Every network to write: trained modules plus EMA copies holding the current averages."""
        import torch

        out = dict(self.modules)
        for ema_name, ema in self.emas.items():
            module = self.ema_modules[ema_name]
            ema.copy_to(module.parameters())
            with torch.no_grad():
                for b_ema, b in zip(module.buffers(), self.modules[self.EMA_OF[ema_name]].buffers()):
                    b_ema.copy_(b)
            out[ema_name] = module
        return out

    def state(self) -> tuple[dict, dict]:
        """Tensors and JSON of the optimizers and EMA counters (weights are saved as modules)."""
        tensors, doc = {}, {"optimizers": {}, "ema": {}, "extra": self.extra_state()}
        for name, opt in self.optimizers.items():
            t, d = optimizer_state(name, opt)
            tensors.update(t)
            doc["optimizers"][name] = d
        for name, ema in self.emas.items():
            doc["ema"][name] = ema_state(ema)
        return tensors, doc

    def load(self, states: dict, tensors: dict, doc: dict, *, file) -> None:
        """Restore modules (``states``: name -> state dict), optimizers, EMA and extra state."""
        from ..models.checkpoint import load_state

        for name, module in self.modules.items():
            if name not in states:
                raise WorkbenchError(f"{file}: has no {name!r} weights to resume from")
            load_state(module, states[name], name=name, file=file)
        for name, module in self.ema_modules.items():
            if name not in states:
                raise WorkbenchError(f"{file}: has no {name!r} (EMA) weights to resume from")
            load_state(module, states[name], name=name, file=file)
            load_ema_state(self.emas[name], doc["ema"][name], module)
        for name, opt in self.optimizers.items():
            load_optimizer_state(name, opt, tensors, doc["optimizers"][name], file=file)
        self.load_extra_state(doc.get("extra", {}))
