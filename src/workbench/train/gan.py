"""GAN trainer: StyleGAN2-type networks, non-saturating logistic loss, lazy R1, DiffAugment, EMA of G.

Each step is one discriminator update and one generator update on a batch, as in StyleGAN2:

* D: ``softplus(D(aug(G(z)))) + softplus(-D(aug(x)))``; every ``r1_interval`` steps the R1
  penalty on the (augmented) reals is added, scaled by ``r1_gamma / 2 * r1_interval`` (lazy
  regularisation).  D's Adam learning rate and betas are adjusted by ``c = interval /
  (interval + 1)`` as in the paper, so lazy and per-step regularisation train alike.
* G: ``softplus(-D(aug(G(z))))``, updating the running average of w (used for truncation).
* the EMA copy of G (``generator_ema``) is what sampling uses.

Adam with betas (0, 0.99) and no gradient clipping (the StyleGAN2 settings).  ``aug`` is
DiffAugment with the config's ``diffaugment`` policy (off by default; "color,translation,cutout"
helps on small datasets).  The fakes of a batch get the batch's real labels when conditional.
"""
from __future__ import annotations

from .trainer import Trainer


class GANTrainer(Trainer):
    family = "gan"
    DEFAULT_LR = 2e-3
    EMA_OF = {"generator_ema": "generator"}
    MAIN_LOSS = "loss_g"
    OPTIONS = {"r1_interval": 16, "style_mixing": 0.0}

    @classmethod
    def check_options(cls, options):
        from ..errors import WorkbenchError

        if not isinstance(options["r1_interval"], int) or options["r1_interval"] < 1:
            raise WorkbenchError(f"train gan: r1_interval must be an integer >= 1, got {options['r1_interval']!r}")
        if not 0 <= float(options["style_mixing"]) <= 1:
            raise WorkbenchError(f"train gan: style_mixing must be in [0, 1], got {options['style_mixing']!r}")

    def build(self) -> None:
        from ..models.gan import build_discriminator, build_generator

        self.modules["generator"] = build_generator(self.config)
        self.modules["discriminator"] = build_discriminator(self.config)
        interval = self.options["r1_interval"]
        c = interval / (interval + 1)
        self.add_optimizer("generator", self.modules["generator"].parameters(), lr=self.lr, kind="adam",
                           betas=(0.0, 0.99), eps=1e-8)
        self.add_optimizer("discriminator", self.modules["discriminator"].parameters(), lr=self.lr * c, kind="adam",
                           betas=(0.0, 0.99 ** c), eps=1e-8)

    def _optimize(self, name, loss):
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step(self, x, labels, step, generator):
        import torch

        from ..models.gan import diff_augment, discriminator_loss, generator_loss, r1_penalty

        G, D, config = self.modules["generator"], self.modules["discriminator"], self.config
        policy = config.diffaugment
        n = x.shape[0]
        self.set_lr(step)
        # -- discriminator
        D.requires_grad_(True)
        with torch.no_grad(), self.amp:
            z = torch.randn(n, config.z_dim, generator=generator, device=x.device)
            fake = G(z, labels, generator=generator, style_mixing_prob=self.options["style_mixing"]).float()
        real_aug = diff_augment(x, policy, generator=generator)
        fake_aug = diff_augment(fake, policy, generator=generator)
        with self.amp:
            loss_d = discriminator_loss(D, real_aug, fake_aug, labels)
        losses = {"loss_d": loss_d.item()}
        interval = self.options["r1_interval"]
        if config.r1_gamma > 0 and step % interval == 0:
            r1 = r1_penalty(D, real_aug, labels)
            loss_d = loss_d + r1 * (config.r1_gamma / 2 * interval)
            losses["r1"] = r1.item()
        self._optimize("discriminator", loss_d)
        # -- generator (D's weights are not trained here)
        D.requires_grad_(False)
        with self.amp:
            z = torch.randn(n, config.z_dim, generator=generator, device=x.device)
            fake = G(z, labels, generator=generator, update_w_avg=True, style_mixing_prob=self.options["style_mixing"])
            loss_g = generator_loss(D, diff_augment(fake.float(), policy, generator=generator), labels)
        self._optimize("generator", loss_g)
        D.requires_grad_(True)
        self.update_ema("generator")
        losses["loss_g"] = loss_g.item()
        return losses
