"""Every file name of a run folder, in one place: nothing else in the package spells them.

A run folder holds one experiment (see ``DESIGN.md``)::

    runs/<name>/
        run.json                    what the run is: stages, their parameters, where each output lives
        store/                      the prepared SliceStore (or run.json points at one elsewhere)
        model/                      the checkpoint (model.safetensors, config.json, training.json)
        synthetic/                  the synthetic SliceStore the model sampled
        detector/                   the copy detector the analysis trained
        slices/, slice_view/        a 3D run: its volumes cut into axial slices, and their analysis
        memorization.json           the analysis' key figures; written last, so it marks a complete analysis
        copy_analysis.json          thresholds, copy rates, C_T: the analysis summary
        copy_flags.parquet          one row per synthetic image: best matches, similarities, copy flags
        matches_synthetic.parquet   top-k training matches of every synthetic image (pixel r)
        matches_synthetic_subjects.parquet   best match from each of the k most similar subjects
        patients.csv, per_channel.csv        the patient table and the per-channel search
        similarities.npz            every search's similarities (the analysis is recomputed from them)
        marks.csv                   reviewers' marks of matches
        reader_study/               the reader study's plan and each reader's answers
        release/                    what ``workbench release`` wrote
        <notebook>.ipynb / .html    each stage's executed notebook

>>> from workbench.data import layout
>>> layout.MARKS
'marks.csv'
"""
from __future__ import annotations

from pathlib import Path

#: the run's description (versioned: :data:`RUN_VERSION`)
RUN_JSON = "run.json"
#: the version of ``run.json`` this code writes and reads
RUN_VERSION = 1

# outputs of the stages, as folders of the run
STORE = "store"
MODEL = "model"
SYNTHETIC = "synthetic"
DETECTOR = "detector"
PHANTOM = "phantom"
RELEASE = "release"
READER_STUDY = "reader_study"

# the analysis
MEMORIZATION = "memorization.json"
COPY_ANALYSIS = "copy_analysis.json"
COPY_FLAGS = "copy_flags.parquet"
MATCHES = "matches_synthetic.parquet"
SUBJECT_MATCHES = "matches_synthetic_subjects.parquet"
PATIENTS = "patients.csv"
PER_CHANNEL = "per_channel.csv"
SIMILARITIES = "similarities.npz"
#: every file the analysis writes; :data:`MEMORIZATION` last, so its presence means the rest is there
ANALYSIS_FILES = (SIMILARITIES, COPY_ANALYSIS, COPY_FLAGS, MATCHES, SUBJECT_MATCHES, PATIENTS, PER_CHANNEL, MEMORIZATION)

# the slice view of a 3D run (workbench.runs.slice_view)
SLICES = "slices"                 # slices/store/, slices/synthetic/: axial slices of the run's volumes
SLICES_STORE = "store"
SLICES_SYNTHETIC = "synthetic"
SLICE_VIEW = "slice_view"         # slice_view/: the analysis of those slices (the files of ANALYSIS_FILES)

# people's work
MARKS = "marks.csv"
READER_PLAN = "plan.csv"

# the demo
DEMO_RECORD = "demo.json"

# a run's analysis at each saved training checkpoint (memorization against training steps)
STEPS = "steps"                           # steps/step-0000500/: a run of that checkpoint's samples
STEP_TABLE = "memorization_by_step.csv"   # one row per checkpoint analysed

# privacy against utility (workbench.evaluate; one report per run)
UTILITY = "utility.json"          # the utility classifiers' AUROCs on held-out images
UTILITY_DIR = "utility"           # utility/<arm>/: each trained classifier (safetensors + json)
FIDELITY = "fidelity.json"        # FD, KID, PRDC, alpha/beta/authenticity, with the real-vs-real baseline
MEMBERSHIP = "membership.json"    # membership-inference AUROCs against the run's own model
MEMBERSHIP_SCORES = "membership_scores.parquet"  # one row per scored image
PRIVACY = "privacy.json"          # DCR / NNDR of synthetic and held-out images
REPORT_JSON = "report.json"       # every figure side by side (what collect reads)
REPORT_HTML = "report.html"       # the same, for people

# a sweep: a folder of runs (see workbench.runs.sweep)
SWEEP_JSON = "sweep.json"         # the spec, every planned run and its id
SWEEP_SPEC = "sweep.yaml"         # the spec as the user wrote it
SWEEP_LOCK = ".sweep.lock"        # held while a sweep writes into the folder
SWEEP_RUNS = "runs"               # runs/<run id>/: one run folder per combination
SWEEP_DATA = "data"               # data/<prepare id>/: the prepared stores the runs share
RESULTS = "results"               # results.parquet and results.csv: one row per run (and checkpoint)
PER_IMAGE = "per_image.parquet"   # one row per synthetic image of every run (and checkpoint)

#: which output each stage's notebook writes: stage -> (the run's name for it, the notebook parameter naming it)
STAGE_OUTPUTS = {
    "01_prepare_data": ("store", "store"),
    "02_train": ("model", "out"),
    "03_sample": ("synthetic", "out"),
    "04_memorization": ("analysis", "run"),
}

#: how to make what a run lacks, for error messages
HOW_TO_MAKE = {
    "store": "notebooks/01_prepare_data.ipynb (`workbench run 01_prepare_data RUN` or `workbench data prepare`)",
    "model": "notebooks/02_train.ipynb (`workbench run 02_train RUN` or `workbench train`)",
    "synthetic": "notebooks/03_sample.ipynb (`workbench run 03_sample RUN` or `workbench sample`)",
    "analysis": "`workbench analyze RUN` (or notebooks/04_memorization.ipynb)",
}


def notebook_outputs(run, notebook: str) -> tuple[Path, Path]:
    """Where ``workbench run`` writes a stage's executed notebook and its HTML export in ``run``."""
    run = Path(run)
    return run / f"{notebook}.ipynb", run / f"{notebook}.html"


def reader_answers(run, reader: str) -> Path:
    """One reader's answers file in the run's reader study."""
    return Path(run) / READER_STUDY / f"{reader}.csv"
