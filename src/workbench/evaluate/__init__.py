"""Evaluation beyond the search (analysis layer): reviewers' marks of matches, the blind reader study,
and the privacy-against-utility figures of a run — utility (:mod:`.utility`), fidelity and diversity
(:mod:`.fidelity`), membership inference (:mod:`.membership`), DCR / NNDR (:mod:`.distances`),
with the ROC figures they share (:mod:`.roc`).

These take an open run (``workbench.open_run``) or stores; ``workbench.privacy_report(folder)``
runs them all on a run folder and writes its report (``workbench.runs.evaluate``).
"""
from .distances import dcr_nndr, distances
from .fidelity import fidelity, fidelity_metrics
from .marks import MarkLog
from .membership import membership
from .reader_study import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize
from .utility import utility

__all__ = ["AnswerLog", "MarkLog", "dcr_nndr", "distances", "fidelity", "fidelity_metrics", "load_answers",
           "load_plan", "membership", "plan_study", "save_plan", "summarize", "utility"]
