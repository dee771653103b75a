"""The noise schedule of a diffusion model, kept apart from its network, as diffusers does.

A :class:`SchedulerConfig` is the ``"scheduler"`` section of a diffusion family's config: the
settings of diffusers' ``DDPMScheduler`` that the model was trained with.  It round-trips to
JSON in diffusers' own scheduler-config terms (``_class_name`` plus the constructor's arguments),
and :meth:`SchedulerConfig.build` makes the training scheduler or either sampling scheduler
(``DDPMScheduler`` / ``DDIMScheduler``) from it with ``from_config``.

>>> s = SchedulerConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
>>> SchedulerConfig.from_dict(s.to_dict()) == s
True
>>> s.build("ddim", steps=50).timesteps[:3]                     # doctest: +SKIP
tensor([980, 960, 940])
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from ..errors import CheckpointError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: sampler name -> diffusers scheduler class
SAMPLERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}


@dataclasses.dataclass
class SchedulerConfig:
    """Forward noise schedule and prediction target of a diffusion model (diffusers' names).

    Parameters
    ----------
    num_train_timesteps : diffusion steps of the forward process.
    beta_schedule : ``"linear"``, ``"scaled_linear"``, ``"squaredcos_cap_v2"`` (cosine) or ``"sigmoid"``.
    beta_start, beta_end : first and last beta of the linear-type schedules.
    prediction_type : what the network predicts: ``"epsilon"`` (noise), ``"v_prediction"`` or ``"sample"``.
    clip_sample : clip the predicted clean sample to [-1, 1] while sampling (images: yes; latents: no).
    """

    #: the diffusers class the settings are written for (``_class_name`` in JSON)
    CLASS_NAME: ClassVar[str] = "DDPMScheduler"

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self, bad) -> "SchedulerConfig":
        """Call ``bad(message)`` (which raises) for settings that cannot work."""
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            bad(f"num_train_timesteps must be an integer >= 2, got {n!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            bad(f"beta_schedule {self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if not (isinstance(self.beta_start, (int, float)) and isinstance(self.beta_end, (int, float))
                and math.isfinite(self.beta_start) and math.isfinite(self.beta_end)
                and 0 < self.beta_start < self.beta_end < 1):
            bad(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.prediction_type not in PREDICTION_TYPES:
            bad(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        if not isinstance(self.clip_sample, bool):
            bad(f"clip_sample must be true or false, got {self.clip_sample!r}")
        return self

    # -- JSON (diffusers' scheduler_config.json layout) -------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": self.CLASS_NAME, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "scheduler config") -> "SchedulerConfig":
        """Rebuild from :meth:`to_dict` output; unknown or missing keys are a CheckpointError."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: the scheduler settings should be a JSON object, "
                                  f"found {type(d).__name__}")
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # _class_name, _diffusers_version
        names = set(cls.option_names())
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
            raise CheckpointError(f"{source}: not a scheduler config written by this workbench ({'; '.join(parts)})")
        return cls(**d)

    # -- diffusers ---------------------------------------------------------------------------------
    def build(self, sampler: str = "ddpm", *, steps: int | None = None, device=None):
        """The diffusers scheduler: ``"ddpm"`` (training, ancestral sampling) or ``"ddim"``,
        made with ``from_config`` and, if ``steps`` is given, set to that many sampling steps."""
        import diffusers

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        scheduler = getattr(diffusers, SAMPLERS[sampler]).from_config(self.to_dict())
        if steps is not None:
            scheduler.set_timesteps(int(steps), device=device)
        return scheduler


def denoise(unet, scheduler, seeds, shape, *, labels=None, eta: float = 0.0, sampler: str = "ddim", amp,
            device, on_step=None):
    """Run the reverse process for one batch, one random generator per image (seeded by ``seeds``).

    Every random draw of an image comes from its own generator, so an image does not depend on
    the batch it is made in.  Returns the denoised batch ``(len(seeds), *shape)`` on ``device``.
    """
    import torch

    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) * scheduler.init_noise_sigma
    class_labels = None if labels is None else torch.as_tensor(labels, device=device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            with amp:
                out = unet(x, t, class_labels=class_labels).sample.float()
            if sampler == "ddim":
                kwargs = {"eta": float(eta)}
                if eta > 0:
                    kwargs["variance_noise"] = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
                x = scheduler.step(out, t, x, **kwargs).prev_sample
            else:
                # the ancestral sampler draws its noise from one generator per call: step image by image
                # with each image's generator, so an image does not depend on the batch it is in
                x = torch.cat([scheduler.step(out[i:i + 1], t, x[i:i + 1], generator=g).prev_sample
                               for i, g in enumerate(gens)])
            if on_step is not None:
                on_step()
    return x
