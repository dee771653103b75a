"""The autoencoder's reconstruction report of a latent diffusion checkpoint, 2D or 3D.

:func:`reconstruction_report` reads the checkpoint's family and hands over to the 2D report
(:func:`workbench.train.ldm.reconstruction_report`, slices) or the 3D one
(:func:`workbench.train.ldm3d.reconstruction_report`, volumes), so a notebook or a user need not
know which kind of model a run holds.
"""
from __future__ import annotations

from ..errors import WorkbenchError
from ..models.checkpoint import read_config


def reconstruction_report(checkpoint, store, *, splits=("train", "test"), max_images: int | None = None):
    """Reconstruction error (MSE, MAE, PSNR per channel) and ``r_median`` of a latent diffusion
    checkpoint's autoencoder on each split of ``store``: a pandas table, one row per split.

    ``max_images`` caps the images (slices) or volumes per split (default: 256 slices, 64 volumes).
    A checkpoint of another family (a DDPM, a GAN) has no autoencoder and is refused, naming it.
    """
    family = read_config(checkpoint).family
    if family == "ldm":
        from .ldm import reconstruction_report as report

        return report(checkpoint, store, splits=splits, **({} if max_images is None else {"max_images": max_images}))
    if family == "ldm3d":
        from .ldm3d import reconstruction_report as report

        return report(checkpoint, store, splits=splits, **({} if max_images is None else {"max_volumes": max_images}))
    raise WorkbenchError(f"{checkpoint}: a '{family}' checkpoint has no autoencoder to report on "
                         f"(reconstruction reports are for latent diffusion: ldm, ldm3d)")
