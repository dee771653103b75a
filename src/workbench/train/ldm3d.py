"""3D latent diffusion trainer: first MONAI's 3D autoencoder, then a MONAI UNet in its latent space.

The same two stages as the 2D :mod:`.ldm` trainer, run by the same loop (:mod:`.loop`: data order,
augmentation, bf16 rule, checkpoints, resume, EMA, ``training.json``): steps ``1 … ae_steps``
train the ``AutoencoderKL`` (reconstruction + KL, and the 3D patch discriminator's hinge loss when
``disc_weight`` > 0, from ``disc_start`` on); at the first UNet step the latent scale factor is
measured on the training volumes; steps ``ae_steps + 1 …`` train the latent ``DiffusionModelUNet``
on ``scale * z`` with MONAI's ``DDPMScheduler`` and an EMA copy.  After the last step the
autoencoder's reconstruction error on the training volumes goes into ``training.json``.

It trains on a store of 3D volumes ``(C, S, S, S)`` (cubes); the loop refuses a store of 2D slices
before any work.  Every random draw of a step comes from the step's generator (or the global
stream the loop seeds per step), so a resumed run ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

from .trainer import Trainer


class LDM3DTrainer(Trainer):
    family = "ldm3d"
    DEFAULT_LR = 2e-4
    EMA_OF = {"ema": "unet"}
    MAIN_LOSS = "loss"
    #: fewer autoencoder steps than the 2D family's default: a 3D step costs more, and the tiny
    #: preset's autoencoder reconstructs the gross shape of a brain volume within a few hundred
    OPTIONS = {"ae_steps": 500, "ae_lr": 1e-3}

    @classmethod
    def check_options(cls, options):
        from ..errors import WorkbenchError

        steps, lr = options["ae_steps"], options["ae_lr"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise WorkbenchError(f"train ldm3d: ae_steps must be an integer >= 1, got {steps!r}")
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
            raise WorkbenchError(f"train ldm3d: ae_lr must be a positive number, got {lr!r}")

    @classmethod
    def total_steps(cls, steps, options):
        return int(options["ae_steps"]) + int(steps)

    def build(self) -> None:
        from ..models.ldm3d import build_autoencoder, build_latent_unet, build_patch_discriminator, build_scheduler

        config = self.config
        self.modules["autoencoder"] = build_autoencoder(config)
        self.modules["unet"] = build_latent_unet(config)
        ae_lr = float(self.options["ae_lr"])
        self.add_optimizer("autoencoder", self.modules["autoencoder"].parameters(), lr=ae_lr)
        self.add_optimizer("unet", self.modules["unet"].parameters(), lr=self.lr)
        if config.disc_weight > 0:
            self.modules["discriminator"] = build_patch_discriminator(config)
            self.add_optimizer("discriminator", self.modules["discriminator"].parameters(), lr=ae_lr, kind="adam",
                               betas=(0.5, 0.9))
        self.scheduler = build_scheduler(config)
        self.scale: float | None = None
        self.view = None
        self.reconstruction: dict | None = None

    def _measure_view(self, view):
        """The training volumes the scale and the reconstruction error are measured on (a view, read lazily)."""
        from ..models.ldm3d import measure_positions

        return view.take(measure_positions(len(view)))

    def step(self, x, labels, step, generator):
        import torch

        from ..models.ldm3d import autoencoder_loss, diffusion_loss, encode, latent_scale, patch_discriminator_loss

        ae, config = self.modules["autoencoder"], self.config
        ae_steps = int(self.options["ae_steps"])
        if step <= ae_steps:
            self.set_lr(step, ["autoencoder"] + (["discriminator"] if "discriminator" in self.modules else []))
            disc = self.modules.get("discriminator")
            adversarial = disc is not None and config.adversarial_at(step)
            with self.amp:
                loss, parts, recon = autoencoder_loss(ae, x, config=config, generator=generator, discriminator=disc,
                                                      use_adversarial=adversarial)
            self.optimize("autoencoder", loss, ae)
            out = {"ae_loss": loss.item(), **{f"ae_{k}": float(v) for k, v in parts.items()}}
            if adversarial:
                disc.requires_grad_(True)
                with self.amp:
                    d_loss = patch_discriminator_loss(disc, x, recon.detach())
                self.optimize("discriminator", d_loss, disc)
                out["disc_loss"] = d_loss.item()
            return out
        # -- latent UNet
        if self.scale is None:
            ae.eval()
            # the UNet trains on posterior samples, so the scale is measured on samples too
            self.scale = float(latent_scale(ae, self._measure_view(self.view), sample=True, generator=generator,
                                            device=x.device))
        ae.eval().requires_grad_(False)
        unet = self.modules["unet"]
        with torch.no_grad():
            z0 = encode(ae, x, sample=True, generator=generator, scale=self.scale).float()
        self.set_lr(step - ae_steps, ["unet"])
        loss = diffusion_loss(unet, z0, labels, scheduler=self.scheduler, generator=generator, amp=self.amp)
        self.optimize("unet", loss, unet)
        self.update_ema("unet")
        return {"loss": loss.item()}

    def extra_state(self) -> dict:
        return {"latent_scale": self.scale}

    def load_extra_state(self, doc: dict) -> None:
        self.scale = doc.get("latent_scale")

    def on_finish(self, view) -> None:
        from ..models.ldm3d import reconstruction_error

        ae = self.modules["autoencoder"].eval()
        self.reconstruction = reconstruction_error(ae, self._measure_view(view))

    def extra_info(self) -> dict:
        out = {"latent_scale": self.scale}
        if self.reconstruction is not None:
            out["reconstruction_train"] = self.reconstruction
        return out


def reconstruction_report(checkpoint, store, *, splits=("train", "test"), max_volumes: int = 64):
    """The 3D autoencoder's reconstruction error on each split of a store of volumes: a pandas table.

    The 3D twin of :func:`workbench.train.ldm.reconstruction_report`: one row per split (at most
    ``max_volumes`` volumes each, evenly spread, read a few at a time): mean squared and absolute
    error and PSNR (dB, peak 1) over all channels, then PSNR per channel, and ``r_median``: the
    median Pearson r of an image with its reconstruction, about what a copy made through this decoder
    reaches (compare the copy search's highest r with it).
    """
    import pandas as pd

    from ..data.store import SliceStore
    from ..errors import WorkbenchError
    from ..models.checkpoint import load_model
    from ..models.ldm3d import measure_positions, reconstruction_error

    loaded = load_model(checkpoint, modules=["autoencoder"], family="ldm3d")
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    if tuple(store.image_shape) != tuple(loaded.config.image_shape):
        raise WorkbenchError(f"{store.path}: holds images of shape {tuple(store.image_shape)}; the autoencoder of "
                             f"{checkpoint} takes volumes of shape {tuple(loaded.config.image_shape)}")
    rows = []
    for split in splits:
        view = store.where(split=split)
        if len(view) == 0:
            continue
        view = view.take(measure_positions(len(view), max_volumes))
        err = reconstruction_error(loaded.modules["autoencoder"], view)
        row = {"split": split, "volumes": len(view), "mse": err["mse"], "mae": err["mae"], "psnr_db": err["psnr"],
               "r_median": err["r_median"]}
        for idx, values in err["per_channel"].items():
            row[f"psnr_db {store.channels[int(idx)]}"] = values["psnr"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
