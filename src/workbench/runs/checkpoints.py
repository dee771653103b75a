"""Memorization against training steps, from one training: every saved checkpoint analysed.

Dar et al. found that over-training raises memorization.  Retraining for each length would cost
the sum of all lengths; instead, a run trained with ``keep_checkpoints=None`` (02_train keeps
every ``checkpoint_every`` snapshot) is sampled at each snapshot with the run's own sampling
settings, and each set of samples is analysed against the same training and held-out images,
with the run's copy detector.  Each snapshot becomes a small run folder of its own::

    RUN/steps/step-0000250/   run.json (its model is RUN/model/checkpoints/step-0000250),
                              synthetic/, and the analysis files: a Run like any other
    RUN/memorization_by_step.csv   one row per step (the final model included)

A snapshot already analysed with the same settings is skipped, so a rerun continues.

>>> table = analyze_checkpoints("runs/findings/runs/<id>")          # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from ..data import layout
from ..data.atomic import atomic_file
from ..errors import WorkbenchError
from .run import open_run, read_record, record_stage

#: the sampling parameters taken from the run's 03_sample stage
SAMPLING = ("n", "steps", "sampler", "eta", "labels", "truncation_psi", "seed", "batch_size", "ema", "bf16")


def checkpoint_steps(run) -> dict[int, Path]:
    """The run's saved snapshots and its final model: {training step: folder}."""
    from ..models.checkpoint import read_training_info
    from ..train.loop import CHECKPOINTS

    run = open_run(run)
    model = run.checkpoint
    found = {}
    for folder in sorted((model / CHECKPOINTS).glob("step-*")):
        try:
            found[int(folder.name.split("-")[1])] = folder
        except (IndexError, ValueError):
            continue
    found[int(read_training_info(model)["steps_done"])] = model
    return dict(sorted(found.items()))


def step_folder(run, step: int) -> Path:
    return Path(run) / layout.STEPS / f"step-{int(step):07d}"


def analyze_checkpoints(run, *, steps=None, detector="run", progress: bool = True, **analysis) -> pd.DataFrame:
    """Sample and analyse each saved checkpoint of ``run``; returns (and saves) one row per step.

    steps : which training steps (default: every snapshot saved, and the final model).
    detector : ``"run"`` (the detector the run's analysis trained, else none), a folder, or None.
    analysis : passed to :func:`workbench.analyze` (``bootstrap``, ``seed``, ``rule``, ...);
        the default is the run's own analysis settings.
    """
    from ..sample import sample_model
    from .analyze import analyze

    run = open_run(run)
    available = checkpoint_steps(run)
    wanted = sorted(available) if steps is None else sorted(int(s) for s in steps)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise WorkbenchError(f"{run.checkpoint}: no checkpoint at step(s) {missing}; it has {sorted(available)} "
                             f"(train with keep_checkpoints=None to keep every checkpoint_every snapshot)")
    sampling = {key: value for key, value in run.parameters.get("03_sample", {}).items() if key in SAMPLING}
    settings = {key: value for key, value in run.record.get("stages", {}).get("analyze", {}).get(
        "parameters", {}).items() if key in ("rule", "quantile", "k", "bootstrap", "seed", "embedding_metric",
                                             "device", "per_channel", "data_copying_cells")}
    settings.update(analysis)
    if detector == "run":
        folder = run.path / layout.DETECTOR
        detector = str(folder) if (folder / "config.json").is_file() else None
    final = max(available)
    rows = []
    for step in wanted:
        started = time.time()
        if step == final and run.has("analysis") and run.has("synthetic"):
            where = run.path  # the run's own analysis is the final step's
        else:
            where = step_folder(run.path, step)
            done = read_record(where).get("checkpoint_analysis") if (where / layout.MEMORIZATION).is_file() else None
            wanted_settings = {"sampling": sampling, "analysis": settings, "detector": detector,
                               "checkpoint": str(available[step])}
            if done != json.loads(json.dumps(wanted_settings, default=str)):
                if progress:
                    print(f"step {step}: sampling {sampling.get('n', 64)} images from {available[step]}", flush=True)
                sample_model(available[step], where / layout.SYNTHETIC, overwrite=True, progress=progress,
                             **sampling)
                record_stage(where, "03_sample", {**sampling, "checkpoint": str(available[step])},
                             seconds=time.time() - started,
                             outputs={"model": available[step], "synthetic": where / layout.SYNTHETIC})
                analyze(where, detector=detector, progress=progress, **settings)
                from .run import update_record

                update_record(where, checkpoint_analysis=wanted_settings)
        summary = json.loads((where / layout.COPY_ANALYSIS).read_text())
        rows.append({"checkpoint_step": step, "folder": str(where), **flat_values(summary)})
    table = pd.DataFrame(rows)
    with atomic_file(run.path / layout.STEP_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    if progress:
        print(f"wrote {run.path / layout.STEP_TABLE} ({len(table)} checkpoints: steps {wanted})")
    return table


def flat_values(summary: dict) -> dict:
    """The recorded values of one analysis (``copy_analysis.json``) as flat columns.

    For each similarity (``pixel``, ``embedding``) under its flagging rule: the threshold, the
    share of synthetic images that are copies, of training images and subjects memorized (Dar et
    al.), each with its bootstrap interval; Akbar et al.'s median highest r of synthetic and of
    held-out images; Meehan et al.'s C_T.
    """
    out = {}
    memo = summary.get("memorization", {})
    for key in ("synthetic_max_r_median", "test_max_r_median", "test_max_r_max", "synthetic_above_test_max",
                "n_train"):
        if key in memo:
            out[key] = memo[key]
    from ..memorization.analysis import KEYS

    for long_name, name in KEYS.items():
        block = summary.get(long_name)
        if not isinstance(block, dict):
            continue
        rule = block.get("flag_rule")
        rates = block.get(rule) or {}
        threshold = rates.get("threshold", {})
        out[f"{name}_rule"] = rule
        out[f"{name}_threshold"] = threshold.get("value")
        for figure, value in rates.items():
            if isinstance(value, dict) and "value" in value and figure.endswith("fraction"):
                out[f"{name}_{figure}"] = value["value"]
                for side in ("low", "high"):
                    if side in value:
                        out[f"{name}_{figure}_{side}"] = value[side]
        out[f"{name}_synthetic_max_median"] = block.get("synthetic_to_train_median")
        out[f"{name}_test_max_median"] = block.get("test_to_train_median")
    dc = summary.get("data_copying") or {}
    out["c_t"] = dc.get("c_t")
    out["copies_flagged"] = summary.get("flagged")
    return out
