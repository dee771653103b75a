"""Orchestration: run notebooks through papermill into run folders; the demo."""
from .app import prepare_app, serve_app
from .demo import DEMO, demo_stages, run_demo
from .notebook import check_parameters, describe_notebooks, export_html, find_notebook, notebook_parameters, run_notebook

__all__ = ["DEMO", "check_parameters", "demo_stages", "describe_notebooks", "export_html", "find_notebook",
           "notebook_parameters", "prepare_app", "run_demo", "run_notebook", "serve_app"]
