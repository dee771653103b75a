"""One call to browse a run's matches, whatever its images: slices or volumes.

A run of 2D slices opens the :class:`~workbench.widgets.match_browser.MatchBrowser` (Akbar et
al.'s figure, one synthetic slice at a time); a run of 3D volumes opens the
:class:`~workbench.widgets.volume_viewer.VolumeViewer` (each synthetic volume beside its
best-matching training volume in three linked planes), with the same marks file.

>>> browse("runs/vol3d", reviewer="dr-a")          # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

from ..errors import WorkbenchError
from ..memorization.run_results import load_run_matches
from .match_browser import MatchBrowser, message_widget
from .volume_viewer import VolumeViewer


def browse(run, *, reviewer: str = "reviewer", channel=None):
    """The browser of a run folder (or :class:`~workbench.runs.run.Run`): MatchBrowser for slices,
    VolumeViewer for volumes.  Anything missing is shown as a message that says how to make it."""
    folder = Path(run)
    try:
        matches = load_run_matches(folder)
    except WorkbenchError:
        return MatchBrowser(folder, reviewer=reviewer, channel=channel)  # it shows what is missing, and how to fix it
    if not matches.synthetic.is_volume:
        return MatchBrowser(folder, reviewer=reviewer, channel=channel)
    best = matches.best.sort_values("synthetic")
    if len(best) != len(matches.synthetic):
        return message_widget("3D match viewer", f"{folder}: the saved matches cover {len(best)} of "
                                                 f"{len(matches.synthetic)} synthetic volumes; analyse the run again")
    return VolumeViewer(matches.synthetic, matches.train, matches=(best["match_row"].to_numpy(), best["r"].to_numpy()),
                        run=folder, reviewer=reviewer, channel=channel)
