"""What synthetic images are worth: a classifier trained on them, tested on real patients.

After DuMont Schütte et al. (2021): the same small CNN (:mod:`workbench.models.classifier`) is
trained from scratch three times — on the real images the generative model saw, on the same
number of class-conditional synthetic images (the same count per class), and on both — and each
is tested on the real held-out split (patients neither model saw).  The figure is the AUROC with
a stratified bootstrap interval, and each arm's gap to the real arm with a paired bootstrap
interval (the test images resampled once for both arms).

The task is the manifest's ``label`` column: tumour in the slice for brain MRI, pneumonia vs
normal for chest X-rays.  Label channels (the tumour segmentation) are not given to the
classifier: it would read the answer off them.

Why a loop here and not the shared training loop (:func:`workbench.train.train_model`): that loop
trains a model family on one store view and writes resumable step checkpoints; a utility
classifier trains in seconds to a minute on an in-memory mixture of two stores (real +
synthetic), so each arm is one short loop, saved when done, and a rerun skips the arms already
trained with the same settings (resume is per arm).

>>> result = utility("runs/demo")                       # doctest: +SKIP
>>> result.table()                                      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import layout
from ..data.atomic import atomic_file
from ..data.store import SliceStore, align_channels
from ..errors import WorkbenchError
from .roc import Interval, paired_difference, roc_figure

ARMS = ("real", "synthetic", "real+synthetic")
#: images of each class an arm needs to train on, and the held-out split to test on
MIN_PER_CLASS = 2
HOW_TO_LABEL = ("train a class-conditional model (02_train with conditional=True, or `workbench train "
                "--conditional`) and sample it again (03_sample): its samples then carry the label they were made for")


@dataclass
class UtilityResult:
    """AUROC of each arm on the real held-out images, the gaps to real, and each test image's scores."""

    arms: dict[str, dict]
    gaps: dict[str, Interval]
    scores: pd.DataFrame
    settings: dict = field(default_factory=dict)
    folder: Path | None = None

    def __repr__(self) -> str:
        parts = [f"{arm} {info['auroc']}" for arm, info in self.arms.items()]
        return f"UtilityResult(AUROC on {self.settings.get('n_test')} held-out images: {'; '.join(parts)})"

    def table(self) -> pd.DataFrame:
        """One row per arm: images trained on, AUROC [95 % interval], gap to real [95 % interval]."""
        rows = []
        for arm, info in self.arms.items():
            gap = self.gaps.get(arm)
            rows.append({"trained on": arm, "images": info["n_train"], "per class": info["per_class"],
                         "AUROC": info["auroc"].value, "AUROC 95% low": info["auroc"].low,
                         "AUROC 95% high": info["auroc"].high,
                         "gap to real": None if gap is None else gap.value,
                         "gap 95% interval": None if gap is None else f"[{gap.low:+.3f}, {gap.high:+.3f}]",
                         "seconds": info["seconds"]})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return {"arms": {arm: {**{k: v for k, v in info.items() if k != "auroc"}, "auroc": info["auroc"].as_dict()}
                         for arm, info in self.arms.items()},
                "gaps": {arm: gap.as_dict() for arm, gap in self.gaps.items()},
                "settings": self.settings}

    def extractor(self, arm: str = "real"):
        """The arm's classifier as a feature extractor (the pooled vector before the logit), for
        :func:`workbench.evaluate.fidelity.fidelity`."""
        if self.folder is None or not (self.folder / arm / CLASSIFIER_JSON).is_file():
            raise WorkbenchError(f"utility: no trained {arm!r} classifier saved (folder {self.folder})")
        return ClassifierFeatures(self.folder / arm, device=self.settings.get("device", "cpu"))


CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_JSON = "classifier.json"


class ClassifierFeatures:
    """A saved utility classifier as ``images (N, C, H, W) in [0, 1] -> (N, D)`` features.

    Takes every channel of the store and drops the label channels itself, as in training.
    """

    def __init__(self, folder, *, device="cpu", batch_size: int = 256):
        import torch

        folder = Path(folder)
        self.model, info = load_classifier(folder, device)
        self.positions = list(info["input_positions"])
        self.device, self.batch_size = torch.device(device), int(batch_size)
        self.name = f"utility classifier ({info['arm']} arm, {folder})"
        self.dimension = int(self.model.config.widths[-1])

    def __call__(self, images) -> np.ndarray:
        import torch

        images = np.asarray(images, dtype=np.float32)[:, self.positions]
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[i:i + self.batch_size]).to(self.device)
                out.append(self.model.features(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.dimension))


