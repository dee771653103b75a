"""View layer: plotly figures and ipywidgets for looking at matches."""
from .compare import VALUE_TITLES, finding_figure, frontier_figure, show_finding, steps_figure, value_figure, values_grid
from .match_browser import MatchBrowser, figure_for, match_images
from .plots import (channel_grid, ecdf_figure, loss_curve, loss_curves, match_figure, max_r_histogram, montage,
                    overlaid_histograms, setup_notebook, store_overview)
from .privacy_report import PrivacyReport, overview_figure
from .reader_study import ReaderStudy, reader_study_app
from .report import AnalysisReport, patient_figure, record
from .volume_viewer import VolumeViewer, slice_profile

__all__ = ["channel_grid", "ecdf_figure", "overlaid_histograms", "store_overview", "figure_for", "loss_curve", "loss_curves", "MatchBrowser", "match_figure",
           "match_images", "max_r_histogram", "montage", "setup_notebook", "ReaderStudy", "reader_study_app",
           "AnalysisReport", "patient_figure", "record", "finding_figure", "show_finding", "steps_figure",
           "value_figure", "values_grid", "VALUE_TITLES", "PrivacyReport", "overview_figure", "frontier_figure",
           "VolumeViewer", "slice_profile"]
from .browse import browse

__all__ += ["browse"]
