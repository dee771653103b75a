"""Training (compute layer): one loop for every model family, resumable from its checkpoints.

>>> from workbench.train import train_model, training_view
>>> ckpt = train_model(store.where(split="train"), "runs/x/model", model="gan", steps=2000)  # doctest: +SKIP
>>> training_view(ckpt)   # exactly the images the model saw                                # doctest: +SKIP

The model sees images mapped from [0, 1] to [-1, 1].  Which store rows it trained on (after the
optional seeded ``max_images`` subset) is written to ``training.json`` as ``train_rows`` together
with the store path, so the memorization search compares samples with the images the model saw.
"""
from .loop import IN_MEMORY_BYTES, latest_checkpoint, train_ddpm, train_model, training_view

__all__ = ["IN_MEMORY_BYTES", "latest_checkpoint", "train_ddpm", "train_model", "training_view"]