# -- inputs ------------------------------------------------------------------------------------------
def _labels(view: SliceStore, what: str, *, fix: str) -> np.ndarray:
    manifest = view.manifest
    if "label" not in manifest.columns or manifest["label"].isna().all():
        raise WorkbenchError(f"{view.path}: the {what} carry no class labels (no 'label' column); {fix}")
    if manifest["label"].isna().any():
        raise WorkbenchError(f"{view.path}: {int(manifest['label'].isna().sum())} of the {what} have no label; {fix}")
    return manifest["label"].to_numpy().astype(np.int64)


def _check_classes(labels: np.ndarray, view: SliceStore, what: str, *, fix: str) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    have = ", ".join(f"{int(c)}: {int(n)}" for c, n in zip(classes, counts))
    if len(classes) != 2:
        raise WorkbenchError(f"{view.path}: the {what} hold {'one class' if len(classes) == 1 else f'{len(classes)} classes'} "
                             f"({have}); utility is a two-class AUROC and needs both classes; {fix}")
    if counts.min() < MIN_PER_CLASS:
        raise WorkbenchError(f"{view.path}: the {what} hold {have} images per class; utility needs at least "
                             f"{MIN_PER_CLASS} of each; {fix}")


def _subset_like(labels_real: np.ndarray, labels_syn: np.ndarray, view: SliceStore, rng) -> np.ndarray:
    """Positions of synthetic images with the real set's count of each class (seeded)."""
    picks = []
    for c in np.unique(labels_real):
        need = int((labels_real == c).sum())
        have = np.flatnonzero(labels_syn == c)
        if len(have) < need:
            raise WorkbenchError(
                f"{view.path}: utility trains on as many synthetic images of each class as real ones "
                f"({need} of class {int(c)}), but the run has {len(have)}; sample more (03_sample n=..., the "
                f"classes are made in turn) or pass n= to use fewer real images")
        picks.append(rng.choice(have, need, replace=False))
    return np.sort(np.concatenate(picks))


def default_flips(store: SliceStore) -> bool:
    """Left-right flips suit axial brain slices, not chest radiographs (the heart is on one side):
    off where the store records a radiograph modality (``prepare_xray_store`` does)."""
    return "radiograph" not in str(store.meta.get("modality", "")).lower()


