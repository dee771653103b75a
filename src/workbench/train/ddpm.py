"""DDPM trainer: noise-prediction (or v / x0) MSE on a diffusers UNet, with EMA and optional class labels."""
from __future__ import annotations

from .trainer import Trainer


class DDPMTrainer(Trainer):
    family = "ddpm"
    DEFAULT_LR = 2e-4
    EMA_OF = {"ema": "unet"}

    def build(self) -> None:
        from ..models.ddpm import build_scheduler, build_unet

        self.modules["unet"] = build_unet(self.config)
        self.add_optimizer("unet", self.modules["unet"].parameters(), lr=self.lr)
        self.alphas = build_scheduler(self.config).alphas_cumprod.to(self.device)

    def step(self, x0, labels, step, generator):
        self.set_lr(step)
        loss = diffusion_loss(self.modules["unet"], x0, labels, alphas=self.alphas, config=self.config,
                              generator=generator, amp=self.amp)
        self.optimize("unet", loss, self.modules["unet"])
        self.update_ema("unet")
        return {"loss": loss.item()}


def diffusion_loss(unet, x0, labels, *, alphas, config, generator, amp):
    """MSE of the UNet's prediction (noise, v or x0, per the config's ``scheduler.prediction_type``) at a random
    timestep, for clean inputs ``x0`` (images for the DDPM, scaled latents for latent diffusion)."""
    import torch
    import torch.nn.functional as F

    schedule = config.scheduler
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if schedule.prediction_type == "epsilon":
        target = noise
    elif schedule.prediction_type == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    else:
        target = x0
    with amp:
        pred = unet(xt, t, class_labels=labels).sample
    return F.mse_loss(pred.float(), target)
