"""Membership inference against the user's own generative model: is a training image at risk even
if no sample copies it?

The copy search (:mod:`workbench.memorization`) asks whether *samples* reproduce training images.
A model can leak less visibly: it may fit its training images so much better than other images
of the same kind that an attacker holding a patient's slice can tell it was used for training.
:func:`membership` measures that with the model itself (a white-box attack: the weights are
yours), on the images it saw (``members``, by default ``run.train``) against images of patients
it never saw (``nonmembers``, by default ``run.test``), and reports how well the two are told
apart: AUROC and the true-positive rate at 1 % false positives, each with a stratified
bootstrap interval (:mod:`.roc`), and a per-patient table of the training patients most at risk.

Methods
-------
``"loss"`` (diffusion: DDPM, LDM)
    The model's own training loss on each image, the loss-threshold attack (Yeom et al. 2018;
    for diffusion models Matsumoto et al. 2023, Carlini et al. 2023): noise the image to a few
    fixed timesteps, ask the network for its training target (noise for ``epsilon`` models,
    ``v`` for ``v_prediction``, the clean image for ``sample``, as the config says) and take the
    mean squared error, averaged over the timesteps and ``repeats`` noise draws.  Score =
    ``-error`` (higher = more likely a member).  The noise draws are seeded by ``seed`` and are the
    *same for every image* (common random numbers): images differ in their score because the model
    fits them differently, not because one drew easier noise; and an image's score does not depend
    on the batch or the order it is scored in.
``"secmi"`` (diffusion)
    SecMI's t-error (Duan et al. 2023, "Are diffusion models vulnerable to membership inference
    attacks?", the statistic of SecMI-stat): the image is inverted deterministically with DDIM
    (eta 0) from timestep 0 to ``t = secmi_t`` in steps of ``secmi_interval``, giving
    ``x_t``; one deterministic DDIM denoising step ``t -> t - interval`` and one inversion step
    back ``t - interval -> t`` give ``x̂_t``; the t-error is the mean of ``(x_t - x̂_t)**2``.
    Score = ``-t-error``.  Defaults are the paper's ``t = 100``, interval 10 of 1000 training
    timesteps, scaled to the model's ``num_train_timesteps``.  (The authors' released code takes
    the posterior-estimation round trip the other way, inverting ``t - interval -> t`` and
    denoising back; the paper's definition, used here, starts from ``x_t``.)  The error is averaged
    over pixels rather than summed, which changes no ranking.  Nothing random is drawn.
    Lower t-error marks a member in models that generalize (the paper's CIFAR models); a tiny model
    that memorized a handful of images can show the reverse (members with the *higher* t-error,
    AUROC well below 0.5, seen in this package's tests), so read an AUROC interval below 0.5 as
    a leak in the other direction (the summary says so), and trust the ``"loss"`` figure first.
``"discriminator"`` (GAN)
    The discriminator's logit on the image (with its label for a class-conditional GAN): a
    discriminator that memorized its training images calls them more "real" than unseen ones.
    This is an *analogue* for GANs, not the same attack: it reads the network that judges images,
    not the one that makes them, and no score of it is a denoising error.  The minibatch
    standard-deviation layer of the discriminator mixes the images of a group; so that an image's
    score does not depend on the batch it is in, every image is scored in a group with the same
    ``mbstd_group_size - 1`` companion images (drawn once, by ``seed``, from the images scored).

Diffusion models are attacked through the network that sampling uses: the EMA copy when the
checkpoint has one (``ema=True``), else the trained UNet; the result records which.  A latent
diffusion model is attacked in its latent space: each image is encoded to the posterior mean of
its autoencoder, multiplied by the checkpoint's latent scale factor (the latents the latent UNet
was trained on), and both methods run on those latents.  A class-conditional model gets each
image's label from the manifest's ``label`` column.

What is comparable: AUROC and TPR at 1 % FPR measure *attack success* on the same member and
non-member sets, so they compare across methods, models and families (a higher AUROC: the
training images are easier to single out).  The raw scores are not comparable across methods,
models or families: a denoising error, a t-error and a discriminator logit are different
statistics (and an LDM's errors are in latent space).

>>> import workbench
>>> from workbench.evaluate.membership import membership
>>> run = workbench.open_run("runs/demo")                                   # doctest: +SKIP
>>> result = membership(run, n_boot=1000, seed=0)                           # doctest: +SKIP
>>> result.summary()["loss"]["auroc"]                                       # doctest: +SKIP
{'value': 0.97, 'low': 0.91, 'high': 1.0, 'n_boot': 1000}
>>> result.subjects(method="loss").head()                                   # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.store import SliceStore
from ..errors import WorkbenchError
from .roc import Interval, bootstrap, roc_figure, tpr_at_fpr

#: the methods each kind of model family has, the family's default first
METHODS = {"diffusion": ("loss", "secmi"), "gan": ("discriminator",)}
#: what each method's score is, for the summary
COMPARES = {"loss": "denoising loss", "secmi": "SecMI t-error", "discriminator": "discriminator score"}
#: default timesteps of the loss attack, as fractions of the training schedule (50, 100, 200, 300 of 1000):
#: the first third, where the loss separates members best (Carlini et al. 2023, fig. 13; Matsumoto et al. 2023)
LOSS_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
#: SecMI's timestep and step, as fractions of the training schedule (100 and 10 of 1000, Duan et al. 2023)
SECMI_T, SECMI_INTERVAL = 0.1, 0.01
#: the false-positive rate of the reported true-positive rate
FPR = 0.01

COMPARABLE = ("AUROC and TPR at 1 % FPR measure attack success on these member and non-member sets: they "
              "compare across methods, models and families. The raw scores do not: a denoising error, a "
              "SecMI t-error and a discriminator logit are different statistics.")
NOTES = {
    "loss": "the model's own training loss (its {target} target) at fixed timesteps; score = -error",
    "secmi": "SecMI-stat t-error (Duan et al. 2023) after deterministic DDIM inversion; score = -t-error",
    "discriminator": ("an analogue for GANs, not the same attack as the diffusion methods: the discriminator's "
                      "logit, read from the network that judges images, not the generator that makes them"),
}


# -- the result ------------------------------------------------------------------------------------
@dataclass
class MembershipResult:
    """Per-image membership scores of one model, and what they show.

    Attributes
    ----------
    scores : one row per image: ``set`` (``"member"`` / ``"nonmember"``), ``subject``, ``z``,
        ``label``, ``row`` (the image's row in its store), ``seen`` (whether the checkpoint's
        training rows hold it) and one score column per method (higher = more likely a member).
    methods : the methods run, in order.
    family : the model family (``"ddpm"``, ``"ldm"``, ``"gan"``).
    settings : everything the scores depend on (checkpoint, network, timesteps, repeats, SecMI
        settings, seed, precision, device, stores), JSON-safe.
    """

    scores: pd.DataFrame
    methods: tuple[str, ...]
    family: str
    settings: dict = field(default_factory=dict)
    n_boot: int = 1000
    seed: int = 0
    _figures: dict = field(default_factory=dict, repr=False, compare=False)  # intervals, computed once

    def __repr__(self) -> str:
        n_m, n_n = self.n_members, self.n_nonmembers
        return (f"MembershipResult({self.family}, methods={list(self.methods)}, {n_m} members, "
                f"{n_n} non-members)")

    @property
    def n_members(self) -> int:
        return int((self.scores["set"] == "member").sum())

    @property
    def n_nonmembers(self) -> int:
        return int((self.scores["set"] == "nonmember").sum())

    def _method(self, method: str | None) -> str:
        if method is None:
            return self.methods[0]
        if method not in self.methods:
            raise WorkbenchError(f"membership: this result has no {method!r} scores; it has {list(self.methods)}")
        return method

    def _labels(self) -> np.ndarray:
        return (self.scores["set"] == "member").to_numpy()

    def auroc(self, method: str | None = None) -> Interval:
        """AUROC of ``method`` (default: the first) with its stratified bootstrap 95 % interval."""
        method = self._method(method)
        key = ("auroc", method)
        if key not in self._figures:
            self._figures[key] = roc_figure(self.scores[method].to_numpy(), self._labels(), n_boot=self.n_boot,
                                            seed=self.seed)
        return self._figures[key]

    def tpr_at_1pct_fpr(self, method: str | None = None) -> Interval:
        """True-positive rate at 1 % false positives of ``method``, with its bootstrap 95 % interval."""
        method = self._method(method)
        key = ("tpr", method)
        if key not in self._figures:
            self._figures[key] = bootstrap(lambda s, y: tpr_at_fpr(s, y, FPR), self.scores[method].to_numpy(),
                                           self._labels(), n_boot=self.n_boot, seed=self.seed)
        return self._figures[key]

    def summary(self) -> dict:
        """``{method: {...}}``, JSON-safe: AUROC and TPR at 1 % FPR with their intervals, the set sizes,
        what the score is and what it can be compared with."""
        out = {}
        s = self.settings
        for method in self.methods:
            note = NOTES[method].format(target=s.get("prediction_type"))
            entry = {
                "auroc": self.auroc(method).as_dict(),
                "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr(method).as_dict(),
                "n_members": self.n_members,
                "n_nonmembers": self.n_nonmembers,
                "n_members_seen": int(self.scores.loc[self.scores["set"] == "member", "seen"].sum()),
                "family": self.family,
                "compares": COMPARES[method],
                "score": note,
                "comparable": COMPARABLE,
                "precision": s.get("precision"),
                "network": s.get("network"),
                "seed": int(self.seed),
                "timesteps": None,
            }
            if method == "loss":
                entry["timesteps"] = list(s["timesteps"])
                entry["repeats"] = int(s["repeats"])
            elif method == "secmi":
                entry["timesteps"] = list(s["secmi_path"])
                entry["secmi_t"], entry["secmi_interval"] = int(s["secmi_t"]), int(s["secmi_interval"])
            auc = entry["auroc"]
            if auc["high"] < 0.5:
                entry["direction_note"] = (
                    f"the members score lower than the non-members (AUROC {auc['value']:.3f}, interval below 0.5): "
                    f"the statistic separates the sets in the reverse direction. That is still a leak: an attacker "
                    f"who knows the direction reaches AUROC {1 - auc['value']:.3f}")
            if self.n_nonmembers < 1 / FPR:
                entry["tpr_note"] = (f"with {self.n_nonmembers} non-members the lowest false-positive rate above "
                                     f"zero is {1 / self.n_nonmembers:.3f} > {FPR}: the figure is the true-positive "
                                     f"rate at zero false positives")
            out[method] = entry
        return out

    def subjects(self, method: str | None = None, *, quantile: float = 0.99) -> pd.DataFrame:
        """The training patients most at risk: one row per member subject, most at risk first.

        Columns: ``n_images``, ``mean_score``, ``max_score``, ``frac_above`` (the fraction of the
        subject's images that score above the ``quantile`` of the non-members' scores: images an
        attacker with that threshold, at about ``1 - quantile`` false positives, would call
        members).  Sorted by ``frac_above``, then ``mean_score``, both descending.  The threshold
        and the quantile are in ``.attrs``.
        """
        method = self._method(method)
        if not 0 < quantile < 1:
            raise WorkbenchError(f"subjects: quantile must be between 0 and 1 (e.g. 0.99 or 0.95), got {quantile!r}")
        df = self.scores
        threshold = float(np.quantile(df.loc[df["set"] == "nonmember", method].to_numpy(), quantile))
        members = df[df["set"] == "member"].assign(
            _above=lambda d: d[method] > threshold,
            subject=lambda d: d["subject"].fillna("(no subject)").astype(str))
        table = members.groupby("subject").agg(n_images=(method, "size"), mean_score=(method, "mean"),
                                               max_score=(method, "max"), frac_above=("_above", "mean"))
        table = table.sort_values(["frac_above", "mean_score"], ascending=False)
        table.attrs.update(method=method, quantile=float(quantile), threshold=threshold)
        return table


# -- inputs -------------------------------------------------------------------------------------------
def _resolve_run(run):
    """``(checkpoint path, members thunk, nonmembers thunk)`` of a Run, a checkpoint folder or a run folder."""
    from ..data import layout
    from ..models.checkpoint import CONFIG

    if all(hasattr(type(run), name) for name in ("checkpoint", "train", "test")):  # a workbench Run
        return Path(run.checkpoint), (lambda: run.train), (lambda: run.test)  # a run without a model says so
    if isinstance(run, SliceStore):
        raise WorkbenchError(f"membership: {run.path} is a SliceStore; give the run (workbench.open_run(folder)) "
                             f"or the model's checkpoint folder, and the images as members= / nonmembers=")
    if not isinstance(run, (str, os.PathLike)):
        raise WorkbenchError(f"membership: expected a run (workbench.open_run(folder)) or a checkpoint folder, "
                             f"got {type(run).__name__}")
    path = Path(run)
    if not (path / CONFIG).is_file() and (path / layout.MODEL / CONFIG).is_file():
        path = path / layout.MODEL  # a run folder in the conventional layout
    if not (path / CONFIG).is_file():
        raise WorkbenchError(f"membership: {path} is neither a checkpoint folder (no {CONFIG}) nor a run folder with "
                             f"a {layout.MODEL}/ checkpoint; give workbench.open_run(folder) or the checkpoint folder")

    def members():
        from ..train.loop import training_view

        return training_view(path)

    def nonmembers():
        return SliceStore.open(members().path).where(split="test")

    return path, members, nonmembers


def _check_methods(methods) -> tuple[str, ...] | None:
    if methods is None:
        return None
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    known = sorted({m for ms in METHODS.values() for m in ms})
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        what = f"unknown method(s) {unknown}" if unknown else "no methods given"
        raise WorkbenchError(f"membership: {what}; the methods are {known} ({', '.join(METHODS['diffusion'])} for "
                             f"diffusion models, discriminator for GANs)")
    if len(set(methods)) != len(methods):
        raise WorkbenchError(f"membership: methods {list(methods)} name one twice")
    return methods


def _check_set(images, name: str, config, checkpoint: Path) -> SliceStore:
    if not isinstance(images, SliceStore):
        raise WorkbenchError(f"membership: {name} must be a SliceStore (or a view of one, e.g. "
                             f"store.where(split='test')), got {type(images).__name__}")
    what = "members (images the model saw)" if name == "members" else "non-members (images it never saw)"
    if len(images) < 2:
        raise WorkbenchError(f"membership: {len(images)} {what} in {images.path}; an attack needs at least 2 "
                             f"{name} and 2 of the other set. Give more with {name}=store.where(...) "
                             + ("or train on more images" if name == "members" else
                                "or prepare the store with held-out patients (n_test >= 1)"))
    want = (config.in_channels, config.image_size, config.image_size)
    if tuple(images.image_shape) != want:
        raise WorkbenchError(f"membership: the {name} in {images.path} have shape (C, H, W) = "
                             f"{tuple(images.image_shape)} (channels {images.channels}) but the model "
                             f"{checkpoint} takes {want} (channels {list(config.channels)}); give images of the "
                             f"store the model was trained on, at its size")
    model_channels = list(config.channels)
    if images.channels != model_channels:
        if sorted(images.channels) != sorted(model_channels):
            raise WorkbenchError(f"membership: the {name} in {images.path} have channels {images.channels} but the "
                                 f"model {checkpoint} was trained on {model_channels}; channels are matched by name")
        images = images.with_channels(model_channels)  # the same contrasts in another order
    return images


def _labels(images: SliceStore, config, name: str) -> np.ndarray | None:
    n_classes = int(getattr(config, "num_classes", 0) or 0)
    if n_classes == 0:
        return None
    m = images.manifest
    if "label" not in m.columns or m["label"].isna().any():
        bad = len(m) if "label" not in m.columns else int(m["label"].isna().sum())
        raise WorkbenchError(f"membership: the model is class-conditional ({n_classes} classes) but {bad} of the "
                             f"{len(m)} {name} in {images.path} have no label (the manifest's 'label' column)")
    values = m["label"].to_numpy(dtype=np.int64)
    if values.min() < 0 or values.max() >= n_classes:
        raise WorkbenchError(f"membership: {name} in {images.path} have labels {sorted(set(values.tolist()))}, "
                             f"outside the model's classes 0..{n_classes - 1}")
    return values


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise WorkbenchError(f"membership: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def default_timesteps(num_train_timesteps: int) -> tuple[int, ...]:
    """The loss attack's default timesteps: :data:`LOSS_FRACTIONS` of the schedule (50, 100, 200, 300 of 1000)."""
    T = int(num_train_timesteps)
    return tuple(sorted({min(T - 1, max(1, round(f * T))) for f in LOSS_FRACTIONS}))