def load_classifier(folder, device="cpu"):
    """A saved utility classifier ``(model, info)`` from its folder (safetensors + JSON; nothing unpickled)."""
    from safetensors.torch import load_file

    from ..models.classifier import Classifier, ClassifierConfig

    folder = Path(folder)
    info = json.loads((folder / CLASSIFIER_JSON).read_text())
    model = Classifier(ClassifierConfig.from_json(json.dumps(info["config"])))
    model.load_state_dict(load_file(str(folder / CLASSIFIER_WEIGHTS)))
    return model.to(device).eval(), info


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- one classifier -------------------------------------------------------------------------------------
def train_classifier(images: np.ndarray, labels: np.ndarray, *, steps: int = 300, batch_size: int = 32,
                     lr: float = 1e-3, weight_decay: float = 1e-2, seed: int = 0, flips: bool = False,
                     bf16: bool | str = "auto", device=None, progress: bool = True, desc: str = "classifier"):
    """Train a :class:`~workbench.models.classifier.Classifier` from scratch on ``images`` (N, C, H, W)
    in [0, 1] with 0/1 ``labels``; returns ``(model, info)``.

    AdamW with a cosine decay, binary cross-entropy weighted by the class ratio (so an unbalanced
    set does not train a constant), batches drawn with a seeded generator, optional left-right
    flips (brain slices; not chest X-rays, whose heart is on one side).
    """
    import torch

    from ..device import describe, resolve_device, use_bf16
    from ..models.classifier import Classifier, ClassifierConfig
    from ..progress import tqdm

    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    device = resolve_device(device)
    requested, bf16 = bf16, use_bf16(bf16, device)
    torch.manual_seed(seed)
    model = Classifier(ClassifierConfig(channels=images.shape[1], image_size=images.shape[-1])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    n_pos = float(labels.sum())
    pos_weight = torch.tensor((len(labels) - n_pos) / max(n_pos, 1.0), device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    rng = np.random.default_rng(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    batch = min(batch_size, len(images))
    losses, t0 = [], time.time()
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = torch.from_numpy(rng.choice(len(images), batch, replace=False))
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        if flips:
            flip = torch.from_numpy(rng.random(batch) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
    model.eval()
    info = {"steps": steps, "batch_size": batch, "lr": lr, "weight_decay": weight_decay, "seed": seed,
            "flips": flips, "n_train": len(images), "per_class": {int(c): int((labels == c).sum()) for c in (0, 1)},
            "precision": describe(requested, bf16, device), "final_loss": float(np.mean(losses[-20:])),
            "seconds": round(time.time() - t0, 2), "config": json.loads(model.config.to_json())}
    return model, info


def classifier_scores(model, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on ``images`` (float64, one per image)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32))
                             .to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _save(folder: Path, model, info: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / CLASSIFIER_WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_file(folder / CLASSIFIER_JSON) as tmp:  # last: its presence means the arm is complete
        tmp.write_text(json.dumps(info, indent=1))


def _load(folder: Path, digest: str, device):
    """The arm's classifier saved with the same settings and images, or None."""
    try:
        saved = json.loads((folder / CLASSIFIER_JSON).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("digest") != digest or not (folder / CLASSIFIER_WEIGHTS).is_file():
        return None
    return load_classifier(folder, device)


# -- the evaluation ---------------------------------------------------------------------------------
def utility(run, *, arms=ARMS, n: int | None = None, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
            flips: bool | None = None, seed: int = 0, n_boot: int = 1000, real: SliceStore | None = None,
            synthetic: SliceStore | None = None, test: SliceStore | None = None, folder=None,
            bf16: bool | str = "auto", device=None, progress: bool = True, save: bool = True) -> UtilityResult:
    """Train the utility classifier on real, synthetic and real + synthetic images of a run, test
    each on its real held-out images, and save the result in the run (``utility.json``).

    Parameters
    ----------
    run : an open run (:func:`workbench.open_run`; :func:`workbench.utility` takes a folder too) with
        a model (the images it saw are the real arm) and class-conditional samples; None when
        ``real``, ``synthetic``, ``test`` and ``folder`` are all given.
    arms : which of ``"real"``, ``"synthetic"``, ``"real+synthetic"`` to train ("real" is always
        trained: the gaps are measured to it).
    n : use this many real training images (a seeded subset keeping both classes); default all.
    steps, batch_size, lr : the classifier's training (AdamW, cosine decay); the same for every arm.
    flips : left-right flip augmentation; default on for brain MRI, off for chest X-rays.
    seed : seeds the subsets, the weights and the batches (recorded).
    n_boot : bootstrap resamples of the test images for the intervals.
    real, synthetic, test : stores to use instead of the run's (the controls in the tests do:
        held-out images standing in as "samples").
    folder : where the trained classifiers go (default ``RUN/utility/``); an arm already trained
        there with the same settings and images is loaded, not trained again.
    bf16 : bfloat16 autocast by the precision rule (``"auto"``: where measured faster here).

    Everything the evaluation needs is checked before any training: the samples carry labels
    (a conditional model), every set holds both classes, and there are enough synthetic images of
    each class.
    """
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise WorkbenchError(f"utility: unknown arm(s) {unknown}; choose among {list(ARMS)}")
    arms = ["real"] + [a for a in ARMS if a in arms and a != "real"]
    for name, value in (("steps", steps), ("batch_size", batch_size), ("n_boot", n_boot)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "n_boot" else 1):
            raise WorkbenchError(f"utility: {name} must be a positive integer, got {value!r}")
    real = real if real is not None else run.train
    test = test if test is not None else run.test
    wants_synthetic = any(a != "real" for a in arms)
    synthetic = synthetic if synthetic is not None or not wants_synthetic else run.synthetic
    if folder is None and run is None:
        raise WorkbenchError("utility: give a run, or a folder for the classifiers")
    folder = Path(folder) if folder is not None else Path(run.path) / layout.UTILITY_DIR

    # -- every check before any training --------------------------------------------------------
    fix_real = "prepare the store with labels (01_prepare_data) and train on a split that has both classes"
    y_real = _labels(real, "real training images", fix=fix_real)
    rng = np.random.default_rng(seed)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2 * MIN_PER_CLASS:
            raise WorkbenchError(f"utility: n must be an integer >= {2 * MIN_PER_CLASS}, got {n!r}")
        if n < len(real):
            keep = np.sort(rng.choice(len(real), int(n), replace=False))
            real, y_real = real.take(keep), y_real[keep]
    _check_classes(y_real, real, "real training images", fix=fix_real)
    y_test = _labels(test, "held-out images", fix=fix_real)
    _check_classes(y_test, test, "held-out images", fix="hold out more subjects (01_prepare_data n_test)")
    test = align_channels(test, real, what="held-out images")
    inputs = [c for c in real.channels if c not in set(real.label_channels)]
    if not inputs:
        raise WorkbenchError(f"{real.path}: every channel is a label map ({real.channels}); the classifier needs an image channel")
    positions = [real.channels.index(c) for c in inputs]
    if flips is None:
        flips = default_flips(real)
    syn_rows = None
    if wants_synthetic:
        synthetic = align_channels(synthetic, real, what="synthetic images")
        if tuple(synthetic.image_shape) != tuple(real.image_shape):
            raise WorkbenchError(f"{synthetic.path}: images are {tuple(synthetic.image_shape)} but the real training "
                                 f"images are {tuple(real.image_shape)}")
        y_syn_all = _labels(synthetic, "synthetic images", fix=HOW_TO_LABEL)
        _check_classes(y_syn_all, synthetic, "synthetic images", fix=HOW_TO_LABEL)
        syn_rows = _subset_like(y_real, y_syn_all, synthetic, rng)

    # -- the arms ---------------------------------------------------------------------------------
    x_real = real.read(np.arange(len(real)))[:, positions]
    x_test = test.read(np.arange(len(test)))[:, positions]
    data = {"real": (x_real, y_real)}
    if syn_rows is not None:
        x_syn = synthetic.read(syn_rows)[:, positions]
        y_syn = y_syn_all[syn_rows]
        data["synthetic"] = (x_syn, y_syn)
        data["real+synthetic"] = (np.concatenate([x_real, x_syn]), np.concatenate([y_real, y_syn]))
    training = {"steps": steps, "batch_size": batch_size, "lr": lr, "flips": bool(flips), "seed": seed,
                "bf16": str(bf16)}
    sources = {"real": [str(real.path), real.manifest.index.tolist()],
               "synthetic": None if syn_rows is None else [str(synthetic.path), synthetic.manifest.index[syn_rows].tolist()]}
    from ..device import resolve_device

    device = resolve_device(device)
    results, scores = {}, {}
    for i, arm in enumerate(arms):
        x, y = data[arm]
        digest = _digest({"arm": arm, "training": training, "real": sources["real"],
                          "synthetic": sources["synthetic"] if arm != "real" else None, "inputs": inputs})
        loaded = _load(folder / arm, digest, device)
        if loaded is None:
            model, info = train_classifier(x, y, steps=steps, batch_size=batch_size, lr=lr, seed=seed + i,
                                           flips=bool(flips), bf16=bf16, device=device, progress=progress,
                                           desc=f"utility: {arm}")
            info.update({"arm": arm, "digest": digest, "input_channels": inputs, "input_positions": positions})
            if save:
                _save(folder / arm, model, info)
        else:
            model, info = loaded
            if progress:
                print(f"utility: {arm} classifier already trained in {folder / arm}, loaded")
        s = classifier_scores(model, x_test)
        scores[arm] = s
        results[arm] = {"auroc": roc_figure(s, y_test, n_boot=n_boot, seed=seed), "n_train": int(len(y)),
                        "per_class": {str(k): v for k, v in info["per_class"].items()},
                        "seconds": info["seconds"], "precision": info["precision"], "final_loss": info["final_loss"]}
    gaps = {arm: paired_difference(scores[arm], scores["real"], y_test, n_boot=n_boot, seed=seed)
            for arm in arms if arm != "real"}
    table = test.manifest[[c for c in ("subject", "z", "label") if c in test.manifest.columns]].copy()
    for arm, s in scores.items():
        table[f"score {arm}"] = s
    settings = {**training, "n_test": int(len(test)), "n_boot": n_boot, "input_channels": inputs,
                "real": str(real.path), "test": str(test.path),
                "synthetic": None if synthetic is None else str(synthetic.path), "device": str(device),
                "task": "label column (tumour in slice / pneumonia vs normal); label channels not given"}
    result = UtilityResult(results, gaps, table.reset_index(), settings, folder)
    if save:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file((Path(run.path) if run is not None else folder) / layout.UTILITY) as tmp:
            tmp.write_text(json.dumps(result.as_dict(), indent=1))
    return result
