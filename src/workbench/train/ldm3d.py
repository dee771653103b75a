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

from .ldm import LDMTrainer


class LDM3DTrainer(LDMTrainer):
    """:class:`workbench.train.ldm.LDMTrainer`'s two stages on MONAI's 3D networks."""

    family = "ldm3d"
    MODELS = "workbench.models.ldm3d"
    #: fewer autoencoder steps than the 2D family's default: a 3D step costs more, and the tiny
    #: preset's autoencoder reconstructs the gross shape of a brain volume within a few hundred
    OPTIONS = {"ae_steps": 500, "ae_lr": 1e-3}

    def build_scheduler(self) -> None:
        self.scheduler = self.models.build_scheduler(self.config)

    def measuring_set(self, view):
        """The training volumes the scale and the reconstruction error are measured on (a view, read lazily)."""
        return view.take(self.models.measure_positions(len(view)))

    def diffusion_loss(self, unet, z0, labels, generator):
        return self.models.diffusion_loss(unet, z0, labels, scheduler=self.scheduler, generator=generator,
                                          amp=self.amp)


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
