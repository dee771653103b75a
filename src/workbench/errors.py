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
