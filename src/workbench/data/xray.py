"""Read chest radiographs in the Kermany pneumonia layout and stream them into a SliceStore.

The layout (Kermany et al. 2018, *chest-xray-pneumonia* on Kaggle) is::

    chest_xray/
      train/NORMAL/IM-0115-0001.jpeg         train/PNEUMONIA/person1_bacteria_1.jpeg
      test/NORMAL/NORMAL2-IM-0007-0001.jpeg  test/PNEUMONIA/person100_virus_184.jpeg
      val/NORMAL/...                         val/PNEUMONIA/...        (optional)

Folder names are matched case-insensitively; images may be JPEG, PNG or DICOM (``.dcm``, read
with pydicom).  Each image becomes one grayscale float32 image in [0, 1], made square by padding
(``fit="pad"``) or centre-cropping (``fit="crop"``) and resized.  Labels are 0 for NORMAL and
1 for PNEUMONIA; the patient id comes from the file name (``person1_virus_6`` -> ``person1``,
``IM-0115-0001`` -> ``IM-0115``) or, for DICOM, from the PatientID tag.

Every problem with an input file or folder is a :class:`~workbench.errors.DataError` that names
it.

Example
-------
>>> table = find_xrays("data/chest_xray")                                  # doctest: +SKIP
>>> table.groupby(["split", "class_name"]).size()                          # doctest: +SKIP
>>> store = prepare_xray_store("data/chest_xray", "runs/cxr64/store", size=64)   # doctest: +SKIP
"""
from __future__ import annotations

import numbers
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from ..progress import tqdm

from ..errors import DataError, option_hint
from .store import SliceStore, StoreWriter

#: Class folder name -> label.
CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
#: Split folders, in the order images are listed and written.
SPLITS = ("train", "val", "test")
#: File suffixes read as images (matched case-insensitively).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm")
FITS = ("pad", "crop")
SPLIT_MODES = ("given", "image", "patient")
CHANNEL = "xray"
COLUMNS = ("path", "split", "class_name", "label", "subject", "kind")

_PERSON = re.compile(r"^(person\d+)(?:_|$)", re.IGNORECASE)
_IM = re.compile(r"^(.*IM-\d+)-\d+$", re.IGNORECASE)
_KIND = re.compile(r"(?:^|_)(bacteria|virus)(?:_|$)", re.IGNORECASE)
# Percentiles that map to 0 and 1 when raw (DICOM, 16-bit) intensities are scaled to [0, 1].
_ROBUST = (0.5, 99.5)
_BLOCK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# finding the images
# --------------------------------------------------------------------------------------------


def parse_xray_name(name: str) -> tuple[str, str | None]:
    """Patient id and pneumonia kind from a Kermany file name.

    ``person<N>_<kind>_<k>`` gives ``person<N>`` and the kind (``bacteria`` / ``virus``);
    ``[PREFIX-]IM-<N>-<k>`` gives ``[PREFIX-]IM-<N>``; any other name gives its stem and no kind.

    >>> parse_xray_name("person1_bacteria_1.jpeg")
    ('person1', 'bacteria')
    >>> parse_xray_name("NORMAL2-IM-0007-0001.jpeg")
    ('NORMAL2-IM-0007', None)
    """
    stem = Path(name).name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    kind = _KIND.search(stem)
    kind = kind.group(1).lower() if kind else None
    for rule in (_PERSON, _IM):
        match = rule.match(stem)
        if match:
            return match.group(1), kind
    return stem, kind


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (f" ... ({len(names)} entries)" if len(names) > limit else "")


def _subfolders(folder: Path, wanted) -> dict[str, list[Path]]:
    """Sub-folders of ``folder`` whose lower-cased name is in ``wanted`` (several per name if case differs)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name.lower() in wanted:
            found.setdefault(p.name.lower(), []).append(p)
    return found


def _layout_hint(folder: Path) -> str:
    """Point at a nested folder that has the layout (the Kaggle zip nests ``chest_xray/chest_xray``)."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        for deeper in (sub, *sorted(p for p in sub.iterdir() if p.is_dir())):
            if _subfolders(deeper, SPLITS):
                return f"; did you mean {deeper}?"
    return ""


