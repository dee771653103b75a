"""Exceptions the workbench raises for bad input.

Every message names the file (or object) and the problem, so a user sees
``BraTS20_Training_007_t1ce.nii.gz: shape (240, 240, 154) does not match t1 (240, 240, 155)``
instead of a traceback from deep inside numpy.
"""


class WorkbenchError(ValueError):
    """Base class: bad input or a damaged file, with a message meant for the user."""


class DataError(WorkbenchError):
    """An input image or folder cannot be used (missing, unreadable, inconsistent)."""


class StoreError(WorkbenchError):
    """A SliceStore on disk is missing, incomplete or does not match its manifest."""


class CheckpointError(WorkbenchError):
    """A model checkpoint is missing, truncated or does not fit the model asked for."""
