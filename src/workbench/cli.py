"""Command line: ``workbench <command>`` (also ``python -m workbench``).

    workbench data phantom brain --subjects 10 --out data/phantom --seed 0
    workbench data prepare --source data/BraTS2021 --out runs/brats64/store --size 64
    workbench data phantom xray --images 40 --out data/xray_phantom --seed 0
    workbench data prepare-xray --source data/chest_xray --out runs/cxr64/store --size 64
    workbench train --store runs/brats64/store --out runs/brats64/model --steps 20000
    workbench train --model gan --store runs/cxr64/store --out runs/cxr64/gan --steps 5000 --conditional --resume
    workbench sample --checkpoint runs/brats64/model --out runs/brats64/synthetic --n 1000
    workbench search --queries runs/brats64/synthetic --reference runs/brats64/store --split train --k 5 --out matches.parquet
    workbench analyze runs/brats64 --detector train --rule dar95
    workbench utility runs/brats64 --steps 300
    workbench report runs/brats64 --extractor detector
    workbench detector --store runs/brats64/store --out runs/brats64/detector
    workbench release --synthetic runs/brats64/synthetic --reference runs/brats64/store --detector runs/brats64/detector --out runs/brats64/release
    workbench run 04_memorization --out runs/brats64 -p run runs/brats64
    workbench demo --out runs/demo
    workbench sweep sweeps/findings.yaml --out runs/findings --workers 2
    workbench collect runs/findings
    workbench app runs/demo --port 8866 --reviewer dr-a
    workbench clean runs/brats64 --remove
    workbench delete runs/old/store --yes
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import INTERFACE, WorkbenchError

#: ``workbench.search.rowcopy.FORMATS`` (not imported here: the CLI starts without torch; a test
#: holds them equal)
ROW_COPY_FORMATS = ("float16", "int8")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS, []) or action.required \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _parser(sub, name: str, text: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text, formatter_class=_Help, **kwargs)


def _overwrite(p, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what}; the old one stays in place until the new one is complete")


def _seed(p, what: str, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"seed of {what} (written beside the result)")


def _precision(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bf16", dest="bf16", action="store_const", const=True, default="auto",
                   help="bf16 autocast even where it is slower (default: bf16 only where a short probe measured it "
                        "faster than float32 on this machine)")
    g.add_argument("--no-bf16", dest="bf16", action="store_const", const=False, help="float32 throughout")


def _add_data(sub):
    data = _parser(sub, "data", "built-in phantoms and data preparation").add_subparsers(
        dest="data_command", required=True, metavar="{phantom,prepare,prepare-xray}")
    ph = _parser(data, "phantom", "write a built-in phantom dataset (generated, not patient data)")
    ph.add_argument("kind", choices=["brain", "xray"],
                    help="brain: BraTS-layout MRI volumes (t1, t1ce, t2, flair, seg); "
                         "xray: Kermany-layout chest radiographs (train|test/NORMAL|PNEUMONIA/*.png)")
    ph.add_argument("--subjects", type=int, default=None, help="brain: number of subjects (default 10)")
    ph.add_argument("--images", type=int, default=None, help="xray: number of images (default 40)")
    ph.add_argument("--pneumonia-fraction", type=float, default=None, help="xray: fraction of PNEUMONIA images (default 0.5)")
    ph.add_argument("--test-fraction", type=float, default=None, help="xray: fraction of patients held out (default 0.25)")
    ph.add_argument("--size", type=int, default=None, help="xray: image height in pixels (default 256)")
    ph.add_argument("--out", required=True, help="folder to write the phantom into")
    _seed(ph, "the phantom (the same seed gives the same files)")
    _overwrite(ph, "phantom")
    pr = _parser(data, "prepare", "slice a BraTS-layout folder into a SliceStore")
    pr.add_argument("--source", required=True, help="folder of <ID>/<ID>_<contrast>.nii.gz subject folders")
    pr.add_argument("--out", required=True, help="SliceStore folder to write")
    pr.add_argument("--channels", default="t1,t1ce,t2,flair,seg", help="comma-separated contrasts, in store order")
    pr.add_argument("--layout", choices=["slices", "volumes", "volume_slices"], default="slices",
                    help="slices: padded axial slices (the study's); volumes: one --size^3 cube of the brain per "
                         "subject (3D models); volume_slices: the axial slices of those cubes (2D on the same voxels)")
    pr.add_argument("--size", type=int, default=64, help="image size after padding (64, 128, 256); the cube's edge "
                                                         "for --layout volumes / volume_slices (32, 48, 64, 96)")
    pr.add_argument("--margin", type=int, default=4, help="voxels around the brain's bounding box (volume layouts)")
    pr.add_argument("--pad", type=int, default=256,
                    help="zero-pad axial slices to this size before resizing (BraTS' 240 -> 256); 0: no padding")
    pr.add_argument("--reference", default="flair", help="contrast whose foreground selects slices")
    pr.add_argument("--min-foreground", type=float, default=0.15,
                    help="keep slices where at least this fraction of the reference contrast's pixels is non-zero")
    pr.add_argument("--scaling", choices=["max", "percentile"], default="max",
                    help="intensity scaling to [0, 1] per volume: by its maximum or by --percentile")
    pr.add_argument("--percentile", type=float, default=99.5, help="percentile of --scaling percentile")
    pr.add_argument("--test-fraction", type=float, default=0.25, help="fraction of subjects held out")
    pr.add_argument("--n-test", type=int, default=None, help="number of held-out subjects (overrides --test-fraction)")
    _seed(pr, "the subject split")
    _overwrite(pr, "store")
    px = _parser(data, "prepare-xray", "read a Kermany-layout chest X-ray folder into a SliceStore")
    px.add_argument("--source", required=True, help="folder with train/ and test/ (and val/) of NORMAL/ and PNEUMONIA/")
    px.add_argument("--out", required=True, help="SliceStore folder to write")
    px.add_argument("--size", type=int, default=64, help="image size (64, 128, 256)")
    px.add_argument("--fit", choices=["pad", "crop"], default="pad", help="make images square by padding or centre-cropping")
    px.add_argument("--split", choices=["given", "image", "patient"], default="given",
                    help="keep the folders' split, or re-split at random by image or by patient")
    px.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction when re-splitting")
    _seed(px, "the re-split and of --max-images")
    px.add_argument("--max-images", type=int, default=None, help="keep a seeded random subset of this many images")
    _overwrite(px, "store")


def _add_model(sub):
    from .models.family import family_names

    tr = _parser(sub, "train", "train a DDPM, latent diffusion model or GAN on a store's train split")
    tr.add_argument("--store", required=True, help="SliceStore folder; its train split is trained on")
    tr.add_argument("--out", required=True, help="run folder (model + checkpoints)")
    tr.add_argument("--model", default="ddpm", choices=family_names(makes_images=True),
                    help="model family (the copy detector has its own command, `workbench detector`)")
    tr.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"], help="network size")
    tr.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    tr.add_argument("--batch-size", type=int, default=16, help="images per step")
    tr.add_argument("--lr", type=float, default=None, help="learning rate (default: the family's)")
    tr.add_argument("--warmup-steps", type=int, default=0, help="steps of linear learning-rate warm-up")
    tr.add_argument("--max-images", type=int, default=None,
                    help="train on a seeded subset of this many images (default: all of the train split)")
    tr.add_argument("--augment", default=None, help="none, flip, affine or flip,affine (default: none)")
    tr.add_argument("--conditional", action="store_true", help="condition on the manifest's label column")
    tr.add_argument("--no-ema", action="store_true", help="keep no EMA copy of the weights")
    tr.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    _seed(tr, "everything: subset, data order, noise, initial weights")
    _precision(tr)
    tr.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="model-config or family option, e.g. --option beta_schedule squaredcos_cap_v2, "
                         "--option ae_steps 2000, --option diffaugment color,translation (VALUE read as JSON when it parses)")
    _overwrite(tr, "model in --out")
    sa = _parser(sub, "sample", "sample a synthetic SliceStore from a checkpoint of any family")
    sa.add_argument("--checkpoint", required=True, help="model folder written by `workbench train`")
    sa.add_argument("--out", required=True, help="synthetic SliceStore folder to write")
    sa.add_argument("--n", type=int, default=64, help="number of images")
    sa.add_argument("--steps", type=int, default=50, help="denoising steps (diffusion models)")
    sa.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"], help="diffusion sampler")
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    sa.add_argument("--labels", default=None,
                    help="class label(s) for a conditional model: one integer, or comma-separated, one per image")
    sa.add_argument("--truncation-psi", type=float, default=1.0, help="GAN truncation")
    _seed(sa, "the sampling noise (image i uses seed + i)")
    sa.add_argument("--batch-size", type=int, default=32, help="images sampled at once")
    _precision(sa)
    _overwrite(sa, "store")


def _add_search(sub):
    se = _parser(sub, "search", "top-k Pearson correlation of every query image with a reference store")
    se.add_argument("--queries", required=True, help="SliceStore of query images (e.g. synthetic)")
    ref = se.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="SliceStore to search (e.g. the training store)")
    ref.add_argument("--index", help="a reference prepared by `workbench index` (its store, split and channels)")
    se.add_argument("--split", default=None, help="search only this split of the reference, e.g. train (default: all)")
    se.add_argument("--k", type=int, default=1, help="matches per query")
    se.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    se.add_argument("--method", default="auto", choices=["auto", "brute", "pruned"], help="search method (exact either way)")
    se.add_argument("--precision", default="auto", choices=["auto", "bf16", "float32"],
                    help="precision of the screen (the answer is exact either way)")
    se.add_argument("--channels", default=None, help="comma-separated channels to correlate (default: all)")
    se.add_argument("--distinct", default=None, metavar="COLUMN",
                    help="e.g. subject: the best match from each of the k best different subjects")
    se.add_argument("--out", required=True, help="matches table to write (.parquet or .csv)")
    _overwrite(se, "table")


def _add_index(sub):
    ix = _parser(sub, "index", "prepare a reference store once for many exact searches (`workbench search --index`)")
    ix.add_argument("--reference", required=True, help="SliceStore to index (e.g. the training store)")
    ix.add_argument("--split", default=None, help="index only this split of the reference, e.g. train (default: all)")
    ix.add_argument("--channels", default=None, help="comma-separated channels to correlate (default: all)")
    ix.add_argument("--basis-dim", type=int, default=None,
                    help="principal directions of the reference kept for the bounds (default: by its size)")
    ix.add_argument("--row-copy", default=None, metavar="PATH.npy",
                    help="also write a copy of the unit rows there (float16: half the store's size on disk): searches "
                         "then read it from disk in place of the store (the exact rescore still reads the store)")
    ix.add_argument("--row-copy-format", choices=ROW_COPY_FORMATS, default="float16",
                    help="the row copy's values: float16 (default), or int8 in blocks of 256 pixels with a scale "
                         "each (a quarter of the store's size; its wider bound sends more pairs to the rescore)")
    ix.add_argument("--out", required=True, help="index folder to write")
    _overwrite(ix, "index")


def _add_analyze(sub):
    an = _parser(sub, "analyze", "the copy analysis of a run: every search once, calibrated thresholds, copy rates, "
                                 "patients, C_T; saved into the run")
    an.add_argument("run", help="run folder (run.json, or store/, model/ and synthetic/ in it), e.g. runs/demo")
    an.add_argument("--detector", default="train",
                    help="copy detector: train (train one into RUN/detector), a detector folder, or none (pixel r only)")
    an.add_argument("--detector-steps", type=int, default=300, help="training steps of the detector (with train)")
    an.add_argument("--rule", default="dar95", choices=["dar95", "test_quantile"], help="threshold that flags copies")
    an.add_argument("--quantile", type=float, default=0.95, help="quantile of the test_quantile rule")
    an.add_argument("--k", type=int, default=5, help="matches kept per synthetic image")
    an.add_argument("--bootstrap", type=int, default=1000, help="resamples for the copy rates' intervals (0: none)")
    _seed(an, "the detector's training and the bootstrap")
    an.add_argument("--threshold", type=float, default=None, help="fixed pixel-r threshold instead of the rule")
    an.add_argument("--embedding-metric", default="cosine", choices=["cosine", "correlation"],
                    help="how detector embeddings are compared (Dar et al.'s code: correlation)")
    an.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")


def _add_privacy(sub):
    ut = _parser(sub, "utility", "what the synthetic images are worth: a classifier trained on real, synthetic and "
                                 "both, tested on real held-out images (AUROC); saved into the run")
    ut.add_argument("run", help="run folder with a class-conditional model and its samples")
    ut.add_argument("--steps", type=int, default=300, help="training steps of each classifier")
    ut.add_argument("--n", type=int, default=None, help="real training images to use (default: all the model saw)")
    _seed(ut, "the classifiers and the bootstrap")
    ut.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    rp = _parser(sub, "report", "privacy against utility for one run: copies, DCR/NNDR, membership inference, "
                                "utility and fidelity side by side (report.json, report.html)")
    rp.add_argument("run", help="run folder with a model, samples and an analysis (`workbench analyze`)")
    rp.add_argument("--extractor", default="detector",
                    help="fidelity features: detector (the run's copy detector), classifier (the utility "
                         "classifier), or a TorchScript file such as inception-2015-12-05.pt")
    rp.add_argument("--utility-steps", type=int, default=300, help="training steps of each utility classifier")
    rp.add_argument("--skip", default="", help="parts to leave out, comma-separated: utility, fidelity, "
                                               "membership, distances")
    rp.add_argument("--recompute", action="store_true", help="compute every part again (default: reuse parts "
                                                              "computed from the same model, samples and settings)")
    _seed(rp, "the classifiers, the membership noise and the bootstraps")


def _add_release(sub):
    de = _parser(sub, "detector", "train the self-supervised copy detector on a store's train split")
    de.add_argument("--store", required=True, help="SliceStore folder; its train split is trained on")
    de.add_argument("--out", required=True, help="detector folder to write")
    de.add_argument("--steps", type=int, default=800, help="optimisation steps")
    de.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    _seed(de, "the detector's training")
    _overwrite(de, "detector")
    re = _parser(sub, "release", "write only the synthetic images that are not copies, with a report")
    re.add_argument("--synthetic", required=True, help="SliceStore of synthetic images (made by `workbench sample`)")
    re.add_argument("--reference", required=True, help="SliceStore with train and test splits (calibration)")
    re.add_argument("--out", required=True, help="release folder to write")
    re.add_argument("--checkpoint", default=None,
                    help="compare with exactly the images this model was trained on (its training view)")
    re.add_argument("--detector", default=None, help="trained copy detector folder (default: pixel r only)")
    re.add_argument("--rule", default="dar95", choices=["dar95", "test_quantile"], help="threshold rule")
    re.add_argument("--quantile", type=float, default=0.95, help="quantile of the test_quantile rule")
    re.add_argument("--threshold", type=float, default=None, help="fixed pixel-r threshold instead of the rule")
    re.add_argument("--embedding-threshold", type=float, default=None,
                    help="fixed embedding-similarity threshold instead of the rule (needs --detector)")
    re.add_argument("--format", default="png", choices=["png", "nifti"], help="image format of the release")
    re.add_argument("--show-training", action="store_true", help="show matched training slices in the report")
    _overwrite(re, "release folder")


class _RunHelp(argparse.Action):
    """``workbench run -h``: the usual help plus every notebook's parameters (papermill loads only now)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .runs.notebook import describe_notebooks

        chosen = getattr(namespace, "notebook", None)  # `workbench run 02_train -h`: that notebook only
        try:
            parser.epilog = describe_notebooks([chosen] if chosen else None)
        except WorkbenchError:
            parser.epilog = describe_notebooks()
        parser.print_help()
        parser.exit()