def _dicom_patient(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as err:  # pydicom raises several types for a damaged file
        raise DataError(f"{path}: cannot read DICOM header ({err})") from None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def _not_read(folder: Path, entries: list[Path], what: str, why: str) -> dict:
    """One ``skipped`` record for the files or folders of ``folder`` that are not read."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in entries)
    example = ", ".join(names[:3]) + (f" ... ({len(names)} in all)" if len(names) > 3 else "")
    what = what if len(names) == 1 else {"entry": "entries"}.get(what, what + "s")
    return {"path": str(folder), "reason": f"{len(names)} {what} not read ({example}): {why}"}


def scan_xrays(source) -> tuple[pd.DataFrame, list[dict]]:
    """The images of a Kermany-layout folder (see :func:`find_xrays`) and what was not read.

    ``skipped`` lists, one record ``{"path": folder, "reason": ...}`` per folder, the files and
    folders that the layout does not read: folders that are not a split (``train`` / ``val`` /
    ``test``) or class (``NORMAL`` / ``PNEUMONIA``) folder, files of other types in a class
    folder (a DICOM file needs the ``.dcm`` suffix), sub-folders of a class folder, and images
    outside the class folders.  Hidden entries (``.DS_Store``, ``._*``, ``__MACOSX``) are not listed.

    >>> table, skipped = scan_xrays("data/chest_xray")              # doctest: +SKIP
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: folder does not exist")
    splits = _subfolders(source, SPLITS)
    if "train" not in splits and "test" not in splits:
        raise DataError(
            f"{source}: no train/ or test/ folder found (expected the Kermany layout "
            f"<split>/NORMAL|PNEUMONIA/*.jpeg); found {_listing(source)}{_layout_hint(source)}"
        )
    visible = lambda folder: [p for p in sorted(folder.iterdir()) if not p.name.startswith((".", "__"))]  # noqa: E731
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    skipped = []
    other = [p for p in visible(source) if p.is_dir() and p.name.lower() not in SPLITS]
    if other:
        skipped.append(_not_read(source, other, "folder", "not a split folder (train, val, test)"))
    rows = []
    for split in SPLITS:
        for split_dir in splits.get(split, []):
            classes = _subfolders(split_dir, {c.lower() for c in CLASSES})
            if not classes:
                raise DataError(
                    f"{split_dir}: no NORMAL/ or PNEUMONIA/ class folder found; found {_listing(split_dir)}"
                )
            stray = [p for p in visible(split_dir) if (p.is_dir() and p.name.upper() not in CLASSES) or is_image(p)]
            if stray:
                skipped.append(_not_read(split_dir, stray, "entry", "only the NORMAL/ and PNEUMONIA/ folders are read here"))
            for class_name, label in CLASSES.items():
                for class_dir in classes.get(class_name.lower(), []):
                    entries = visible(class_dir)
                    files = [p for p in entries if is_image(p)]
                    others = [p for p in entries if p.is_file() and not is_image(p)]
                    if others:
                        skipped.append(_not_read(class_dir, others, "file", f"only {', '.join(IMAGE_SUFFIXES)} "
                                                 f"files are read (a DICOM file needs the .dcm suffix)"))
                    folders = [p for p in entries if p.is_dir()]
                    if folders:
                        skipped.append(_not_read(class_dir, folders, "folder", "images must lie directly in the "
                                                 "class folder"))
                    for path in sorted(files, key=lambda p: _natural_key(p.name)):
                        subject, kind = parse_xray_name(path.name)
                        if path.suffix.lower() == ".dcm":
                            subject = _dicom_patient(path) or subject
                        rows.append({"path": str(path), "split": split, "class_name": class_name, "label": label,
                                     "subject": subject, "kind": kind})
    if not rows:
        found = "; ".join(f"{d}: {_listing(d)}" for ds in splits.values() for d in ds)
        raise DataError(
            f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders; found {found}"
        )
    return pd.DataFrame(rows, columns=list(COLUMNS)), skipped


def find_xrays(source) -> pd.DataFrame:
    """List the images of a Kermany-layout folder: ``<split>/<CLASS>/<image>``.

    Split folders ``train``, ``test`` and (if present) ``val``; class folders ``NORMAL`` and
    ``PNEUMONIA``; images ``.jpeg``, ``.jpg``, ``.png`` or ``.dcm`` (all case-insensitive).
    Hidden files (``.DS_Store``, ``._*``) are ignored; other files and folders that the layout
    does not read are named in a warning (see :func:`scan_xrays`).

    Parameters
    ----------
    source : str or Path
        The folder that holds the split folders.

    Returns
    -------
    pandas.DataFrame
        One row per image, ordered by split (train, val, test), class and file name, with
        columns ``path`` (str), ``split``, ``class_name`` (NORMAL / PNEUMONIA), ``label``
        (0 / 1), ``subject`` (patient id: the DICOM PatientID tag, else from the file name,
        see :func:`parse_xray_name`) and ``kind`` (bacteria / virus / None).

    Examples
    --------
    >>> table = find_xrays("data/chest_xray")                     # doctest: +SKIP
    >>> table.loc[0, ["split", "class_name", "subject"]].tolist()  # doctest: +SKIP
    ['train', 'NORMAL', 'IM-0115']
    """
    table, skipped = scan_xrays(source)
    for item in skipped:
        warnings.warn(f"{item['path']}: {item['reason']}", stacklevel=2)
    return table


# --------------------------------------------------------------------------------------------
# reading one image
# --------------------------------------------------------------------------------------------


def _robust_unit(x: np.ndarray) -> np.ndarray:
    """Scale raw intensities so the 0.5th / 99.5th percentiles map to 0 / 1, clipped."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = np.percentile(x, _ROBUST)
    if not hi > lo:
        lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise DataError(f"{path}: cannot read DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataError(f"{path}: cannot decode DICOM pixel data (transfer syntax {syntax}; compressed DICOM "
                        f"needs a decoder such as pylibjpeg or gdcm): {err}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: DICOM file holds {frames} frames; expected one radiograph")
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour DICOM (RGB / YBR decoded to RGB)
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if pixels.ndim != 2:
        raise DataError(f"{path}: DICOM pixel data has shape {pixels.shape}; expected a 2-D grayscale image")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    image = _robust_unit(pixels * np.float32(slope) + np.float32(intercept))
    if photometric == "MONOCHROME1":  # low values are bright: invert so that bone is bright
        image = 1.0 - image
    return image


def _read_pil(path: Path, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and img.mode in ("L", "RGB", "YCbCr"):
                img.draft("L", (size, size))  # decode at a reduced scale when the file is much larger
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from None
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: image has no pixels ({img.width} x {img.height})")
    if img.mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0)
    array = np.asarray(img)  # 16-bit ("I;16", "I;16B") or 32-bit ("I", "F") grayscale: raw values
    if array.ndim != 2:
        raise DataError(f"{path}: image mode {img.mode} with shape {array.shape} is not a grayscale radiograph")
    return _robust_unit(array.astype(np.float32))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased resize of a [0, 1] image (area average when shrinking, bilinear when enlarging)."""
    from PIL import Image

    if image.shape == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize((width, height), method)
    return np.asarray(out, dtype=np.float32)


def fit_square(image: np.ndarray, *, size: int, fit: str = "pad") -> np.ndarray:
    """Make a 2-D [0, 1] image square and ``size`` x ``size``.

    ``fit="pad"`` resizes the long side to ``size`` and pads the short side with black (0,
    the value of air on a radiograph), centred; ``fit="crop"`` keeps the centred square of the
    short side and resizes it.

    >>> float(fit_square(np.ones((20, 40), np.float32), size=10).mean())
    0.5
    """
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    h, w = image.shape
    if fit == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return _resize(image[top:top + side, left:left + side], size, size).clip(0, 1)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = _resize(image, nh, nw).clip(0, 1)
    out = np.zeros((size, size), np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def read_xray(path, *, size: int, fit: str = "pad") -> np.ndarray:
    """Read one chest radiograph as a grayscale float32 ``(size, size)`` image in [0, 1].

    JPEG and PNG files are read with Pillow: 8-bit, palette, RGB and RGBA images are converted
    to 8-bit grayscale and divided by 255; 16- and 32-bit grayscale images are scaled so that
    their 0.5th / 99.5th percentiles map to 0 / 1.  DICOM files are read with pydicom:
    RescaleSlope / RescaleIntercept are applied, intensities scaled the same robust way, and
    MONOCHROME1 images inverted so that bone is bright.  See :func:`fit_square` for ``fit``.

    Parameters
    ----------
    path : str or Path
        A ``.jpeg`` / ``.jpg`` / ``.png`` / ``.dcm`` file.
    size : int
        Output height and width in pixels.
    fit : {"pad", "crop"}, optional
        Pad the short side with black (keeps the whole image) or centre-crop the long side.

    Examples
    --------
    >>> img = read_xray("chest_xray/test/NORMAL/IM-0001-0001.jpeg", size=64)   # doctest: +SKIP
    >>> img.shape, img.dtype                                                   # doctest: +SKIP
    ((64, 64), dtype('float32'))
    """
    _check_size(size)
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    image = _read_dicom(path) if path.suffix.lower() == ".dcm" else _read_pil(path, size)
    if np.isfinite(image).all():
        image = fit_square(image, size=size, fit=fit)
    if not np.isfinite(image).all():  # checked on the result: the store would only name itself
        raise DataError(f"{path}: image has non-finite pixel values")
    return image


# --------------------------------------------------------------------------------------------
# building a store
# --------------------------------------------------------------------------------------------


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 8 <= size <= 2048:
        raise DataError(f"size must be an image size between 8 and 2048 such as 64, 128 or 256, got {size!r}")


def split_images(n: int, *, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Seeded train/test assignment of ``n`` images by image: an array of ``"train"`` / ``"test"``.

    ``round(test_fraction * n)`` images go to test (at least one when ``test_fraction > 0``
    and ``n > 1``, never all of them).

    >>> split_images(5, test_fraction=0.4, seed=0).tolist().count("test")
    2
    """
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n > 1:
        n_test = max(1, n_test)
    n_test = min(n_test, max(n - 1, 0))
    out = np.full(n, "train", dtype=object)
    out[np.random.default_rng(seed).permutation(n)[:n_test]] = "test"
    return out


def _assign_splits(table: pd.DataFrame, split: str, test_fraction: float, seed: int) -> pd.Series:
    if split == "given":
        return table["split"]
    if split == "image":
        return pd.Series(split_images(len(table), test_fraction=test_fraction, seed=seed), index=table.index)
    from .prepare import split_subjects

    by_subject = split_subjects(table["subject"].unique().tolist(), test_fraction=test_fraction, seed=seed)
    return table["subject"].map(by_subject)


def _summary(table: pd.DataFrame) -> dict:
    counts = {s: {c: int(n) for c, n in g.groupby("class_name").size().items()} for s, g in table.groupby("split")}
    subjects = {s: int(g["subject"].nunique()) for s, g in table.groupby("split")}
    several = int((table.groupby("subject")["split"].nunique() > 1).sum())
    return {"images": counts, "subjects": subjects, "subjects_in_several_splits": several}


def subset_images(splits, n: int, max_images: int, *, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded random subset of ``max_images`` of ``n`` images.

    With ``splits`` (each image's split, as the folders give it) the subset keeps each split's
    share, and at least one image of each split while ``max_images`` allows (train first, then
    test, then val), so that a quick run keeps a test split; without, it is drawn uniformly.

    >>> subset_images(["train"] * 8 + ["test"] * 2, 10, 3, seed=0).tolist()[-1] >= 8
    True
    """
    rng = np.random.default_rng([seed, 1])
    if splits is None:
        return np.sort(rng.choice(n, size=max_images, replace=False))
    splits = np.asarray(splits, dtype=object)
    groups = {s: np.flatnonzero(splits == s) for s in ("train", "test", "val") if (splits == s).any()}
    share = {s: max_images * len(ix) / n for s, ix in groups.items()}
    alloc = dict.fromkeys(groups, 0)
    for s in groups:  # one image of each split first, in order of importance
        if sum(alloc.values()) < max_images:
            alloc[s] = 1
    while sum(alloc.values()) < max_images:  # then the rest to the split furthest below its share
        s = max((s for s in groups if alloc[s] < len(groups[s])), key=lambda s: share[s] - alloc[s])
        alloc[s] += 1
    keep = [rng.choice(groups[s], size=alloc[s], replace=False) for s in groups if alloc[s]]
    return np.sort(np.concatenate(keep))


def _in_splits(table: pd.DataFrame) -> str:
    counts = table["split"].value_counts()
    return ", ".join(f"{n} in {s}/" for s, n in counts.items())


def _check_splits(source, found: pd.DataFrame, table: pd.DataFrame, *, split: str, test_fraction: float,
                  max_images: int | None) -> None:
    """Refuse a store without training images, or without test images when a test split was asked for."""
    n = table["split"].value_counts()
    given = f"{option_hint('split', 'given')} keeps the folders' split"
    resplit = f"re-split with {option_hint('split', 'image')} or {option_hint('split', 'patient')}"
    if not n.get("train", 0):
        if split == "given" and (found["split"] == "train").any():
            raise DataError(f"{source}: {option_hint('max_images', max_images)} kept no training image (the subset has "
                            f"{_in_splits(table)}); keep more images or {resplit}")
        raise DataError(f"{source}: no training images: the {len(table)} images are {_in_splits(table)} and {given}; "
                        f"put training images in train/NORMAL/ and train/PNEUMONIA/ or {resplit}")
    if n.get("test", 0):
        return
    if split == "given" and (found["split"] == "test").any():
        raise DataError(f"{source}: {option_hint('max_images', max_images)} kept no test image (the subset has "
                        f"{_in_splits(table)}); keep more images or {resplit}")
    if split == "image" and test_fraction > 0:
        raise DataError(f"{source}: {option_hint('test_fraction', test_fraction)} would leave the test split empty: "
                        f"there is only one image ({table['path'].iloc[0]}); set {option_hint('test_fraction', 0)} "
                        f"or add images")
    if split == "patient" and test_fraction > 0:
        raise DataError(f"{source}: {option_hint('test_fraction', test_fraction)} would leave the test split empty: "
                        f"all {len(table)} images are of one patient ({table['subject'].iloc[0]}); set "
                        f"{option_hint('split', 'image')}, {option_hint('test_fraction', 0)} or add patients")
    if split == "given":
        print(f"warning: {source}: no test images (no test/ folder with images); the store has no test split")


def prepare_xray_store(source, out, *, size: int = 64, fit: str = "pad", split: str = "given",
                       test_fraction: float = 0.2, seed: int = 0, max_images: int | None = None,
                       overwrite: bool = False, progress: bool = True) -> SliceStore:
    """Read a Kermany-layout folder of chest radiographs into a one-channel SliceStore.

    Images are streamed in blocks (memory holds one block, never the data set), each read by
    :func:`read_xray`.  Manifest rows: ``subject`` (patient id), ``source`` (the file),
    ``split``, ``label`` (0 NORMAL, 1 PNEUMONIA), ``z`` / ``prev`` / ``next`` empty, plus
    ``class_name`` and ``kind`` (bacteria / virus / None).  The channel is called ``"xray"``.

    No image is dropped silently: files and folders the layout does not read are printed and
    listed under ``skipped`` in ``store.json``, and a store without training images, or
    without test images when a test split was asked for (a re-split with ``test_fraction > 0``,
    or a ``max_images`` subset that leaves out every image of ``test/``), is a
    :class:`DataError` and nothing is written.  An unreadable image stops the whole store with
    an error naming the file.

    Parameters
    ----------
    source : str or Path
        Folder with ``train/``, ``test/`` (and optional ``val/``) split folders, see
        :func:`find_xrays`.
    out : str or Path
        Store folder to write.
    size : int, optional
        Image size (64, 128, 256, ...).
    fit : {"pad", "crop"}, optional
        How a non-square radiograph is made square (see :func:`fit_square`).
    split : {"given", "image", "patient"}, optional
        ``"given"`` keeps the folders' split (train / val / test); ``"image"`` re-splits all
        images into train / test at random, image by image (a patient's images may land on
        both sides); ``"patient"`` re-splits by patient id (no patient on both sides).
    test_fraction : float, optional
        Fraction of images (``"image"``) or patients (``"patient"``) held out for test.
    seed : int, optional
        Seed of the re-split and of the ``max_images`` subset (written to the store's metadata).
    max_images : int, optional
        Keep a seeded random subset of this many images (for quick runs).  With
        ``split="given"`` the subset keeps each folder split's share and at least one image of
        each split (see :func:`subset_images`).
    overwrite : bool, optional
        Replace an existing store at ``out``.
    progress : bool, optional
        Show a progress bar and print what was written.

    Examples
    --------
    >>> store = prepare_xray_store("data/chest_xray", "runs/cxr64/store", size=64)   # doctest: +SKIP
    >>> store.where(split="train", label=1)                                          # doctest: +SKIP
    """
    _check_size(size)
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    if split not in SPLIT_MODES:
        raise DataError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, numbers.Integral)
                                   or max_images < 1):
        raise DataError(f"max_images must be a positive integer or None, got {max_images!r}")

    table, skipped = scan_xrays(source)
    for item in skipped:
        print(f"warning: {item['path']}: {item['reason']}")
    found = table
    if max_images is not None and max_images < len(table):
        keep = subset_images(table["split"] if split == "given" else None, len(table), max_images, seed=seed)
        table = table.iloc[keep].reset_index(drop=True)
    table = table.assign(split=_assign_splits(table, split, test_fraction, seed).to_numpy())
    _check_splits(source, found, table, split=split, test_fraction=test_fraction, max_images=max_images)
    summary = _summary(table)
    meta = {
        "source": str(Path(source).resolve()),
        "modality": "chest radiograph",
        "layout": "kermany",
        "options": dict(size=size, fit=fit, split=split, test_fraction=test_fraction, seed=seed, max_images=max_images),
        "labels": dict(CLASSES),
        "orientation": "as stored in the files (PA view: the patient's left on the image's right)",
        "images_found": len(found),
        "skipped": skipped,
        **summary,
    }
    block = max(1, min(512, _BLOCK_BYTES // (size * size * 4)))
    with StoreWriter(out, channels=[CHANNEL], height=size, width=size, kind="real", meta=meta,
                     overwrite=overwrite) as writer:
        bar = tqdm(total=len(table), desc="reading radiographs", unit="image", disable=not progress)
        try:
            for start in range(0, len(table), block):
                part = table.iloc[start:start + block]
                images = np.empty((len(part), 1, size, size), np.float32)
                for i, path in enumerate(part["path"]):
                    images[i, 0] = read_xray(path, size=size, fit=fit)
                    bar.update(1)
                rows = [{"subject": r.subject, "source": r.path, "split": r.split, "label": int(r.label),
                         "z": None, "prev": None, "next": None, "class_name": r.class_name, "kind": r.kind}
                        for r in part.itertuples(index=False)]
                writer.append(images, rows)
        finally:
            bar.close()
    store = SliceStore.open(out)
    if progress:
        counts = store.manifest.groupby(["split", "class_name"]).size().to_dict()
        counts = ", ".join(f"{s}/{c}: {n}" for (s, c), n in counts.items())
        print(f"wrote {store.path}: {len(store)} radiographs {store.image_shape} from "
              f"{table['subject'].nunique()} patients ({counts})")
        if summary["subjects_in_several_splits"]:
            print(f"note: {summary['subjects_in_several_splits']} patient id(s) have images in more than one split")
    return store
