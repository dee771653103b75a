"""Orchestration: run notebooks through papermill into run folders; the demo."""
from .app import prepare_app, serve_app
from .demo import DEMO, demo_stages, run_demo
from .notebook import export_html, find_notebook, run_notebook

__all__ = ["DEMO", "demo_stages", "export_html", "find_notebook", "prepare_app", "run_demo", "run_notebook", "serve_app"]