def _add_runs(sub):
    ru = _parser(sub, "run", "execute a notebook through papermill into a run folder", add_help=False)
    ru.add_argument("-h", "--help", action=_RunHelp, help="show this help with the notebooks' parameters, and exit")
    ru.add_argument("notebook", help="01_prepare_data, 02_train, 03_sample, 04_memorization, ... or a path")
    ru.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    ru.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="notebook parameter (VALUE is read as JSON when it parses: 3, 0.5, true, null, [..]); "
                         "a name the notebook does not declare is refused")
    ru.add_argument("--no-html", action="store_true", help="do not write an HTML page of the executed notebook")
    de = _parser(sub, "demo", "phantom -> store -> train -> sample -> memorization, into runs/demo")
    de.add_argument("--out", default="runs/demo", help="run folder")
    de.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a demo setting (see workbench.runs.DEMO, or DEMO3D with --volumes)")
    de.add_argument("--volumes", action="store_true",
                    help="the 3D demo: a 3D latent diffusion model on 32^3 phantom brains, into runs/demo3d")
    sw = _parser(sub, "sweep", "run every combination of a sweep spec (YAML) through papermill, resumably, "
                               "and collect the results into one table")
    sw.add_argument("spec", help="sweep spec: name, base, vary (a grid) and/or runs; see sweeps/findings.yaml")
    sw.add_argument("--out", required=True, help="sweep folder (rerunning the same command skips complete runs)")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, help="local worker processes (a Dask LocalCluster when > 1)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address of a running Dask scheduler (tcp://host:8786) whose workers share --out's file "
                            "system")
    sw.add_argument("--threads", type=int, default=None,
                    help="CPU threads of each run (default: this machine's cores divided among --workers)")
    sw.add_argument("--no-report", action="store_true", help="do not run the spec's report notebooks at the end")
    sw.add_argument("--check", action="store_true", help="check the spec and list its runs; run nothing")
    co = _parser(sub, "collect", "collect a sweep folder into one table (results.parquet, results.csv)")
    co.add_argument("sweep", help="sweep folder written by `workbench sweep`")
    ck = _parser(sub, "checkpoints", "sample and analyse every checkpoint a run's training kept "
                                     "(memorization against training steps)")
    ck.add_argument("run", help="run folder with an analysis (its detector and sampling settings are reused)")
    ck.add_argument("--steps", default=None, help="comma-separated training steps (default: every kept checkpoint)")
    ap = _parser(sub, "app", "serve a run's match browser and reader study in the browser "
                             "(Voila; 127.0.0.1 and an access token by default)")
    ap.add_argument("run", help="run folder written by 04_memorization, e.g. runs/demo")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    ap.add_argument("--ip", default="127.0.0.1", metavar="HOST",
                    help="address to listen on: 127.0.0.1 is this machine only (share through an ssh -L tunnel); "
                         "0.0.0.0 listens on every network interface, so anyone who can reach the port gets the login "
                         "page, and anyone with the printed URL (it carries the token) sees patient images, over "
                         "plain http")
    ap.add_argument("--token", default=os.environ.get("WORKBENCH_APP_TOKEN") or None,
                    help="access token the pages ask for (default: $WORKBENCH_APP_TOKEN, else a new random one at "
                         "every start); given here, it shows on this command line, which `ps` shows to every user")
    ap.add_argument("--reviewer", default="reviewer", help="reviewer name written beside match marks")
    ap.add_argument("--open", action="store_true", help="open the app in a web browser")


