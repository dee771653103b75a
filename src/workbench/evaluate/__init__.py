"""Evaluation beyond the search (analysis layer): reviewers' marks of matches and the blind reader study."""
from .marks import MarkLog
from .reader_study import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize

__all__ = ["AnswerLog", "MarkLog", "load_answers", "load_plan", "plan_study", "save_plan", "summarize"]
