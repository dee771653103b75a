"""Latent diffusion trainer: first the autoencoder, then a UNet in its latent space.

Steps ``1 … ae_steps`` train diffusers' ``AutoencoderKL`` (reconstruction + KL, and a patch
discriminator's hinge loss when the config's ``disc_weight`` > 0, from ``disc_start`` on).  At
the first UNet step the latent scale factor (1 / std of the training latents, as in Rombach et
al.) is measured on the training images; steps ``ae_steps + 1 …`` then train the latent UNet on
``scale * z`` (z sampled from the frozen encoder's posterior), with EMA.  After the last step the
autoencoder's reconstruction error on the training images is recorded in ``training.json``.
"""
from __future__ import annotations

from .trainer import Trainer

#: the latent scale and the reconstruction error are measured on at most this many training images
MEASURE_IMAGES = 512


class LDMTrainer(Trainer):
    """The two-stage trainer; :class:`workbench.train.ldm3d.LDM3DTrainer` is the same with the 3D
    networks of ``MODELS`` and its own scheduler, measuring set and diffusion loss."""

    family = "ldm"
    DEFAULT_LR = 2e-4
    EMA_OF = {"ema": "unet"}
    MAIN_LOSS = "loss"
    OPTIONS = {"ae_steps": 1000, "ae_lr": 1e-3}
    #: the module with the family's networks and losses (build_*, autoencoder_loss, encode,
    #: latent_scale, patch_discriminator_loss, reconstruction_error)
    MODELS = "workbench.models.ldm"

    @classmethod
    def check_options(cls, options):
        from ..errors import WorkbenchError

        steps, lr = options["ae_steps"], options["ae_lr"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise WorkbenchError(f"train {cls.family}: ae_steps must be an integer >= 1, got {steps!r}")
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
            raise WorkbenchError(f"train {cls.family}: ae_lr must be a positive number, got {lr!r}")

    @classmethod
    def total_steps(cls, steps, options):
        return int(options["ae_steps"]) + int(steps)

    @property
    def models(self):
        import importlib

        return importlib.import_module(self.MODELS)

    def build(self) -> None:
        m, config = self.models, self.config
        self.modules["autoencoder"] = m.build_autoencoder(config)
        self.modules["unet"] = m.build_latent_unet(config)
        ae_lr = float(self.options["ae_lr"])
        self.add_optimizer("autoencoder", self.modules["autoencoder"].parameters(), lr=ae_lr)
        self.add_optimizer("unet", self.modules["unet"].parameters(), lr=self.lr)
        if config.disc_weight > 0:
            self.modules["discriminator"] = m.build_patch_discriminator(config)
            self.add_optimizer("discriminator", self.modules["discriminator"].parameters(), lr=ae_lr, kind="adam",
                               betas=(0.5, 0.9))
        self.build_scheduler()
        self.scale: float | None = None
        self.view = None
        self.reconstruction: dict | None = None

    def build_scheduler(self) -> None:
        self.alphas = self.models.build_scheduler(self.config).alphas_cumprod.to(self.device)

    def measuring_set(self, view):
        """The training images the scale and the reconstruction error are measured on."""
        import numpy as np

        n = min(len(view), MEASURE_IMAGES)
        positions = np.linspace(0, len(view) - 1, n).round().astype(np.int64)
        return view.read(np.unique(positions))  # in [0, 1], as the measuring functions take them

    def diffusion_loss(self, unet, z0, labels, generator):
        from .ddpm import diffusion_loss

        return diffusion_loss(unet, z0, labels, alphas=self.alphas, config=self.config, generator=generator,
                              amp=self.amp)

    def step(self, x, labels, step, generator):
        import torch

        m, ae, config = self.models, self.modules["autoencoder"], self.config
        ae_steps = int(self.options["ae_steps"])
        if step <= ae_steps:
            self.set_lr(step, ["autoencoder"] + (["discriminator"] if "discriminator" in self.modules else []))
            disc = self.modules.get("discriminator")
            adversarial = disc is not None and config.adversarial_at(step)
            with self.amp:
                loss, parts, recon = m.autoencoder_loss(ae, x, config=config, generator=generator, discriminator=disc,
                                                        use_adversarial=adversarial)
            self.optimize("autoencoder", loss, ae)
            out = {"ae_loss": loss.item(), **{f"ae_{k}": float(v) for k, v in parts.items()}}
            if adversarial:
                disc.requires_grad_(True)
                with self.amp:
                    d_loss = m.patch_discriminator_loss(disc, x, recon.detach())
                self.optimize("discriminator", d_loss, disc)
                out["disc_loss"] = d_loss.item()
            return out
        # -- latent UNet
        if self.scale is None:
            ae.eval()
            # the UNet trains on posterior samples, so the scale is measured on samples too
            self.scale = float(m.latent_scale(ae, self.measuring_set(self.view), sample=True, generator=generator,
                                              device=x.device))
        ae.eval().requires_grad_(False)
        unet = self.modules["unet"]
        with torch.no_grad():
            z0 = m.encode(ae, x, sample=True, generator=generator, scale=self.scale).float()
        self.set_lr(step - ae_steps, ["unet"])
        loss = self.diffusion_loss(unet, z0, labels, generator)
        self.optimize("unet", loss, unet)
        self.update_ema("unet")
        return {"loss": loss.item()}

    def extra_state(self) -> dict:
        return {"latent_scale": self.scale}

    def load_extra_state(self, doc: dict) -> None:
        self.scale = doc.get("latent_scale")

    def on_finish(self, view) -> None:
        ae = self.modules["autoencoder"].eval()
        self.reconstruction = self.models.reconstruction_error(ae, self.measuring_set(view))

    def extra_info(self) -> dict:
        out = {"latent_scale": self.scale}
        if self.reconstruction is not None:
            out["reconstruction_train"] = self.reconstruction
        return out


def reconstruction_report(checkpoint, store, *, splits=("train", "test"), max_images: int = 256):
    """The autoencoder's reconstruction error on each split of ``store``: a pandas table.

    One row per split (at most ``max_images`` images each, evenly spread): mean squared and
    absolute error and PSNR (dB, peak 1) over all channels, then PSNR per channel, and ``r_median``: the
    median Pearson r of an image with its reconstruction, about what a copy made through this decoder
    reaches (compare the copy search's highest r with it).
    """
    import numpy as np
    import pandas as pd

    from ..data.store import SliceStore
    from ..models.checkpoint import load_model
    from ..models.ldm import reconstruction_error

    loaded = load_model(checkpoint, modules=["autoencoder"], family="ldm")
    ae = loaded.modules["autoencoder"]
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    rows = []
    for split in splits:
        view = store.where(split=split)
        if len(view) == 0:
            continue
        positions = np.unique(np.linspace(0, len(view) - 1, min(len(view), max_images)).round().astype(np.int64))
        err = reconstruction_error(ae, view.read(positions))
        row = {"split": split, "images": len(positions), "mse": err["mse"], "mae": err["mae"], "psnr_db": err["psnr"],
               "r_median": err["r_median"]}
        for idx, values in err.get("per_channel", {}).items():
            row[f"psnr_db {store.channels[int(idx)]}"] = values["psnr"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
