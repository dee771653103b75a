"""Progress bars that reach whoever is watching: widgets in Jupyter, plain text under papermill.

Every long loop of the package shows a bar made by :data:`tqdm` from this module (``from
workbench.progress import tqdm``), never by ``tqdm.auto`` directly.  In JupyterLab it *is*
``tqdm.auto.tqdm`` (a widget).  In a notebook executed by papermill (``workbench run``,
``workbench demo``) a widget reaches no one: no browser draws it, and the terminal sees only
papermill's cell counter.  There :func:`workbench.runs.run_notebook` starts the kernel with
``WORKBENCH_PROGRESS=text``, and every bar is a plain-text tqdm on the kernel's stderr, redrawn
at most every :data:`TEXT_INTERVAL` seconds so that logs stay short; ``run_notebook`` forwards
the kernel's stderr to the terminal, and the executed notebook (and its HTML page) keeps the bar's
last line.

>>> from workbench.progress import tqdm
>>> for _ in tqdm(range(3), desc="demo", disable=True):
...     pass
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

#: environment variable that selects the bars: ``text`` (plain text on stderr) or unset (``tqdm.auto``)
ENV = "WORKBENCH_PROGRESS"
#: environment variable with the text bars' minimum seconds between redraws (default :data:`TEXT_INTERVAL`)
INTERVAL_ENV = "WORKBENCH_PROGRESS_INTERVAL"
#: seconds between two redraws of a text bar, at least
TEXT_INTERVAL = 5.0


def text_interval() -> float:
    """Minimum seconds between two redraws of a text bar (``WORKBENCH_PROGRESS_INTERVAL``, or 5)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, TEXT_INTERVAL)))
    except ValueError:
        return TEXT_INTERVAL


class TextTqdm(std_tqdm):
    """A plain-text tqdm on stderr (``tqdm.std``) that redraws at most every :func:`text_interval` s.

    The caller's ``mininterval`` is kept when it is longer; a bar that finishes within its first
    second is never drawn.  Everything else is tqdm's.
    """

    def __init__(self, *args, **kwargs):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0.0), text_interval())
        kwargs.setdefault("maxinterval", max(10.0, kwargs["mininterval"]))
        # a bar done within a second (one of many small searches) is not drawn at all
        kwargs.setdefault("delay", min(1.0, kwargs["mininterval"]))
        kwargs.setdefault("ascii", True)  # logs and terminals without UTF-8 read it too
        super().__init__(*args, **kwargs)

    # a new postfix or description is shown with the next redraw, not at once: loops that set one
    # every iteration would otherwise redraw every iteration
    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc=None, refresh=True):
        super().set_description_str(desc, refresh=False)


def progress_mode() -> str:
    """``"text"`` when this process was started for text bars (``WORKBENCH_PROGRESS=text``), else ``"auto"``."""
    return "text" if os.environ.get(ENV, "").strip().lower() == "text" else "auto"


#: the package's progress bar class: :class:`TextTqdm` under ``WORKBENCH_PROGRESS=text``, else ``tqdm.auto.tqdm``
tqdm = TextTqdm if progress_mode() == "text" else auto_tqdm

__all__ = ["ENV", "INTERVAL_ENV", "TEXT_INTERVAL", "TextTqdm", "progress_mode", "text_interval", "tqdm"]