def _add_housekeeping(sub):
    cl = _parser(sub, "clean", "list (and remove) temporary outputs that killed runs left in a folder; "
                               "they may hold patient images")
    cl.add_argument("folder", help="a run folder, a store, or any folder the workbench wrote into")
    cl.add_argument("--remove", action="store_true", help="remove the stale ones (never one a running process writes)")
    cl.add_argument("--force", action="store_true",
                    help="with --remove: also remove those written on another machine (check it is not running)")
    dl = _parser(sub, "delete", "delete a SliceStore and every temporary of its killed writes")
    dl.add_argument("store", help="SliceStore folder")
    dl.add_argument("--yes", action="store_true", help="delete; without it, list what would be deleted")
    dl.add_argument("--force", action="store_true", help="also delete temporaries written on another machine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    _add_model(sub)
    _add_search(sub)
    _add_index(sub)
    _add_analyze(sub)
    _add_privacy(sub)
    _add_release(sub)
    _add_runs(sub)
    _add_housekeeping(sub)
    return parser


def _channels(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not any(names) or not all(names):
        raise WorkbenchError(f"{flag} {text!r}: give comma-separated channel names, e.g. {flag} t1,flair")
    return names


def _labels(text: str | None):
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise WorkbenchError(f"--labels {text!r}: give one integer class label, or comma-separated integers "
                             f"(one per image), e.g. --labels 1 or --labels 0,1,1") from None
    return values[0] if len(values) == 1 else values


def _split_view(store, split: str | None):
    if not split:
        return store
    view = store.where(split=split)
    if len(view) == 0:
        have = sorted(store.manifest["split"].dropna().unique().tolist())
        raise WorkbenchError(f"{store.path}: no images in split {split!r}; its splits are {have}")
    return view


def _search(args) -> None:
    from pathlib import Path

    from .data.atomic import atomic_file
    from .data.store import SliceStore
    from .memorization import match_table

    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise WorkbenchError(f"--out {out}: name a .parquet or .csv file")
    if out.is_dir():
        raise WorkbenchError(f"--out {out}: is a folder; name a .parquet or .csv file")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    channels = _channels(args.channels, "--channels")
    queries = SliceStore.open(args.queries)
    if args.index:
        from .search import CorrelationIndex

        given = [flag for flag, value in (("--split", args.split), ("--distinct", args.distinct),
                                          ("--precision", args.precision != "auto")) if value]
        if given:
            raise WorkbenchError(f"{', '.join(given)}: not with --index (the index holds its split and precision; "
                                 "search its store with --reference for --distinct)")
        reference = CorrelationIndex.open(args.index, device=args.device)
        options = {"channels": channels}
    else:
        reference = _split_view(SliceStore.open(args.reference), args.split)
        options = {"precision": args.precision, "channels": channels, "distinct": args.distinct}
    t0 = time.time()
    table = match_table(queries, reference, k=args.k, device=args.device, progress=True, method=args.method, **options)
    seconds = time.time() - t0
    stats = table.attrs.get("search_stats", {})
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False) if out.suffix == ".csv" else table.to_parquet(tmp, index=False)
    pairs = len(queries) * len(reference)
    pruned = f", {1 - stats['full_fraction']:.1%} of pairs pruned" if "full_fraction" in stats else ""
    print(f"searched {len(queries)} queries x {len(reference)} reference images = {pairs:,} pairs in {seconds:.2f} s "
          f"({pairs / max(seconds, 1e-9):,.0f} pairs/s; {stats.get('method', 'brute')}, {stats.get('precision')} screen, "
          f"{stats.get('candidates_per_query', 0):.1f} candidates rescored per query{pruned}); wrote {out}")
    if "auto" in stats:  # method="auto": what it measured and chose
        figures = stats.get("auto_figures", {})
        if "probe_s" in figures:
            probe = f"brute force's probe timed now, {figures['probe_s']:.2f} s, kept for this machine's next searches"
        else:
            probe = f"brute force's probe as measured {figures.get('probe_measured', 'before')}"
        print(f"method auto chose {stats['auto']} ({probe})")


def _index(args) -> None:
    from pathlib import Path

    from .data.store import SliceStore
    from .search import CorrelationIndex

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before the build, which may take long
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    reference = _split_view(SliceStore.open(args.reference), args.split)
    t0 = time.time()
    index = CorrelationIndex(reference, channels=_channels(args.channels, "--channels"), basis_dim=args.basis_dim,
                             keep_vectors=False if args.row_copy else "auto", row_copy=args.row_copy,
                             row_copy_format=args.row_copy_format, progress=True)
    index.save(out, overwrite=args.overwrite)
    print(f"indexed {len(reference)} images in {time.time() - t0:.1f} s: {index!r}; wrote {out} "
          f"(search it with `workbench search --index {out}`)")


def _clean(args) -> None:
    from .data.temporaries import ELSEWHERE, IN_USE, STALE, find_temporaries, human_size, remove_temporaries

    found = find_temporaries(args.folder)
    if not found:
        print(f"{args.folder}: no temporary outputs of killed runs")
        return
    for t in found:
        who = {IN_USE: f"in use by running process {t.pid}", STALE: f"stale: process {t.pid} has ended",
               ELSEWHERE: f"written by process {t.pid} on another machine"}[t.state]
        print(f"{t.path}  {human_size(t.size)}  {t.age / 3600:.1f} h old  ({who}; would have become {t.target.name})")
    if args.remove:
        removed = remove_temporaries(args.folder, force=args.force)
        kept = len(found) - len(removed)
        print(f"removed {len(removed)} ({human_size(sum(t.size for t in removed))})"
              + (f"; kept {kept} (in use, or from another machine: add --force for those)" if kept else ""))
    else:
        stale = sum(t.state == STALE for t in found)
        print(f"{len(found)} temporary output(s), {stale} stale; remove the stale ones with "
              f"`workbench clean {args.folder} --remove`")


def _delete(args) -> None:
    from .data.store import delete_store
    from .data.temporaries import human_size, tree_stats

    doomed = delete_store(args.store, force=args.force, dry_run=not args.yes)
    size = sum(tree_stats(p)[0] for p in doomed)
    for p in doomed:
        print(("deleted " if args.yes else "would delete ") + str(p))
    if args.yes:
        print(f"deleted {len(doomed)} path(s), {human_size(size)}")
    else:
        print(f"nothing deleted: {len(doomed)} path(s), {human_size(size)}; add --yes to delete them")


def run(args) -> None:
    if args.command == "data" and args.data_command == "phantom":
        own = {"brain": {"subjects"}, "xray": {"images", "pneumonia_fraction", "test_fraction", "size"}}
        foreign = sorted(f"--{k.replace('_', '-')}" for kind, keys in own.items() if kind != args.kind
                         for k in keys if getattr(args, k) is not None)
        if foreign:
            raise WorkbenchError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
                                 f"the {args.kind} phantom")
        if args.kind == "brain":
            from .data.phantom import write_brain_phantom

            subjects = 10 if args.subjects is None else args.subjects
            write_brain_phantom(args.out, subjects=subjects, seed=args.seed, overwrite=args.overwrite)
            print(f"wrote {subjects} phantom subject(s) to {args.out} (generated, not patient data)")
        else:
            from .data.xray_phantom import write_xray_phantom

            given = {k: getattr(args, k) for k in own["xray"] if getattr(args, k) is not None}
            out = write_xray_phantom(args.out, seed=args.seed, overwrite=args.overwrite, **given)
            print(f"wrote {given.get('images', 40)} phantom chest X-ray(s) to {out} (generated, not patient data)")
    elif args.command == "data" and args.data_command == "prepare":
        if args.layout == "slices":
            from .data.prepare import prepare_brats_store

            prepare_brats_store(args.source, args.out, channels=_channels(args.channels, "--channels"),
                                size=args.size, pad=args.pad or None, reference=args.reference,
                                min_foreground=args.min_foreground, scaling=args.scaling, percentile=args.percentile,
                                test_fraction=args.test_fraction, n_test=args.n_test, seed=args.seed,
                                overwrite=args.overwrite)
        else:
            from .data.volumes import prepare_brain

            prepare_brain(args.source, args.out, layout=args.layout, channels=_channels(args.channels, "--channels"),
                          size=args.size, margin=args.margin, reference=args.reference,
                          min_foreground=args.min_foreground, scaling=args.scaling, percentile=args.percentile,
                          test_fraction=args.test_fraction, n_test=args.n_test, seed=args.seed,
                          overwrite=args.overwrite)
    elif args.command == "data" and args.data_command == "prepare-xray":
        from .data.xray import prepare_xray_store

        prepare_xray_store(args.source, args.out, size=args.size, fit=args.fit, split=args.split,
                           test_fraction=args.test_fraction, seed=args.seed, max_images=args.max_images,
                           overwrite=args.overwrite)
    elif args.command == "train":
        from .data.store import SliceStore
        from .runs.notebook import parse_value
        from .train import train_model

        options = {name: parse_value(value) for name, value in args.option}
        train_model(_split_view(SliceStore.open(args.store), "train"), args.out, model=args.model,
                    preset=args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    warmup_steps=args.warmup_steps, max_images=args.max_images, augment=args.augment,
                    conditional=args.conditional, ema=not args.no_ema, checkpoint_every=args.checkpoint_every,
                    resume=args.resume, seed=args.seed, bf16=args.bf16, overwrite=args.overwrite, **options)
    elif args.command == "sample":
        from .sample import sample_model

        sample_model(args.checkpoint, args.out, n=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                     labels=_labels(args.labels), truncation_psi=args.truncation_psi, seed=args.seed,
                     batch_size=args.batch_size, bf16=args.bf16, overwrite=args.overwrite)
    elif args.command == "search":
        _search(args)
    elif args.command == "index":
        _index(args)
    elif args.command == "analyze":
        from .runs.analyze import analyze

        detector = None if str(args.detector).lower() in ("none", "") else args.detector
        analysis = analyze(args.run, detector=detector, detector_steps=args.detector_steps, rule=args.rule,
                           quantile=args.quantile, k=args.k, bootstrap=args.bootstrap, seed=args.seed,
                           pixel_threshold=args.threshold, embedding_metric=args.embedding_metric, device=args.device)
        for line in analysis.text():
            print(line)
        view = analysis.slice_view()
        if view is not None:
            from .widgets.report import AnalysisReport

            print("slice view (every axial slice of the synthetic volumes against the training slices):")
            for line in AnalysisReport(view).text():
                print(f"  {line}")
    elif args.command == "utility":
        from .runs.evaluate import utility

        result = utility(args.run, steps=args.steps, n=args.n, seed=args.seed, device=args.device)
        print(result.table().to_string(index=False))
    elif args.command == "report":
        from .runs.evaluate import PARTS, privacy_report

        skip = {p.strip() for p in args.skip.split(",") if p.strip()}
        unknown = sorted(skip - set(PARTS) - {"copies"})
        if unknown or "copies" in skip:
            raise WorkbenchError(f"--skip {args.skip!r}: parts that can be left out are utility, fidelity, "
                                 f"membership, distances")
        report = privacy_report(args.run, extractor=args.extractor, recompute=args.recompute,
                                utility_options={"steps": args.utility_steps, "seed": args.seed},
                                fidelity_options={"seed": args.seed}, membership_options={"seed": args.seed},
                                **{part: False for part in skip})
        for key, value in sorted(report["values"].items()):
            print(f"  {key}: {value:.4g}")
    elif args.command == "detector":
        from .data.store import SliceStore
        from .memorization.detector import train_detector

        train_detector(_split_view(SliceStore.open(args.store), "train"), args.out, steps=args.steps, seed=args.seed,
                       overwrite=args.overwrite, resume=args.resume)
    elif args.command == "release":
        from .runs.release import release_gate

        train = None
        if args.checkpoint:
            from .train import training_view

            train = training_view(args.checkpoint)
        release_gate(args.synthetic, args.reference, args.out, train=train, detector=args.detector, rule=args.rule,
                     quantile=args.quantile, pixel_threshold=args.threshold,
                     embedding_threshold=args.embedding_threshold, fmt=args.format, show_training=args.show_training,
                     overwrite=args.overwrite)
    elif args.command == "run":
        from .runs.notebook import parse_value, run_notebook

        params = {name: parse_value(value) for name, value in args.parameter}
        run_notebook(args.notebook, args.out, params, html=not args.no_html)
    elif args.command == "demo":
        from .runs.demo import DEMO, DEMO3D, run_demo
        from .runs.notebook import parse_value

        settings = {name: parse_value(value) for name, value in args.set}
        known = DEMO3D if args.volumes else DEMO
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise WorkbenchError(f"unknown demo setting(s) {unknown}; known: {sorted(known)}")
        out = "runs/demo3d" if args.volumes and args.out == "runs/demo" else args.out
        run_demo(out, settings, volumes=args.volumes)
    elif args.command == "sweep":
        from .runs.spec import load_spec
        from .runs.sweep import sweep

        if args.check:
            spec = load_spec(args.spec)
            plans = spec.plans()
            print(f"{args.spec}: sweep {spec.name!r}, {len(plans)} run(s), varying "
                  f"{', '.join(spec.varied_names) or 'nothing'}:")
            for plan in plans:
                print(f"  {plan.id}")
            return
        result = sweep(args.spec, args.out, workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                       report=not args.no_report)
        if len(result.failed):
            raise WorkbenchError(f"{len(result.failed)} run(s) failed (the others completed): "
                                 + "; ".join(f"{r.id}: {str(r.error).splitlines()[0]}" for r in result.failed.itertuples())
                                 + ". Fix the cause and rerun the same command: complete runs are skipped")
    elif args.command == "collect":
        from .runs.collect import collect

        collect(args.sweep)
    elif args.command == "checkpoints":
        from .runs.checkpoints import analyze_checkpoints

        steps = None if args.steps is None else [int(s) for s in args.steps.split(",")]
        analyze_checkpoints(args.run, steps=steps)
    elif args.command == "app":
        from .runs.app import serve_app

        status = serve_app(args.run, port=args.port, ip=args.ip, token=args.token, reviewer=args.reviewer,
                           open_browser=args.open)
        if status:
            raise WorkbenchError(f"voila stopped with status {status} (its messages are above)")
    elif args.command == "clean":
        _clean(args)
    elif args.command == "delete":
        _delete(args)


def _os_error(err: OSError) -> str:
    """One line for an OS error: the file and what went wrong, without the errno prefix."""
    where = err.filename if err.filename is not None else ""
    text = err.strerror or str(err)
    if err.filename is None and err.args and isinstance(err.args[0], str):  # raised with a message of ours
        return err.args[0]
    return f"{where}: {text}" if where else text


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    token = INTERFACE.set("cli")  # messages name options as flags (--overwrite), not keywords
    try:
        run(args)
    except WorkbenchError as err:
        print(f"workbench: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # FileExistsError, FileNotFoundError, IsADirectoryError, PermissionError, ...
        print(f"workbench: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted; nothing half-written was left looking complete", file=sys.stderr)
        return 130
    finally:
        INTERFACE.reset(token)
    return 0
