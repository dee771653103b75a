"""Command line: ``workbench <command>`` (also ``python -m workbench``).

    workbench data phantom brain --subjects 10 --out data/phantom --seed 0
    workbench data prepare --source data/BraTS2021 --out runs/brats64/store --size 64
    workbench data phantom xray --images 40 --out data/xray_phantom --seed 0
    workbench data prepare-xray --source data/chest_xray --out runs/cxr64/store --size 64
    workbench train --store runs/brats64/store --out runs/brats64/model --steps 20000
    workbench train --model gan --store runs/cxr64/store --out runs/cxr64/gan --steps 5000 --conditional --resume
    workbench sample --checkpoint runs/brats64/model --out runs/brats64/synthetic --n 1000
    workbench search --queries runs/brats64/synthetic --reference runs/brats64/store --split train --k 5 --out matches.parquet
    workbench detector --store runs/brats64/store --out runs/brats64/detector
    workbench release --synthetic runs/brats64/synthetic --reference runs/brats64/store --detector runs/brats64/detector --out runs/brats64/release
    workbench run 04_memorization --out runs/brats64 -p checkpoint runs/brats64/model -p synthetic runs/brats64/synthetic
    workbench demo --out runs/demo
    workbench app runs/demo --port 8866 --reviewer dr-a
"""
from __future__ import annotations

import argparse
import sys
import time

from .errors import WorkbenchError


def _add_data(sub):
    data = sub.add_parser("data", help="built-in phantoms and data preparation").add_subparsers(dest="data_command", required=True)
    ph = data.add_parser("phantom", help="write a built-in phantom dataset (generated, not patient data)")
    ph.add_argument("kind", choices=["brain", "xray"],
                    help="brain: BraTS-layout MRI volumes (t1, t1ce, t2, flair, seg); "
                         "xray: Kermany-layout chest radiographs (train|test/NORMAL|PNEUMONIA/*.png)")
    ph.add_argument("--subjects", type=int, default=None, help="brain: number of subjects (default 10)")
    ph.add_argument("--images", type=int, default=None, help="xray: number of images (default 40)")
    ph.add_argument("--pneumonia-fraction", type=float, default=None, help="xray: fraction of PNEUMONIA images (default 0.5)")
    ph.add_argument("--test-fraction", type=float, default=None, help="xray: fraction of patients held out (default 0.25)")
    ph.add_argument("--size", type=int, default=None, help="xray: image height in pixels (default 256)")
    ph.add_argument("--out", required=True, help="folder to write the phantom into")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--overwrite", action="store_true")
    pr = data.add_parser("prepare", help="slice a BraTS-layout folder into a SliceStore")
    pr.add_argument("--source", required=True, help="folder of <ID>/<ID>_<contrast>.nii.gz subject folders")
    pr.add_argument("--out", required=True, help="SliceStore folder to write")
    pr.add_argument("--channels", default="t1,t1ce,t2,flair,seg", help="comma-separated contrasts")
    pr.add_argument("--size", type=int, default=64, help="image size after padding to 256 (64, 128, 256)")
    pr.add_argument("--reference", default="flair", help="contrast whose foreground selects slices")
    pr.add_argument("--min-foreground", type=float, default=0.15)
    pr.add_argument("--scaling", choices=["max", "percentile"], default="max")
    pr.add_argument("--percentile", type=float, default=99.5)
    pr.add_argument("--test-fraction", type=float, default=0.25)
    pr.add_argument("--n-test", type=int, default=None, help="number of held-out subjects (overrides --test-fraction)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    pr.add_argument("--overwrite", action="store_true")
    px = data.add_parser("prepare-xray", help="read a Kermany-layout chest X-ray folder into a SliceStore")
    px.add_argument("--source", required=True, help="folder with train/ and test/ (and val/) of NORMAL/ and PNEUMONIA/")
    px.add_argument("--out", required=True, help="SliceStore folder to write")
    px.add_argument("--size", type=int, default=64, help="image size (64, 128, 256)")
    px.add_argument("--fit", choices=["pad", "crop"], default="pad", help="make images square by padding or centre-cropping")
    px.add_argument("--split", choices=["given", "image", "patient"], default="given",
                    help="keep the folders' split, or re-split at random by image or by patient")
    px.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction when re-splitting")
    px.add_argument("--seed", type=int, default=0, help="seed of the re-split and of --max-images")
    px.add_argument("--max-images", type=int, default=None, help="keep a seeded random subset of this many images")
    px.add_argument("--overwrite", action="store_true")


def _add_model(sub):
    tr = sub.add_parser("train", help="train a DDPM, latent diffusion model or GAN on a store's train split")
    tr.add_argument("--store", required=True)
    tr.add_argument("--out", required=True, help="run folder (model + checkpoints)")
    tr.add_argument("--model", default="ddpm", choices=["ddpm", "ldm", "gan"])
    tr.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=None, help="learning rate (default: the family's)")
    tr.add_argument("--warmup-steps", type=int, default=0)
    tr.add_argument("--max-images", type=int, default=None)
    tr.add_argument("--augment", default=None, help="none, flip, affine or flip,affine")
    tr.add_argument("--conditional", action="store_true", help="condition on the manifest's label column")
    tr.add_argument("--no-ema", action="store_true", help="keep no EMA copy of the weights")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--no-bf16", action="store_true", help="train in float32")
    tr.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="model-config or family option, e.g. --option beta_schedule squaredcos_cap_v2, "
                         "--option ae_steps 2000, --option diffaugment color,translation (VALUE read as JSON when it parses)")
    tr.add_argument("--overwrite", action="store_true")
    sa = sub.add_parser("sample", help="sample a synthetic SliceStore from a checkpoint of any family")
    sa.add_argument("--checkpoint", required=True)
    sa.add_argument("--out", required=True)
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--steps", type=int, default=50, help="denoising steps (diffusion models)")
    sa.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    sa.add_argument("--eta", type=float, default=0.0)
    sa.add_argument("--labels", default=None, help="class label(s) for a conditional model: one, or comma-separated per image")
    sa.add_argument("--truncation-psi", type=float, default=1.0, help="GAN truncation")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--batch-size", type=int, default=32)
    sa.add_argument("--overwrite", action="store_true")


