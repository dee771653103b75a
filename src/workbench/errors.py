"""Exceptions the workbench raises for bad input.

Every message names the file (or object) and the problem, so a user sees
``BraTS20_Training_007_t1ce.nii.gz: shape (240, 240, 154) does not match t1 (240, 240, 155)``
instead of a traceback from deep inside numpy.
"""
import contextvars


class WorkbenchError(ValueError):
    """Base class: bad input or a damaged file, with a message meant for the user."""


class DataError(WorkbenchError):
    """An input image or folder cannot be used (missing, unreadable, inconsistent)."""


class StoreError(WorkbenchError):
    """A SliceStore on disk is missing, incomplete or does not match its manifest."""


class CheckpointError(WorkbenchError):
    """A model checkpoint is missing, truncated or does not fit the model asked for."""


class TooFewReferenceImages(WorkbenchError):
    """A search asked for ``k`` matches per query, but only ``available`` reference images are
    non-constant (constant images have no Pearson r and are never matched).

    A Dask shard catches it and searches its shard for as many as it holds; the client checks the total.
    """

    def __init__(self, message: str, *, k: int | None = None, available: int | None = None):
        super().__init__(message)
        self.k, self.available = k, available


# -- naming options the way the user gives them ------------------------------------------------
# The same check runs under the command line (`--overwrite`) and from Python or a notebook
# (`overwrite=True`); a message must name the option as the user at hand spells it.  The CLI
# sets this for the duration of a command (workbench.cli.main); everything else is Python.
INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar("workbench_interface", default="python")


def option_hint(name: str, value: object = True) -> str:
    """How the user at hand sets option ``name``: ``--overwrite`` on the command line, else ``overwrite=True``.

    >>> option_hint("overwrite")
    'overwrite=True'
    >>> token = INTERFACE.set("cli")
    >>> option_hint("max_images", 8)
    '--max-images 8'
    >>> INTERFACE.reset(token)
    """
    if INTERFACE.get() == "cli":
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"


def check_int(name: str, value, *, low: int, high: int | None = None, error: type = WorkbenchError) -> int:
    """``value`` if it is an integer (not a bool) in [low, high], else ``error`` naming ``name``.

    >>> check_int("subjects", 4, low=1)
    4
    """
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise error(f"{name} must be {bound}, got {value}")
    return int(value)

