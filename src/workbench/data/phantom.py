"""Built-in brain phantom: synthetic BraTS-style subjects made from the MNI152 template.

The workbench needs data that anyone can generate offline in a few seconds, looks like a
BraTS training set (four MR contrasts plus a tumour segmentation, 240 x 240 x 155 voxels at
1 mm) and contains *different* people, so that a model which copies its training patients can
be caught.  Every subject is the MNI152 2009a template that nilearn installs (T1 plus grey and
white matter probability maps, no download), warped by its own random global affine and
smooth deformation, given a random glioma (BraTS labels 1 necrotic core, 2 oedema, 4 enhancing
rim) and rendered into T1, T1ce, T2 and FLAIR from tissue probabilities with per-subject
contrast, texture, bias field and noise.

Subject ``i`` depends only on ``(seed, i)``: ``subjects=3`` writes the same first three
subjects as ``subjects=10``, and the same seed gives byte-identical files.

Example
-------
>>> from workbench.data.phantom import write_brain_phantom
>>> folders = write_brain_phantom("data/phantom", subjects=10, seed=0)   # doctest: +SKIP
>>> folders[0].name                                                       # doctest: +SKIP
'Phantom_001'
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import multiprocessing
import os
import shlex
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..errors import DataError, check_int, option_hint
from .atomic import atomic_dir, atomic_file, replace_path
from .temporaries import remove_path, temporary_name

#: File suffixes of one phantom subject, in BraTS order: ``<ID>_<suffix>.nii.gz``.
PHANTOM_CONTRASTS = ("t1", "t1ce", "t2", "flair", "seg")

#: Volume shape and affine of every phantom volume.  Like BraTS (SRI24 space) the voxel axes
#: run right-to-left, anterior-to-posterior and inferior-to-superior (axcodes L, P, S; axial
#: slices along the third axis) at 1 mm.  The offsets put world (0, 0, 0) at the MNI origin,
#: so world coordinates are roughly MNI coordinates (BraTS files use offsets (0, 239, 0)).
PHANTOM_SHAPE = (240, 240, 155)
PHANTOM_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 120.0], [0.0, -1.0, 0.0, 103.0], [0.0, 0.0, 1.0, -62.0], [0.0, 0.0, 0.0, 1.0]]
)

_ID_FORMAT = "Phantom_{:03d}"
_MAX_SUBJECTS = 999
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# Per-subject geometry: rotation (degrees, sd per axis), global and per-axis scale ranges,
# shift (mm, sd), RMS of the smooth deformation (mm, per axis) and its control-point spacing.
# Rotation and scaling act about a point near the top of the brain, so the vertex stays inside
# the 155 slices and size differences show at the (already truncated) brain stem, as in BraTS.
_GEOMETRY = {
    "rotation_sd": 3.0,
    "scale": 0.07,
    "axis_scale": 0.04,
    "shift_sd": 3.0,
    "deformation_mm": 3.5,
    "spacing_mm": 35.0,
    "centre_mni": (0.0, -17.0, 70.0),
}

# Tissue classes, in the order of the columns of _MEANS.
_CLASSES = ("csf", "gm", "wm", "necrosis", "oedema", "enhancing")
# Typical BraTS-like intensities per contrast (rows) and class (columns).  Orderings that the
# tests check: T1 WM > GM > CSF; T1ce rim brightest; T2 CSF brightest, GM > WM, oedema bright;
# FLAIR CSF dark, oedema brightest, GM > WM.  Per-subject jitter (+-7 %) keeps these orderings.
_MEANS = {
    "t1": (350.0, 750.0, 1000.0, 450.0, 700.0, 800.0),
    "t1ce": (380.0, 780.0, 1000.0, 420.0, 720.0, 1800.0),
    "t2": (2000.0, 1150.0, 800.0, 1650.0, 1600.0, 1300.0),
    "flair": (200.0, 950.0, 750.0, 900.0, 1700.0, 1200.0),
}
# Exponent of the anatomical texture (template T1 relative to its tissue model) per contrast.
_TEXTURE_POWER = {"t1": 0.6, "t1ce": 0.6, "t2": -0.4, "flair": -0.3}
_T1_TEMPLATE_MEANS = (77.0, 166.0, 220.0)  # template T1 in CSF, GM, WM (0..255 scale)


# --------------------------------------------------------------------------------------------
# template
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _template_maps() -> dict:
    """Load the MNI152 maps once per process.

    Returns a dict with ``maps``: uint8 ``(4, X, Y, Z)`` in the order csf, gm, wm, t1 on the
    template grid (RAS, 1 mm, 197 x 233 x 189; probabilities scaled to 0..255, CSF = brain
    minus GM minus WM); ``near``: the brain mask dilated by one voxel (any voxel outside it
    interpolates to zero); ``affine`` and the voxel bounding box ``bbox`` of the brain.
    """
    arrays, affine = {}, None
    for name in ("t1", "gm", "wm"):
        path = _template_path(name)
        try:
            img = nib.load(path)
            arrays[name] = np.asarray(img.dataobj).astype(np.uint8)
        except Exception as exc:  # missing or damaged nilearn install
            raise DataError(f"{path}: cannot read the MNI152 template that nilearn installs ({exc})") from exc
        affine = img.affine if affine is None else affine
    brain = arrays["t1"] > 0
    gm = arrays["gm"][brain].astype(np.float32)
    wm = arrays["wm"][brain].astype(np.float32)
    scale = np.maximum(gm + wm, 255.0) / 255.0  # probabilities never sum past 1
    gm, wm = np.rint(gm / scale), np.rint(wm / scale)
    maps = np.zeros((4,) + brain.shape, np.uint8)
    maps[0][brain] = 255.0 - gm - wm
    maps[1][brain] = gm
    maps[2][brain] = wm
    maps[3] = arrays["t1"]
    near = ndi.maximum_filter(brain.view(np.uint8), size=3).astype(bool)
    idx = np.argwhere(brain)
    return {"maps": maps, "near": near, "affine": affine, "bbox": (idx.min(0), idx.max(0))}


def _template_path(name: str) -> Path:
    """Path of a nilearn data file, found without importing nilearn (which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed: the brain phantom needs its MNI152 template files")
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / "datasets" / "data" / _TEMPLATE.format(name)


# --------------------------------------------------------------------------------------------
# smooth random fields and the per-subject geometry
# --------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, axes: tuple[np.ndarray, ...], *, spacing: float) -> np.ndarray:
    """Random smooth 3-D field on the grid ``axes`` (mm), normalised to zero mean, unit std.

    The field is a random combination of Gaussian bumps on a coarse lattice with ``spacing``
    mm between control points, i.e. a low-resolution random field upsampled smoothly.  It is
    separable, so it is built from small tensor contractions; no BLAS is used, so the result
    does not depend on the number of threads.

    >>> rng = np.random.default_rng(0)
    >>> f = _smooth_field(rng, (np.arange(20.0), np.arange(30.0), np.arange(10.0)), spacing=10)
    >>> f.shape, round(float(f.std()), 1)
    ((20, 30, 10), 1.0)
    """
    bases = []
    for x in axes:
        centres = np.arange(x.min() - spacing, x.max() + 1.5 * spacing, spacing)
        bases.append(np.exp(-0.5 * ((x[:, None] - centres[None, :]) / (0.7 * spacing)) ** 2))
    bx, by, bz = bases
    coef = rng.standard_normal((bx.shape[1], by.shape[1], bz.shape[1]))
    small = np.einsum("abc,zc->abz", coef, bz)
    small = np.einsum("abz,yb->ayz", small, by).astype(np.float32)
    field = np.zeros((len(axes[0]), len(axes[1]), len(axes[2])), np.float32)
    for a in range(bx.shape[1]):
        field += bx[:, a, None, None].astype(np.float32) * small[a][None]
    sample = field[::3, ::3, ::3]  # statistics of a sub-grid are plenty for a smooth field
    field -= np.float32(sample.mean(dtype=np.float64))
    field /= np.float32(max(float(sample.std(dtype=np.float64)), 1e-12))
    return field


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles in degrees (about x, then y, then z)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _subject_affine(rng: np.random.Generator, template_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random global affine: phantom voxel ``p`` -> template voxel ``M @ p + b``.

    Rotation of a few degrees about each axis, a global scale of +-7 % with +-4 % per axis,
    and a shift of a few mm (see ``_GEOMETRY``).
    """
    g = _GEOMETRY
    angles = rng.normal(0.0, g["rotation_sd"], 3).clip(-2.5 * g["rotation_sd"], 2.5 * g["rotation_sd"])
    scale = rng.uniform(1 - g["scale"], 1 + g["scale"]) * rng.uniform(1 - g["axis_scale"], 1 + g["axis_scale"], 3)
    shift = rng.normal(0.0, g["shift_sd"], 3).clip(-2.5 * g["shift_sd"], 2.5 * g["shift_sd"])
    shift[2] = abs(shift[2])  # template shifted up = brain moved down in the volume, never up
    linear = _rotation(angles) @ np.diag(scale)  # subject world -> template world
    world_to_template = np.linalg.inv(template_affine)
    out_lin, out_off = PHANTOM_AFFINE[:3, :3], PHANTOM_AFFINE[:3, 3]
    c = np.array(g["centre_mni"])
    m_world = linear @ out_lin
    b_world = linear @ (out_off - c) + c + shift
    m = world_to_template[:3, :3] @ m_world
    b = world_to_template[:3, :3] @ b_world + world_to_template[:3, 3]
    return m, b


def _crop_box(m: np.ndarray, b: np.ndarray, bbox, margin: float) -> tuple[slice, slice, slice]:
    """Box of phantom voxels that can map into the template brain (plus ``margin`` mm)."""
    lo, hi = bbox[0] - margin, bbox[1] + margin
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    p = np.linalg.solve(m, (corners - b).T).T
    start = np.clip(np.floor(p.min(0)).astype(int), 0, PHANTOM_SHAPE)
    stop = np.clip(np.ceil(p.max(0)).astype(int) + 1, 0, PHANTOM_SHAPE)
    return tuple(slice(int(a), int(z)) for a, z in zip(start, stop))


def _warp_anatomy(rng: np.random.Generator) -> tuple[dict, tuple]:
    """Warp the template maps into one subject's anatomy on a crop of the phantom grid.

    Returns the maps ``csf, gm, wm, t1`` (float32, crop-sized) and the crop box (three slices
    of the 240 x 240 x 155 grid).  The deformation is a smooth random displacement field with
    ``_GEOMETRY["deformation_mm"]`` RMS per axis (clipped at 3 RMS).
    """
    template = _template_maps()
    m, b = _subject_affine(rng, template["affine"])
    deformation_mm, spacing = _GEOMETRY["deformation_mm"], _GEOMETRY["spacing_mm"]
    dmax = 3.0 * deformation_mm
    box = _crop_box(m, b, template["bbox"], dmax + 2)
    axes = tuple(np.arange(s.start, s.stop, dtype=np.float64) for s in box)
    coords = np.empty((3,) + tuple(len(x) for x in axes), np.float32)
    for a, c in enumerate(coords):  # template voxel = M @ p + b + smooth displacement
        c[...] = _smooth_field(rng, axes, spacing=spacing)
        c *= np.float32(deformation_mm)
        np.clip(c, -dmax, dmax, out=c)
        c += (m[a, 0] * axes[0]).astype(np.float32)[:, None, None]
        c += (m[a, 1] * axes[1]).astype(np.float32)[None, :, None]
        c += (m[a, 2] * axes[2] + b[a]).astype(np.float32)[None, None, :]

    # only points near the template brain can be non-zero: interpolate those, zero elsewhere
    near = template["near"]
    flat = np.zeros(coords[0].size, np.int32)
    for c, size in zip(coords, near.shape):
        idx = np.rint(c.ravel()).astype(np.int32)
        np.clip(idx, 0, size - 1, out=idx)
        flat *= size
        flat += idx
    sel = np.flatnonzero(near.ravel()[flat])
    points = coords.reshape(3, -1)[:, sel]
    shape = coords.shape[1:]
    del coords, flat, idx
    maps = {}
    for n, name in enumerate(("csf", "gm", "wm", "t1")):
        values = ndi.map_coordinates(
            template["maps"][n], points, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
        )
        full = np.zeros(shape, np.float32)
        full.ravel()[sel] = values * np.float32(1 / 255)
        maps[name] = full
    return maps, box


# --------------------------------------------------------------------------------------------
# tumour
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return noise / max(float(noise.std()), 1e-12)


def _tumour_centre(rng: np.random.Generator, wm: np.ndarray, brain: np.ndarray, box, radius: float) -> np.ndarray:
    """Pick a tumour centre (crop voxel) in deep white matter of the cerebrum.

    Candidates are voxels with WM probability > 0.9 between ~5 mm below and ~55 mm above the
    MNI origin; a candidate is accepted when at least 85 % of a sphere of 0.8 ``radius``
    around it lies inside the brain (rejection sampling, best candidate as fallback).
    """
    z_world = np.arange(box[2].start, box[2].stop) + PHANTOM_AFFINE[2, 3]
    zsel = (z_world > -5) & (z_world < 55)
    cand = np.flatnonzero((wm[:, :, zsel] > 0.9).ravel())
    if cand.size == 0:  # cannot happen with the MNI template, but never loop forever
        cand = np.flatnonzero((wm > 0.5).ravel())
        zsel = np.ones(wm.shape[2], bool)
    sub_shape = (wm.shape[0], wm.shape[1], int(zsel.sum()))
    z_index = np.flatnonzero(zsel)
    directions = rng.standard_normal((64, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    best, best_frac = None, -1.0
    for _ in range(200):
        i, j, kk = np.unravel_index(cand[rng.integers(cand.size)], sub_shape)
        centre = np.array([i, j, z_index[kk]], float)
        pts = np.rint(centre + 0.8 * radius * directions).astype(int)
        ok = np.all((pts >= 0) & (pts < brain.shape), axis=1)
        inside = np.zeros(len(pts), bool)
        inside[ok] = brain[pts[ok, 0], pts[ok, 1], pts[ok, 2]]
        frac = inside.mean()
        if frac > best_frac:
            best, best_frac = centre, frac
        if frac >= 0.85:
            break
    return best


def _place_tumour(rng: np.random.Generator, maps: dict, brain: np.ndarray, box) -> tuple[np.ndarray, tuple, dict]:
    """Draw a glioma: BraTS labels in a local box, plus soft class maps for rendering.

    Oedema radius 12-30 mm with a noise-modulated boundary that reaches further into white
    matter; an enhancing rim 1.5-3.5 mm thick around a necrotic core, the core slightly off the
    centre of the oedema.  Returns the label box (uint8 in {0, 1, 2, 4}), its slices into the
    crop, and soft probability maps (float32) of necrosis / oedema / enhancing in that box.
    """
    r_oedema = rng.uniform(12.0, 30.0)
    rim = rng.uniform(1.5, 3.5)
    r_core = max(rng.uniform(0.35, 0.6) * r_oedema, rim + 3.0)
    centre = _tumour_centre(rng, maps["wm"], brain, box, r_oedema)
    offset = rng.normal(0.0, 0.12 * r_oedema, 3).clip(-0.2 * r_oedema, 0.2 * r_oedema)

    half = int(math.ceil(1.5 * r_oedema)) + 4
    lo = np.maximum(np.rint(centre).astype(int) - half, 0)
    hi = np.minimum(np.rint(centre).astype(int) + half + 1, brain.shape)
    local = tuple(slice(int(a), int(z)) for a, z in zip(lo, hi))
    shape = tuple(int(z - a) for a, z in zip(lo, hi))
    gi, gj, gk = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]

    def distance(c):
        return np.sqrt((gi - c[0]) ** 2 + (gj - c[1]) ** 2 + (gk - c[2]) ** 2).astype(np.float32)

    wm = maps["wm"][local]
    inside = brain[local]
    r_e = distance(centre) / (1.0 + 0.25 * _smooth_noise(rng, shape, 4.0)).clip(0.5, None)
    r_c = distance(centre + offset) / (1.0 + 0.12 * _smooth_noise(rng, shape, 3.0)).clip(0.5, None)
    reach = r_oedema * (0.75 + 0.35 * wm)  # oedema spreads along white matter
    labels = np.zeros(shape, np.uint8)
    labels[(r_e < reach) & inside] = 2
    labels[(r_c < r_core) & inside] = 4
    labels[(r_c < r_core - rim) & inside] = 1
    parts, count = ndi.label(labels > 0)
    if count > 1:  # keep one tumour: drop islands that the noisy boundary cut off
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        labels[parts != np.argmax(sizes)] = 0
    soft = {
        name: ndi.gaussian_filter((labels == value).astype(np.float32), 0.8, mode="constant")
        for name, value in (("necrosis", 1), ("oedema", 2), ("enhancing", 4))
    }
    return labels, local, soft


# --------------------------------------------------------------------------------------------
# contrasts
# --------------------------------------------------------------------------------------------


def _render(
    rng: np.random.Generator,
    contrast: str,
    maps: dict,
    brain: np.ndarray,
    tumour: tuple,
    axes: tuple[np.ndarray, ...],
) -> np.ndarray:
    """Render one MR contrast on the crop: tissue mix x texture x bias field + noise (int16)."""
    labels, local, soft = tumour
    means = np.array(_MEANS[contrast]) * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, len(_CLASSES))
    mu = dict(zip(_CLASSES, means.astype(np.float32)))
    image = mu["csf"] * maps["csf"] + mu["gm"] * maps["gm"] + mu["wm"] * maps["wm"]
    image *= maps["texture"] ** np.float32(_TEXTURE_POWER[contrast])

    # inside the tumour box the tumour classes replace normal tissue (soft edges)
    tumour_p = soft["necrosis"] + soft["oedema"] + soft["enhancing"]
    hetero = 1.0 + 0.08 * _smooth_noise(rng, labels.shape, 2.0)
    box_img = image[local] * (1.0 - tumour_p)
    for name in ("necrosis", "oedema", "enhancing"):
        box_img += mu[name] * soft[name] * hetero
    image[local] = box_img

    bias = _smooth_field(rng, axes, spacing=60.0)
    bias *= np.float32(rng.uniform(0.06, 0.1))
    image *= np.exp(bias)
    values = image[brain]
    values += rng.standard_normal(values.size, dtype=np.float32) * np.float32(rng.uniform(0.02, 0.04) * mu["wm"])
    out = np.zeros(brain.shape, np.int16)
    out[brain] = np.clip(np.rint(values), 1, 32767).astype(np.int16)
    return out


def brain_phantom_subject(subject: int, *, seed: int = 0, tissues: bool = False) -> dict[str, np.ndarray]:
    """Generate one phantom subject in memory: the four contrasts and the segmentation.

    This is what :func:`write_brain_phantom` writes for ``<ID> = Phantom_<subject>``.

    Parameters
    ----------
    subject : int
        Subject number, 1-based (``Phantom_001`` is subject 1).
    seed : int, optional
        Seed of the phantom data set; subject ``i`` depends only on ``(seed, i)``.
    tissues : bool, optional
        Also return the ground-truth tissue probabilities ``csf, gm, wm`` (float32 in [0, 1],
        before the tumour replaced tissue), e.g. to check a segmentation.

    Returns
    -------
    dict of str -> ndarray
        ``t1, t1ce, t2, flair`` as int16 and ``seg`` as uint8 (values 0, 1, 2, 4), each
        240 x 240 x 155 on the grid of :data:`PHANTOM_AFFINE`; background (outside the brain)
        is 0 in every contrast.

    Examples
    --------
    >>> vols = brain_phantom_subject(1, seed=0)                          # doctest: +SKIP
    >>> vols["flair"].shape, sorted(set(vols["seg"].ravel().tolist()))   # doctest: +SKIP
    ((240, 240, 155), [0, 1, 2, 4])
    """
    check_int("subject", subject, low=1, error=DataError)
    check_int("seed", seed, low=0, error=DataError)
    rng = np.random.default_rng(np.random.SeedSequence([seed, subject]))
    maps, box = _warp_anatomy(rng)
    brain = (maps["csf"] + maps["gm"] + maps["wm"]) > 0.5
    maps["texture"] = _texture(maps, brain)
    tumour = _place_tumour(rng, maps, brain, box)
    axes = tuple(np.arange(s.start, s.stop, dtype=np.float64) for s in box)

    volumes = {}
    for contrast in PHANTOM_CONTRASTS[:4]:
        volumes[contrast] = np.zeros(PHANTOM_SHAPE, np.int16)
        volumes[contrast][box] = _render(rng, contrast, maps, brain, tumour, axes)
    labels, local, _ = tumour
    volumes["seg"] = np.zeros(PHANTOM_SHAPE, np.uint8)
    volumes["seg"][box][local] = labels
    if tissues:
        for name in ("csf", "gm", "wm"):
            volumes[name] = np.zeros(PHANTOM_SHAPE, np.float32)
            volumes[name][box] = maps[name]
    return volumes


def _texture(maps: dict, brain: np.ndarray) -> np.ndarray:
    """Anatomical texture: the warped template T1 relative to what its tissue mix predicts."""
    model = sum(np.float32(v) * maps[k] for v, k in zip(_T1_TEMPLATE_MEANS, ("csf", "gm", "wm")))
    ratio = maps.pop("t1") * np.float32(255.0) / np.maximum(model, np.float32(1.0))
    return np.where(brain, ratio, np.float32(1.0)).clip(0.8, 1.25).astype(np.float32)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _descrip(seed: int, subject: int) -> str:
    text = f"PHANTOM: synthetic workbench brain phantom, not patient data (seed={seed} subject={subject})"
    if len(text) > 80:
        text = f"PHANTOM, not patient data (seed={seed} subject={subject})"[:80]
    return text


def _write_nifti_gz(path: Path, array: np.ndarray, descrip: str) -> None:
    """Write a gzip NIfTI-1 file with a zero gzip mtime and no name, so bytes are reproducible."""
    img = nib.Nifti1Image(array, PHANTOM_AFFINE)
    header = img.header
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units("mm", "sec")
    header.set_qform(PHANTOM_AFFINE, code=1)
    header.set_sform(PHANTOM_AFFINE, code=1)
    header["descrip"] = descrip.encode("ascii")
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    data = gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
    path.write_bytes(data)


def _write_subject(out: str, subject: int, seed: int, overwrite: bool) -> str:
    """Generate subject ``subject`` and write its five files into ``out/<ID>`` atomically."""
    sid = _ID_FORMAT.format(subject)
    volumes = brain_phantom_subject(subject, seed=seed)
    descrip = _descrip(seed, subject)
    folder = Path(out) / sid
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for contrast in PHANTOM_CONTRASTS:
            _write_nifti_gz(tmp / f"{sid}_{contrast}.nii.gz", volumes[contrast], descrip)
    return str(folder)


def _pool_context():
    """Process start method for the worker pool.

    ``fork`` on Linux: the workers only run numpy / scipy / nibabel code, and unlike ``spawn``
    it does not re-run the caller's ``__main__`` (which breaks scripts without an
    ``if __name__ == "__main__"`` guard and code piped to ``python -``).  ``spawn`` elsewhere.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _existing(out: Path, subjects: int) -> list[str]:
    found = []
    for subject in range(1, subjects + 1):
        sid = _ID_FORMAT.format(subject)
        folder = out / sid
        if folder.exists():
            complete = all((folder / f"{sid}_{c}.nii.gz").is_file() for c in PHANTOM_CONTRASTS)
            found.append(f"{folder} ({'complete' if complete else 'incomplete'})")
    return found


def _readme(seed: int, subjects: int, out: Path) -> str:
    return (
        "GENERATED BRAIN PHANTOM - NOT PATIENT DATA\n"
        "==========================================\n\n"
        "Every volume in this folder is synthetic: the MNI152 2009a template shipped with nilearn,\n"
        "warped per subject by a random affine and smooth deformation, with a random synthetic\n"
        "tumour, rendered into T1, T1ce, T2 and FLAIR.  No patient data was used.\n\n"
        f"subjects: {subjects} (Phantom_001 .. {_ID_FORMAT.format(subjects)})\n"
        f"seed:     {seed}  (subject i depends only on (seed, i); the same seed gives identical files)\n"
        "layout:   <ID>/<ID>_{t1,t1ce,t2,flair,seg}.nii.gz, 240 x 240 x 155, 1 mm, BraTS labels 0/1/2/4\n\n"
        "Made by (command equivalent):\n"
        f"    workbench data phantom brain --subjects {subjects} --seed {seed} --out {shlex.quote(str(out))}\n"
        "or, in Python:\n"
        f"    from workbench.data.phantom import write_brain_phantom\n"
        f"    write_brain_phantom({str(out)!r}, subjects={subjects}, seed={seed})\n"
    )


def write_brain_phantom(
    out,
    *,
    subjects: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> list[Path]:
    """Write a synthetic BraTS-style data set made from the MNI152 template.

    One folder per subject, ``out/<ID>/<ID>_{t1,t1ce,t2,flair,seg}.nii.gz`` with IDs
    ``Phantom_001``, ``Phantom_002``, ...: four int16 contrasts and a uint8 segmentation with
    BraTS labels (1 necrotic core, 2 oedema, 4 enhancing rim), 240 x 240 x 155 voxels at 1 mm
    (affine :data:`PHANTOM_AFFINE`, axcodes L, P, S like BraTS), skull-stripped (background 0).
    Each subject has its own anatomy (random affine and smooth deformation of the template),
    tumour, contrast, bias field and noise.  ``out/README.txt`` records the seed.

    Parameters
    ----------
    out : str or Path
        Folder to write into (created if missing).
    subjects : int, optional
        Number of subjects, 1 to 999.
    seed : int, optional
        Non-negative seed.  Subject ``i`` depends only on ``(seed, i)``, so ``subjects=3``
        gives the first three subjects of ``subjects=10``; the same seed gives byte-identical
        files.
    overwrite : bool, optional
        Replace subject folders that already exist (otherwise a :class:`DataError` names them).
    progress : bool, optional
        Show a progress bar over subjects.
    workers : int, optional
        Processes to use; default ``min(2, os.cpu_count())``.  Output does not depend on it.

    Returns
    -------
    list of Path
        The subject folders, in subject order.

    Examples
    --------
    >>> folders = write_brain_phantom("data/phantom", subjects=2, seed=0)   # doctest: +SKIP
    >>> sorted(p.name for p in folders[0].iterdir())                       # doctest: +SKIP
    ['Phantom_001_flair.nii.gz', 'Phantom_001_seg.nii.gz', 'Phantom_001_t1.nii.gz', ...]
    """
    check_int("subjects", subjects, low=1, high=_MAX_SUBJECTS, error=DataError)
    check_int("seed", seed, low=0, error=DataError)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    check_int("workers", workers, low=1, error=DataError)
    try:
        out = Path(out)
    except TypeError as exc:
        raise DataError(f"out must be a folder path, got {out!r}") from exc
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not overwrite:
        existing = _existing(out, subjects)
        if existing:
            raise DataError(
                f"{out}: phantom subject folder(s) already exist: {', '.join(existing[:3])}"
                f"{' ...' if len(existing) > 3 else ''}; "
                f"pass {option_hint('overwrite')} to replace them"
            )
    out.mkdir(parents=True, exist_ok=True)
    # replacing subjects: write them all beside `out` first and swap each in only when every one is
    # complete, so a killed run leaves the previous phantom as it was
    staging = temporary_name(out) if overwrite and _existing(out, subjects) else None
    target = out if staging is None else staging
    for name in ("t1", "gm", "wm"):  # fail early, without loading the maps in this process
        if not _template_path(name).is_file():
            raise DataError(f"{_template_path(name)}: MNI152 template missing; reinstall nilearn")

    from ..progress import tqdm

    workers = min(workers, subjects)
    bar = tqdm(total=subjects, desc="brain phantom", unit="subject", disable=not progress)
    folders: dict[int, Path] = {}
    if staging is not None:
        staging.mkdir()
    try:
        if workers == 1:
            for subject in range(1, subjects + 1):
                folders[subject] = Path(_write_subject(str(target), subject, seed, overwrite))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                with warnings.catch_warnings():  # Python >= 3.12 warns on fork of a threaded process
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    jobs = {
                        pool.submit(_write_subject, str(target), subject, seed, overwrite): subject
                        for subject in range(1, subjects + 1)
                    }
                try:
                    for job in as_completed(jobs):
                        folders[jobs[job]] = Path(job.result())
                        bar.update(1)
                except BaseException:  # stop at the first error (or Ctrl-C): drop queued subjects
                    for job in jobs:
                        job.cancel()
                    raise
        if staging is not None:
            for subject, folder in sorted(folders.items()):
                replace_path(folder, out / folder.name)
                folders[subject] = out / folder.name
    except FileExistsError as exc:  # another writer created a folder meanwhile
        raise DataError(f"{exc}") from exc
    finally:
        bar.close()
        if staging is not None:
            remove_path(staging)

    with atomic_file(out / "README.txt") as tmp:
        tmp.write_text(_readme(seed, subjects, out))
    return [folders[s] for s in sorted(folders)]