def _add_search(sub):
    se = sub.add_parser("search", help="top-k Pearson correlation of every query image with a reference store")
    se.add_argument("--queries", required=True, help="SliceStore of query images (e.g. synthetic)")
    se.add_argument("--reference", required=True, help="SliceStore to search (e.g. the training store)")
    se.add_argument("--split", default=None, help="search only this split of the reference (e.g. train)")
    se.add_argument("--k", type=int, default=1)
    se.add_argument("--device", default="auto")
    se.add_argument("--method", default="auto", choices=["auto", "brute", "pruned"])
    se.add_argument("--precision", default="auto", choices=["auto", "bf16", "float32"],
                    help="precision of the screen (the answer is exact either way)")
    se.add_argument("--channels", default=None, help="comma-separated channels to correlate (default: all)")
    se.add_argument("--distinct", default=None, metavar="COLUMN",
                    help="e.g. subject: the best match from each of the k best different subjects")
    se.add_argument("--out", required=True, help="matches table (.parquet or .csv)")


def _add_release(sub):
    de = sub.add_parser("detector", help="train the self-supervised copy detector on a store's train split")
    de.add_argument("--store", required=True)
    de.add_argument("--out", required=True, help="detector folder")
    de.add_argument("--steps", type=int, default=800)
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--overwrite", action="store_true")
    re = sub.add_parser("release", help="write only the synthetic images that are not copies, with a report")
    re.add_argument("--synthetic", required=True, help="SliceStore of synthetic images")
    re.add_argument("--reference", required=True, help="SliceStore with train and test splits (calibration)")
    re.add_argument("--out", required=True)
    re.add_argument("--checkpoint", default=None,
                    help="compare with exactly the images this model was trained on (its training view)")
    re.add_argument("--detector", default=None, help="trained copy detector folder (default: pixel r only)")
    re.add_argument("--rule", default="dar95", choices=["dar95", "test_quantile"])
    re.add_argument("--quantile", type=float, default=0.95, help="quantile of the test_quantile rule")
    re.add_argument("--threshold", type=float, default=None, help="fixed pixel-r threshold instead of the rule")
    re.add_argument("--embedding-threshold", type=float, default=None,
                    help="fixed embedding-similarity threshold instead of the rule (needs --detector)")
    re.add_argument("--format", default="png", choices=["png", "nifti"])
    re.add_argument("--show-training", action="store_true", help="show matched training slices in the report")
    re.add_argument("--overwrite", action="store_true")


