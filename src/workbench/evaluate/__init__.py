"""Evaluation beyond memorization (analysis layer): the blind reader study."""
from .reader_study import AnswerLog, load_answers, load_plan, plan_study, save_plan, summarize

__all__ = ["AnswerLog", "load_answers", "load_plan", "plan_study", "save_plan", "summarize"]