def secmi_defaults(num_train_timesteps: int) -> tuple[int, int]:
    """SecMI's ``(t, interval)`` scaled to the schedule: (100, 10) of 1000."""
    T = int(num_train_timesteps)
    interval = max(1, round(SECMI_INTERVAL * T))
    t = interval * max(1, round(SECMI_T * T / interval))
    return min(t, interval * ((T - 1) // interval)), interval


# -- the attacks --------------------------------------------------------------------------------------
def _timesteps(t, batch: int, device):
    import torch

    return torch.full((batch,), int(t), dtype=torch.long, device=device)


def _x0_eps(out, x, a, prediction_type: str):
    """The clean-image and noise estimates of a network output at a timestep with alpha-bar ``a``."""
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (x - s1a * out) / sa, out
    if prediction_type == "v_prediction":
        return sa * x - s1a * out, s1a * x + sa * out
    return out, (x - sa * out) / s1a  # "sample"


def _loss_errors(net, x0, labels, *, alphas, timesteps, noises, prediction_type, amp):
    """Per-image MSE of the training target, averaged over ``timesteps`` x ``noises`` (common noise)."""
    import torch

    b = x0.shape[0]
    total = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for k, t in enumerate(timesteps):
        a = alphas[t]
        for noise in noises[k]:
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            if prediction_type == "epsilon":
                target = noise.expand_as(x0)
            elif prediction_type == "v_prediction":
                target = a.sqrt() * noise - (1 - a).sqrt() * x0
            else:
                target = x0
            with amp:
                pred = net(xt, _timesteps(t, b, x0.device), class_labels=labels).sample
            total += (pred.float() - target).square().flatten(1).mean(1).double()
    return (total / sum(len(n) for n in noises)).cpu().numpy()


def _ddim_step(net, x, t_from: int, t_to: int, labels, *, alphas, prediction_type, amp):
    """One deterministic DDIM step (eta 0) from ``t_from`` to ``t_to``: denoising if ``t_to < t_from``,
    inversion if ``t_to > t_from``."""
    with amp:
        out = net(x, _timesteps(t_from, x.shape[0], x.device), class_labels=labels).sample
    x0, eps = _x0_eps(out.float(), x, alphas[t_from], prediction_type)
    a_to = alphas[t_to]
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def _secmi_errors(net, x0, labels, *, alphas, path, prediction_type, amp):
    """SecMI t-error per image: invert along ``path`` (0, .., t), denoise t -> t - interval, invert back."""
    x = x0
    for t_from, t_to in zip(path[:-1], path[1:]):
        x = _ddim_step(net, x, t_from, t_to, labels, alphas=alphas, prediction_type=prediction_type, amp=amp)
    t, t_prev = path[-1], path[-2]
    back = _ddim_step(net, x, t, t_prev, labels, alphas=alphas, prediction_type=prediction_type, amp=amp)
    again = _ddim_step(net, back, t_prev, t, labels, alphas=alphas, prediction_type=prediction_type, amp=amp)
    return (x - again).square().flatten(1).mean(1).double().cpu().numpy()


def _discriminator_scores(disc, x, labels, companions, companion_labels, amp):
    """D's logit of each image, scored in a group with the same companion images (minibatch std)."""
    import torch

    b = x.shape[0]
    if companions is None:
        with amp:
            return disc(x, labels).float().cpu().numpy().astype(np.float64)
    # minibatch_std groups rows j, j + b, j + 2b, ...: image j shares its group with the companions only
    parts = [x] + [c.expand(b, *c.shape) for c in companions]
    y = None
    if labels is not None:
        y = torch.cat([labels] + [cl.expand(b) for cl in companion_labels])
    with amp:
        out = disc(torch.cat(parts), y).float()
    return out[:b].cpu().numpy().astype(np.float64)


# -- the entry point ------------------------------------------------------------------------------------
def membership(run, *, members=None, nonmembers=None, methods=None, timesteps=None, repeats: int = 2,
               secmi_t: int | None = None, secmi_interval: int | None = None, n_boot: int = 1000, seed: int = 0,
               batch_size: int = 32, ema: bool = True, bf16="auto", device=None,
               progress: bool = True) -> MembershipResult:
    """Membership inference against a run's own model: how well its training images are told apart
    from images it never saw.

    Parameters
    ----------
    run : a :class:`~workbench.runs.run.Run` (``workbench.open_run(folder)``), a run folder with a
        ``model/`` checkpoint, or a checkpoint folder.
    members : images the model saw (a SliceStore view); default ``run.train`` (exactly its training rows).
    nonmembers : images it never saw; default ``run.test`` (the held-out patients of its store).
    methods : ``"loss"`` and/or ``"secmi"`` for diffusion models (DDPM, LDM), ``"discriminator"``
        for GANs; default: all of the family's (see the module docstring for each).
    timesteps : the loss attack's timesteps (integers in ``0 .. num_train_timesteps - 1``); default
        :func:`default_timesteps` (50, 100, 200, 300 of 1000, scaled).
    repeats : noise draws per timestep for the loss attack (the same draws for every image).
    secmi_t, secmi_interval : SecMI's timestep and step; default 100 and 10 of 1000, scaled
        (:func:`secmi_defaults`).  ``secmi_t`` must be a multiple of ``secmi_interval``.
    n_boot : bootstrap resamples of the AUROC and TPR intervals.
    seed : seeds the noise of the loss attack, the GAN's companion images and the bootstrap.
    batch_size : images per network call.
    ema : use the EMA network of a diffusion model when the checkpoint has one (what sampling uses).
    bf16 : bfloat16 autocast: ``"auto"`` where measured faster on this machine (workbench.device),
        or True / False; the choice is recorded in the result.
    device : ``"auto"`` (default), ``"cpu"`` or ``"cuda"``.
    progress : show a progress bar over batches.

    Returns
    -------
    :class:`MembershipResult`: ``.scores`` (one row per image), ``.summary()``, ``.subjects()``.

    Raises :class:`~workbench.errors.WorkbenchError` before any work for an unknown method, a model
    that makes no images, fewer than 2 members or non-members, images of another shape than the
    model's, or images in both sets.
    """
    import torch

    from ..device import describe as describe_precision
    from ..device import resolve_device, use_bf16
    from ..models.checkpoint import load_model, read_config, read_training_info
    from ..models.family import family_names, get_family
    from ..progress import tqdm

    t_start = time.perf_counter()
    methods = _check_methods(methods)
    repeats = _check_int("repeats", repeats, 1)
    n_boot = _check_int("n_boot", n_boot, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    checkpoint, get_members, get_nonmembers = _resolve_run(run)

    # -- the model: which family, which methods
    config = read_config(checkpoint)
    record = get_family(config.family)
    if not record.makes_images:
        raise WorkbenchError(f"membership: {checkpoint} is a {config.family} model, which makes no images "
                             f"({record.summary}); attack a model of {', '.join(family_names(makes_images=True))}")
    available = METHODS[record.kind]
    if methods is None:
        methods = available
    wrong = [m for m in methods if m not in available]
    if wrong:
        raise WorkbenchError(f"membership: a {config.family} model has no {wrong} attack; its methods are "
                             f"{list(available)}")
    diffusion = record.diffusion
    T = config.scheduler.num_train_timesteps if diffusion else None
    if diffusion:
        if timesteps is None:
            timesteps = default_timesteps(T)
        timesteps = (timesteps,) if isinstance(timesteps, (int, np.integer)) else tuple(timesteps)
        if not timesteps or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < T
                                for t in timesteps):
            raise WorkbenchError(f"membership: timesteps must be integers in 0..{T - 1} (the model has {T} training "
                                 f"timesteps), got {list(timesteps)}")
        timesteps = tuple(int(t) for t in timesteps)
        d_t, d_i = secmi_defaults(T)
        secmi_t = d_t if secmi_t is None else _check_int("secmi_t", secmi_t, 1)
        secmi_interval = d_i if secmi_interval is None else _check_int("secmi_interval", secmi_interval, 1)
        if secmi_t >= T or secmi_t % secmi_interval:
            raise WorkbenchError(f"membership: secmi_t={secmi_t} must be a multiple of secmi_interval="
                                 f"{secmi_interval} and below the model's {T} training timesteps")
        secmi_path = list(range(0, secmi_t + 1, secmi_interval))

    # -- the images
    members = get_members() if members is None else members
    nonmembers = get_nonmembers() if nonmembers is None else nonmembers
    members = _check_set(members, "members", config, checkpoint)
    nonmembers = _check_set(nonmembers, "nonmembers", config, checkpoint)
    if Path(members.path).resolve() == Path(nonmembers.path).resolve():
        both = np.intersect1d(members.rows, nonmembers.rows)
        if len(both):
            raise WorkbenchError(f"membership: {len(both)} images of {members.path} are in both the members and the "
                                 f"non-members (store rows {both[:5].tolist()}...); the two sets must be disjoint")
    labels_m = _labels(members, config, "members")
    labels_n = _labels(nonmembers, config, "nonmembers")
    info = read_training_info(checkpoint)
    seen_rows = set(int(r) for r in info.get("train_rows", []))
    train_store = info.get("store")

    def seen(images: SliceStore) -> np.ndarray:
        same = train_store is not None and Path(train_store).resolve() == Path(images.path).resolve()
        return np.array([same and int(r) in seen_rows for r in images.rows], dtype=bool)

    seen_n = seen(nonmembers)
    if seen_n.any():
        raise WorkbenchError(f"membership: {int(seen_n.sum())} of the non-members in {nonmembers.path} are images "
                             f"{checkpoint} was trained on (its training.json train_rows); non-members must be images "
                             f"the model never saw, e.g. run.test")

    # -- the work
    device = resolve_device(device)
    requested_bf16, bf16 = bf16, use_bf16(bf16, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))
    loaded = load_model(checkpoint, device=device)
    settings = {
        "checkpoint": str(Path(checkpoint).resolve()), "family": config.family, "methods": list(methods),
        "members": {"store": str(members.path), "n": len(members)},
        "nonmembers": {"store": str(nonmembers.path), "n": len(nonmembers)},
        "seed": seed, "batch_size": batch_size, "bf16": bool(bf16),
        "precision": describe_precision(requested_bf16, bf16, device), "device": str(device),
    }
    if diffusion:
        net = loaded.sampling_module(ema=ema)
        network = next(name for name, m in loaded.modules.items() if m is net)
        alphas = config.scheduler.build("ddpm").alphas_cumprod.to(device=device, dtype=torch.float32)
        prediction_type = config.scheduler.prediction_type
        latent = config.family == "ldm"
        if latent:
            from ..models.ldm import encode
        scale = float(info.get("latent_scale") or 1.0) if latent else None
        shape = tuple(config.latent_shape) if latent else (config.in_channels, config.image_size, config.image_size)
        noises = []
        for t in timesteps:  # draw r at timestep t depends on (seed, t, r) only: the same for every image
            draws = []
            for r in range(repeats):
                g = torch.Generator(device="cpu").manual_seed(
                    int(np.random.SeedSequence([seed, 11, t, r]).generate_state(1)[0]))
                draws.append(torch.randn((1, *shape), generator=g).to(device))
            noises.append(draws)
        settings.update(network=network, ema=bool(ema and network == "ema"), prediction_type=prediction_type,
                        num_train_timesteps=T, timesteps=list(timesteps), repeats=repeats, secmi_t=secmi_t,
                        secmi_interval=secmi_interval, secmi_path=secmi_path,
                        space="latent" if latent else "image", latent_scale=scale)
    else:
        disc = loaded.modules.get("discriminator")
        if disc is None:
            raise WorkbenchError(f"membership: {checkpoint} has no discriminator weights; the GAN attack reads them")
        network = "discriminator"
        group = int(getattr(config, "mbstd_group_size", 0) or 0)
        companions = companion_labels = None
        companion_rows = []
        if group > 1:
            pool = len(members) + len(nonmembers)
            rng = np.random.default_rng([seed, 13])
            pick = rng.choice(pool, group - 1, replace=pool < group - 1)
            imgs, labs = [], []
            for p in pick.tolist():
                store, i, labs_ = (members, p, labels_m) if p < len(members) else \
                    (nonmembers, p - len(members), labels_n)
                imgs.append(torch.from_numpy(store.read([i])[0]).to(device) * 2 - 1)
                labs.append(None if labs_ is None else torch.tensor(int(labs_[i]), device=device))
                companion_rows.append({"set": "member" if store is members else "nonmember",
                                       "row": int(store.rows[i])})
            companions = imgs
            companion_labels = labs if labels_m is not None else None
        settings.update(network=network, mbstd_group_size=group, companions=companion_rows)

    sets = [("member", members, labels_m), ("nonmember", nonmembers, labels_n)]
    n_batches = sum(-(-len(s) // batch_size) for _, s, _ in sets)
    results: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    bar = tqdm(total=n_batches, desc=f"membership {config.family}", unit="batch", disable=not progress)
    try:
        with torch.no_grad():
            for _, images, labels in sets:
                for start in range(0, len(images), batch_size):
                    stop = min(start + batch_size, len(images))
                    x = torch.from_numpy(images.read(np.arange(start, stop))).to(device) * 2 - 1
                    y = None if labels is None else torch.from_numpy(labels[start:stop]).to(device)
                    if diffusion:
                        if latent:
                            with amp:
                                x = encode(loaded.modules["autoencoder"], x, scale=scale)
                            x = x.float()
                        if "loss" in methods:
                            results["loss"].append(-_loss_errors(
                                net, x, y, alphas=alphas, timesteps=timesteps, noises=noises,
                                prediction_type=prediction_type, amp=amp))
                        if "secmi" in methods:
                            results["secmi"].append(-_secmi_errors(
                                net, x, y, alphas=alphas, path=secmi_path, prediction_type=prediction_type, amp=amp))
                    else:
                        results["discriminator"].append(_discriminator_scores(
                            disc, x, y, companions, companion_labels, amp))
                    bar.update(1)
    finally:
        bar.close()

    # -- the table
    frames = []
    for name, images, labels in sets:
        m = images.manifest
        frames.append(pd.DataFrame({
            "set": name,
            "subject": m["subject"].to_numpy(dtype=object) if "subject" in m.columns else None,
            "z": m["z"].to_numpy() if "z" in m.columns else np.nan,
            "label": m["label"].to_numpy() if "label" in m.columns else np.nan,
            "row": images.rows.astype(np.int64),
            "seen": seen(images),
        }))
    table = pd.concat(frames, ignore_index=True)
    for method in methods:
        values = np.concatenate(results[method])
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise WorkbenchError(f"membership: {bad} {method} scores of {checkpoint} are not finite (the network "
                                 f"gave inf or nan; try bf16=False)")
        table[method] = values
    settings["seconds"] = round(time.perf_counter() - t_start, 2)
    return MembershipResult(scores=table, methods=tuple(methods), family=config.family, settings=settings,
                            n_boot=n_boot, seed=seed)


__all__ = ["COMPARES", "METHODS", "MembershipResult", "default_timesteps", "membership", "secmi_defaults"]