def _add_runs(sub):
    ru = sub.add_parser("run", help="execute a notebook through papermill into a run folder")
    ru.add_argument("notebook", help="01_prepare_data, 02_train, 03_sample, 04_memorization or a path")
    ru.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    ru.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="notebook parameter (VALUE is read as JSON when it parses: 3, 0.5, true, null, [..])")
    ru.add_argument("--no-html", action="store_true")
    de = sub.add_parser("demo", help="phantom -> store -> train -> sample -> memorization, into runs/demo")
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a demo setting (see workbench.runs.DEMO)")
    ap = sub.add_parser("app", help="serve a run's match browser and reader study in the browser (Voila, 127.0.0.1)")
    ap.add_argument("run", help="run folder written by 04_memorization, e.g. runs/demo")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--reviewer", default="reviewer", help="reviewer name written beside match marks")
    ap.add_argument("--open", action="store_true", help="open the app in a web browser")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_model(sub)
    _add_search(sub)
    _add_release(sub)
    _add_runs(sub)
    return parser


def _search(args) -> None:
    from pathlib import Path

    from .data.atomic import atomic_file
    from .data.store import SliceStore
    from .memorization import match_table

    queries = SliceStore.open(args.queries)
    reference = SliceStore.open(args.reference)
    if args.split:
        reference = reference.where(split=args.split)
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    t0 = time.time()
    table = match_table(queries, reference, k=args.k, device=args.device, progress=True, method=args.method,
                        precision=args.precision, channels=channels, distinct=args.distinct)
    seconds = time.time() - t0
    stats = table.attrs.get("search_stats", {})
    out = Path(args.out)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False) if out.suffix == ".csv" else table.to_parquet(tmp, index=False)
    pairs = len(queries) * len(reference)
    pruned = f", {1 - stats['full_fraction']:.1%} of pairs pruned" if "full_fraction" in stats else ""
    print(f"searched {len(queries)} queries x {len(reference)} reference images = {pairs:,} pairs in {seconds:.1f} s "
          f"({pairs / max(seconds, 1e-9):,.0f} pairs/s; {stats.get('method', 'brute')}, {stats.get('precision')} screen, "
          f"{stats.get('candidates_per_query', 0):.1f} candidates rescored per query{pruned}); wrote {out}")


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
        from .data.prepare import prepare_brats_store

        prepare_brats_store(args.source, args.out, channels=[c.strip() for c in args.channels.split(",") if c.strip()],
                            size=args.size, reference=args.reference, min_foreground=args.min_foreground,
                            scaling=args.scaling, percentile=args.percentile, test_fraction=args.test_fraction,
                            n_test=args.n_test, seed=args.seed, overwrite=args.overwrite)
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
        train_model(SliceStore.open(args.store).where(split="train"), args.out, model=args.model, preset=args.preset,
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                    max_images=args.max_images, augment=args.augment, conditional=args.conditional,
                    ema=not args.no_ema, checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                    bf16=not args.no_bf16, overwrite=args.overwrite, **options)
    elif args.command == "sample":
        from .sample import sample_model

        labels = None
        if args.labels:
            values = [int(v) for v in args.labels.split(",") if v.strip()]
            labels = values[0] if len(values) == 1 else values
        sample_model(args.checkpoint, args.out, n=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                     labels=labels, truncation_psi=args.truncation_psi, seed=args.seed, batch_size=args.batch_size,
                     overwrite=args.overwrite)
    elif args.command == "search":
        _search(args)
    elif args.command == "detector":
        from .data.store import SliceStore
        from .memorization.detector import train_detector

        train_detector(SliceStore.open(args.store).where(split="train"), args.out, steps=args.steps, seed=args.seed,
                       overwrite=args.overwrite)
    elif args.command == "release":
        from .memorization.release import release_gate

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
        from .runs.demo import DEMO, run_demo
        from .runs.notebook import parse_value

        settings = {name: parse_value(value) for name, value in args.set}
        unknown = sorted(set(settings) - set(DEMO))
        if unknown:
            raise WorkbenchError(f"unknown demo setting(s) {unknown}; known: {sorted(DEMO)}")
        run_demo(args.out, settings)
    elif args.command == "app":
        from .runs.app import serve_app

        status = serve_app(args.run, port=args.port, reviewer=args.reviewer, open_browser=args.open)
        if status:
            raise WorkbenchError(f"voila stopped with status {status} (its messages are above)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (WorkbenchError, FileExistsError, FileNotFoundError) as err:
        print(f"workbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted; nothing half-written was left looking complete", file=sys.stderr)
        return 130
    return 0
