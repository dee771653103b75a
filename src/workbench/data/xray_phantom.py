"""Built-in chest X-ray phantom: synthetic PA chest radiographs in the Kermany pneumonia layout.

The workbench needs chest radiographs that anyone can generate offline in a second, that look
roughly like the Kermany *chest-xray-pneumonia* set (grayscale PA radiographs, NORMAL and
PNEUMONIA classes, ``train`` / ``test`` folders, Kermany file names) and that come from
*different* patients, some with several images, so that patient-level questions (does a model
copy one patient's radiograph? are a patient's images all on one side of the split?) can be
asked.  Every image is drawn from an analytic model, vectorised in numpy:

- the body outline with shoulders, neck and arms, soft tissue brighter than the air around it;
- two dark lung fields (each patient its own size, shape and position) whose bases are the
  diaphragm domes, the right hemidiaphragm (image left) a little higher;
- the mediastinum and spine as a bright central column with the dark trachea above, the heart
  as a bright shadow bulging into the image's right side (the patient's left, as on a PA view);
- posterior ribs as curved bright bands, fainter anterior ribs, and clavicles near the top;
- for the PNEUMONIA class, patchy opacities: smooth blotchy bright regions inside one or both
  lungs (bacterial: denser, lobar; viral: fainter, more diffuse and bilateral);
- per image: a few degrees of rotation, a shift, depth of inspiration, exposure and contrast,
  plus mild noise and blur.

Patient ``p`` depends only on ``(seed, p)`` and image ``k`` of that patient on
``(seed, p, k)``; the same arguments give byte-identical files.

Example
-------
>>> from workbench.data.xray_phantom import write_xray_phantom
>>> out = write_xray_phantom("data/xray_phantom", images=40, seed=0)   # doctest: +SKIP
>>> sorted(p.name for p in (out / "train").iterdir())                  # doctest: +SKIP
['NORMAL', 'PNEUMONIA']
"""
from __future__ import annotations

import math
import numbers
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import DataError, check_int, option_hint
from .atomic import atomic_dir

_MAX_IMAGES = 100_000
_KINDS = ("bacteria", "virus")
_VIRAL = 0.35  # fraction of pneumonia patients with viral pneumonia


# --------------------------------------------------------------------------------------------
# patients and the layout
# --------------------------------------------------------------------------------------------


@dataclass
class PhantomPatient:
    """One phantom patient: number, class, split and the file names of its images."""

    number: int
    pneumonia: bool
    kind: str | None
    split: str
    files: list[str]

    @property
    def subject(self) -> str:
        return f"person{self.number}" if self.pneumonia else f"IM-{self.number:04d}"

    @property
    def class_name(self) -> str:
        return "PNEUMONIA" if self.pneumonia else "NORMAL"


def _split_patients(patients: list, test_fraction: float, rng: np.random.Generator) -> None:
    """Hold out ``test_fraction`` of each class's patients (at least one when there are two)."""
    for pneumonia in (False, True):
        group = [p for p in patients if p.pneumonia == pneumonia]
        n_test = int(round(test_fraction * len(group)))
        if test_fraction > 0 and len(group) > 1:
            n_test = max(1, n_test)
        n_test = min(n_test, max(len(group) - 1, 0))
        order = rng.permutation(len(group))
        for i in order[:n_test]:
            group[i].split = "test"


def plan_xray_phantom(*, images: int = 40, seed: int = 0, pneumonia_fraction: float = 0.5,
                      test_fraction: float = 0.25) -> list[PhantomPatient]:
    """Decide the patients of a phantom: how many images each, class, kind, split, file names.

    Patients have 1 to 3 images each; whole patients go to PNEUMONIA until about
    ``pneumonia_fraction`` of the images do (about a third of them viral, the rest bacterial),
    and whole patients of each class are held out for test (about ``test_fraction`` of each
    class's patients).

    >>> plan = plan_xray_phantom(images=6, seed=0)
    >>> sum(len(p.files) for p in plan)
    6
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    counts, total = [], 0
    while total < images:
        counts.append(int(min(rng.integers(1, 4), images - total)))
        total += counts[-1]
    target = int(round(pneumonia_fraction * images))
    sick, acc = set(), 0
    for i in rng.permutation(len(counts)):
        if acc + counts[i] <= target or (acc < target and acc + counts[i] - target < target - acc):
            sick.add(int(i))
            acc += counts[i]
    ordered = sorted(sick)  # about a third of the pneumonias are viral, as in the Kermany set
    viral = {ordered[i] for i in rng.permutation(len(ordered))[:int(round(_VIRAL * len(ordered)))]}
    patients = []
    for i in range(len(counts)):
        kind = ("virus" if i in viral else "bacteria") if i in sick else None
        patients.append(PhantomPatient(i + 1, kind is not None, kind, "train", []))
    _split_patients(patients, test_fraction, rng)
    image_number = 0  # Kermany numbers pneumonia images with one running counter
    for patient, n in zip(patients, counts):
        for k in range(1, n + 1):
            if patient.pneumonia:
                image_number += 1
                patient.files.append(f"person{patient.number}_{patient.kind}_{image_number}.png")
            else:
                patient.files.append(f"IM-{patient.number:04d}-{k:04d}.png")
    return patients


# --------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------

# Patient fields (vessel markings, pneumonia texture) are drawn on this grid of normalised
# coordinates and sampled wherever the pose puts the patient, so they move with the patient.
_FIELD_EXTENT = 1.6
_FIELD_SIZE = 129


def _anatomy(rng: np.random.Generator) -> dict:
    """Per-patient anatomy in normalised coordinates (x to the image's right, y down, chest ~[-1, 1])."""
    u = rng.uniform
    return {
        "body_half": u(0.84, 0.96),           # half-width of the torso at the diaphragm
        "shoulder": u(-0.9, -0.8),            # height of the shoulders
        "neck_half": u(0.2, 0.26),
        "arm_gap": u(0.03, 0.08),
        "lung_top": u(-0.8, -0.7),            # lung apices
        "lung_base": u(0.36, 0.48),           # diaphragm at the costophrenic angles
        "right_higher": u(0.03, 0.07),        # the right hemidiaphragm (image left) is higher
        "lung_lateral": (u(0.72, 0.82), u(0.7, 0.8)),  # lateral lung border at the base
        "lung_medial": u(0.1, 0.14),
        "dome": u(0.1, 0.17),                 # height of the diaphragm domes
        "heart_centre": (u(0.07, 0.13), u(0.18, 0.26)),
        "heart_radius": (u(0.3, 0.36), u(0.19, 0.24)),
        "heart_tilt": math.radians(u(-30.0, -15.0)),
        "ribs": int(rng.integers(9, 11)),
        "rib_gap": u(0.1, 0.115),
        "rib_thick": u(0.028, 0.036),
        "rib_rise": u(0.3, 0.45),
        "clavicle": u(-0.64, -0.56),
        "soft": u(0.5, 0.58),                 # brightness of soft tissue
        "lung": u(0.16, 0.24),                # brightness of the lung fields
        "bone": u(0.07, 0.1),                 # what a rib adds
        "stomach": bool(u(0.0, 1.0) < 0.7),   # gas bubble under the left hemidiaphragm
        "vessels": _patient_field(rng, sigma=1.5),
    }


def _patient_field(rng: np.random.Generator, *, sigma: float) -> np.ndarray:
    """Smooth random field (unit std) on the patient grid, sampled later by :func:`_sample`."""
    noise = rng.standard_normal((_FIELD_SIZE, _FIELD_SIZE)).astype(np.float32)
    field = ndi.gaussian_filter(noise, sigma, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of a patient field at normalised coordinates ``(x, y)``."""
    scale = (_FIELD_SIZE - 1) / (2 * _FIELD_EXTENT)
    coords = np.stack([(y + _FIELD_EXTENT) * scale, (x + _FIELD_EXTENT) * scale])
    return ndi.map_coordinates(field, coords, order=1, mode="nearest", output=np.float32)


def _opacities(rng: np.random.Generator, kind: str | None) -> dict | None:
    """Pneumonia of one patient: blobs ``(side, dx, t, radius, strength)`` and a patchy texture."""
    if kind is None:
        return None
    blobs = []
    bilateral = rng.random() < (0.8 if kind == "virus" else 0.35)
    sides = [-1, 1] if bilateral else [int(rng.choice([-1, 1]))]
    for side in sides:
        n = int(rng.integers(4, 8)) if kind == "virus" else int(rng.integers(2, 5))
        centre = rng.uniform(0.35, 0.85)  # where in the lung the patches sit (0 apex .. 1 base)
        for _ in range(n):
            dx = rng.uniform(-0.35, 0.35)
            t = float(np.clip(centre + rng.normal(0.0, 0.15), 0.2, 0.95))
            radius = rng.uniform(0.07, 0.12) if kind == "virus" else rng.uniform(0.1, 0.17)
            strength = rng.uniform(0.5, 0.8) if kind == "virus" else rng.uniform(0.8, 1.1)
            blobs.append((side, dx, t, radius, strength))
    return {"blobs": blobs, "texture": _patient_field(rng, sigma=2.0)}


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _lung_geometry(a: dict, side: int, inspiration: float) -> tuple[float, float]:
    """Top and base (costophrenic level) of the image-left (-1) or image-right (+1) lung."""
    base = a["lung_base"] + inspiration - (a["right_higher"] if side == -1 else 0.0)
    return a["lung_top"], base


def _lung_masks(a: dict, x: np.ndarray, y: np.ndarray, inspiration: float, edge: float) -> list[np.ndarray]:
    """Soft masks of the image-left and image-right lung: rounded apex, convex lateral border,
    base on the diaphragm dome (deepest at the costophrenic angle)."""
    masks = []
    for j, side in enumerate((-1, 1)):
        top, base = _lung_geometry(a, side, inspiration)
        d = side * x  # distance from the midline towards this lung's side
        t = np.clip((y - top) / (base - top), 0.0, 1.3)
        lateral = a["lung_medial"] + 0.02 + (a["lung_lateral"][j] - a["lung_medial"] - 0.02) * np.minimum(t, 1.0) ** 0.4
        medial = a["lung_medial"] + 0.05 * (1.0 - np.minimum(t, 1.0))
        r = np.clip((d - medial) / np.maximum(lateral - medial, 1e-3), 0.0, 1.0)
        dome = base - a["dome"] * np.clip(np.sin(np.pi * (0.15 + 0.85 * r)), 0, 1) ** 0.7
        inside = np.minimum(np.minimum(lateral - d, d - medial), np.minimum(y - top, dome - y))
        masks.append(_sigmoid(inside / edge))
    return masks


def _band(distance: np.ndarray, thick: float) -> np.ndarray:
    """A bone across a centre line: cortex a little brighter than the marrow."""
    q = (distance / thick) ** 2
    return np.exp(-q * q) * (0.75 + 0.25 * np.exp(-((np.abs(distance / thick) - 0.85) ** 2) / 0.05))


def _body(a: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft-tissue brightness: torso with rounded shoulders, neck, arms beside the chest."""
    ax = np.abs(x)
    edge = 0.02
    half = a["body_half"] * (0.94 + 0.06 * _sigmoid((y + 0.3) / 0.2))
    shoulder = a["shoulder"] + 0.35 * np.clip(ax / half, 0, 1.5) ** 4
    torso = _sigmoid((half - ax) / edge) * _sigmoid((y - shoulder) / edge)
    neck = _sigmoid((a["neck_half"] - ax) / edge)
    inner, outer = half + a["arm_gap"], half + a["arm_gap"] + 0.22
    arm = _sigmoid((ax - inner) / edge) * _sigmoid((outer - ax) / 0.04) * _sigmoid((y - a["shoulder"] - 0.18) / 0.06)
    thickness = 0.8 + 0.2 * np.clip(1.0 - (ax / half) ** 2, 0, 1)  # the chest is thicker in the middle
    return a["soft"] * (np.maximum(torso, neck) * thickness + 0.75 * arm)


def render_xray(anatomy: dict, pneumonia: dict | None, *, height: int, width: int, pose: dict,
                rng: np.random.Generator) -> np.ndarray:
    """Render one radiograph (float32 ``(height, width)`` in [0, 1]) of a patient in a pose."""
    aspect = width / height
    yy = np.linspace(-1.08, 1.08, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.08 * aspect, 1.08 * aspect, width, dtype=np.float32)[None, :]
    c, s = math.cos(pose["angle"]), math.sin(pose["angle"])  # the pose rotates, shifts and scales
    x = ((c * (xx - pose["dx"]) + s * (yy - pose["dy"])) / pose["scale"]).astype(np.float32)
    y = ((-s * (xx - pose["dx"]) + c * (yy - pose["dy"])) / pose["scale"]).astype(np.float32)
    a = anatomy
    ax = np.abs(x)
    insp = pose["inspiration"]
    image = _body(a, x, y)
    body = np.clip(image / a["soft"], 0, 1)

    # heart: a tilted ellipse resting on the diaphragm, bulging to the image's right
    hx, hy = a["heart_centre"]
    hy += 0.6 * insp
    ct, st = math.cos(a["heart_tilt"]), math.sin(a["heart_tilt"])
    u, v = ct * (x - hx) + st * (y - hy), -st * (x - hx) + ct * (y - hy)
    heart = _sigmoid((1.0 - np.sqrt((u / a["heart_radius"][0]) ** 2 + (v / a["heart_radius"][1]) ** 2)) / 0.05)
    # mediastinum: a central column, the aortic knob at the upper image right
    medi = _sigmoid((a["lung_medial"] + 0.02 - np.abs(x - 0.01)) / 0.02) * _sigmoid((0.6 - y) / 0.05)
    knob = _sigmoid((1.0 - np.sqrt(((x - 0.13) / 0.08) ** 2 + ((y + 0.3) / 0.07) ** 2)) / 0.1)
    solid = np.maximum(np.maximum(heart, medi), knob)

    # lungs: dark fields with vessel markings, brighter towards the hila
    lungs = _lung_masks(a, x, y, insp, 0.015)
    lung = np.maximum(lungs[0], lungs[1]) * (1.0 - solid)
    hilum = np.exp(-(((ax - 0.22) / 0.14) ** 2 + ((y + 0.05) / 0.18) ** 2))
    vessels = _sample(a["vessels"], x, y)
    markings = np.clip(0.05 * vessels, -0.04, 0.07) * (0.4 + 0.6 * hilum) + 0.1 * hilum
    lung_level = a["lung"] * (1.0 + 0.25 * np.clip(y - a["lung_top"], 0, 1.5))  # bases overlap soft tissue
    image = image + lung * (lung_level + markings - image)
    image = image + 0.06 * heart * body
    trachea = _sigmoid((0.045 - np.abs(x - 0.01)) / 0.01) * _sigmoid((-0.3 - y) / 0.05)
    image = image - 0.12 * trachea * body

    # pneumonia: smooth patchy opacities inside the lung fields
    if pneumonia is not None:
        patch = np.zeros_like(x)
        for side, dx, t, radius, strength in pneumonia["blobs"]:
            j = 0 if side == -1 else 1
            top, base = _lung_geometry(a, side, insp)
            reach = a["lung_medial"] + (a["lung_lateral"][j] - a["lung_medial"]) * (0.55 + dx * 0.8)
            cx, cy = side * reach, top + t * (base - top)
            patch = patch + strength * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        texture = _sample(pneumonia["texture"], x, y)
        patch = np.clip(patch * (0.7 + 0.45 * texture), 0, 1)
        image = image + lung * patch * 0.75 * (a["soft"] - image)

    # spine: vertebral bodies behind the mediastinum
    spine = _sigmoid((0.07 - ax) / 0.012) * body
    image = image + 0.05 * spine * (0.6 + 0.4 * np.cos(np.pi * (y - 0.03) / a["rib_gap"]) ** 2)

    # ribs: posterior arcs from the spine outwards and down, fainter anterior ribs
    _, low = _lung_geometry(a, 1, insp)
    thorax = _sigmoid((a["body_half"] - 0.04 - ax) / 0.02) * _sigmoid((low + 0.12 - y) / 0.06)
    d = np.clip(ax - 0.06, 0, None)
    ribs = np.zeros_like(x)
    for k in range(a["ribs"]):
        y0 = a["lung_top"] - 0.02 + a["rib_gap"] * k * (1.0 + 0.03 * k)
        posterior = y0 - a["rib_rise"] * d + 1.25 * d**2
        ribs += _band(y - posterior, a["rib_thick"]) * _sigmoid((d - 0.015) / 0.01)
        anterior = y0 + 0.18 + 0.45 * np.clip(0.8 - d, 0, None) ** 1.4
        ribs += 0.45 * _band(y - anterior, 0.9 * a["rib_thick"]) * _sigmoid((d - 0.3) / 0.06)
    image = image + a["bone"] * np.clip(ribs, 0, 1.3) * thorax * (0.3 + 0.7 * lung)

    # clavicles: from the sternum outwards and up towards the shoulders
    for side in (-1, 1):
        dd = side * x
        line = a["clavicle"] - 0.22 * dd + 0.3 * np.clip(dd - 0.45, 0, None) ** 2
        extent = _sigmoid((dd - 0.07) / 0.02) * _sigmoid((0.66 - dd) / 0.03)
        image = image + 1.6 * a["bone"] * _band(y - line, 0.036) * extent

    # stomach bubble under the left hemidiaphragm (image right)
    if a["stomach"]:
        _, base = _lung_geometry(a, 1, insp)
        bubble = _sigmoid((1.0 - np.sqrt(((x - 0.45) / 0.12) ** 2 + ((y - base - 0.04) / 0.06) ** 2)) / 0.1)
        image = image - 0.2 * bubble * body

    # exposure and contrast, then blur, noise and clipping
    image = np.clip(pose["offset"] + pose["gain"] * (image + 0.03), 0.0, 1.0) ** pose["gamma"]
    image = ndi.gaussian_filter(image.astype(np.float32), max(0.5, height / 320))
    image += rng.normal(0.0, pose["noise"], image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _pose(rng: np.random.Generator) -> dict:
    """Per-image position, depth of inspiration and exposure."""
    return {
        "angle": math.radians(float(np.clip(rng.normal(0.0, 1.5), -4, 4))),
        "dx": rng.normal(0.0, 0.03),
        "dy": rng.normal(0.0, 0.03),
        "scale": rng.uniform(0.92, 1.04),
        "inspiration": rng.uniform(-0.05, 0.06),
        "gain": rng.uniform(0.9, 1.15),
        "offset": rng.uniform(-0.02, 0.05),
        "gamma": rng.uniform(0.85, 1.15),
        "noise": rng.uniform(0.006, 0.014),
    }


def xray_phantom_image(patient: int, image: int, *, seed: int = 0, pneumonia: bool = False,
                       kind: str | None = None, size: int = 256) -> np.ndarray:
    """Render image ``image`` (1-based) of phantom patient ``patient`` as uint8 ``(size, width)``.

    The anatomy (and a pneumonia's opacities) depend on ``(seed, patient)`` only; the pose,
    exposure and noise on ``(seed, patient, image)``.  The width is 1.0 to 1.3 times ``size``
    (landscape, like the Kermany radiographs).  ``pneumonia=True`` adds opacities of ``kind``
    (``"bacteria"``: denser, lobar; ``"virus"``: fainter, more diffuse).

    >>> xray_phantom_image(1, 1, seed=0, size=64).dtype
    dtype('uint8')
    """
    check_int("patient", patient, low=1, error=DataError)
    check_int("image", image, low=1, error=DataError)
    check_int("seed", seed, low=0, error=DataError)
    check_int("size", size, low=32, high=2048, error=DataError)
    if pneumonia and kind not in _KINDS:
        kind = "bacteria"
    patient_rng = np.random.default_rng(np.random.SeedSequence([seed, 1, patient]))
    anatomy = _anatomy(patient_rng)
    disease = _opacities(patient_rng, kind if pneumonia else None)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, patient, image]))
    width = int(round(size * rng.uniform(1.0, 1.3)))
    pixels = render_xray(anatomy, disease, height=size, width=width, pose=_pose(rng), rng=rng)
    return np.rint(pixels * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _check_fraction(name: str, value, *, upper_open: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 <= value <= 1
    if ok and upper_open:
        ok = value < 1
    if not ok:
        raise DataError(f"{name} must be a number in [0, 1{')' if upper_open else ']'}, got {value!r}")


def _write_png(path: Path, pixels: np.ndarray, text: str) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", pnginfo=info, compress_level=6)


def _readme(out: Path, plan: list[PhantomPatient], *, images: int, seed: int, pneumonia_fraction: float,
            test_fraction: float, size: int) -> str:
    lines = []
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            group = [p for p in plan if p.split == split and p.class_name == cls]
            lines.append(f"    {split}/{cls}: {sum(len(p.files) for p in group)} images of {len(group)} patients")
    return (
        "GENERATED CHEST X-RAY PHANTOM - NOT PATIENT DATA\n"
        "================================================\n\n"
        "Every image in this folder is synthetic: drawn from an analytic model of a PA chest\n"
        "radiograph (body outline, lung fields, heart and mediastinum, ribs, clavicles, diaphragm;\n"
        "patchy opacities for the PNEUMONIA class).  No patient data was used.\n\n"
        f"images: {images} (8-bit grayscale PNG, {size} pixels high, 1.0-1.3 x as wide)\n"
        f"seed:     {seed}  (the same arguments give byte-identical files)\n"
        f"pneumonia_fraction: {pneumonia_fraction}   test_fraction: {test_fraction} (of each class's patients)\n"
        "layout:   <split>/<CLASS>/<name>.png as the Kermany chest-xray-pneumonia set; NORMAL images are\n"
        "          IM-<patient>-<k>.png, PNEUMONIA images person<patient>_<bacteria|virus>_<n>.png;\n"
        "          a patient's images (1 to 3) are all in one split and class\n"
        + "\n".join(lines) + "\n\n"
        "Made by (command equivalent):\n"
        f"    workbench data phantom xray --images {images} --seed {seed} --pneumonia-fraction {pneumonia_fraction} "
        f"--test-fraction {test_fraction} --size {size} --out {shlex.quote(str(out))}\n"
        "or, in Python:\n"
        "    from workbench.data.xray_phantom import write_xray_phantom\n"
        f"    write_xray_phantom({str(out)!r}, images={images}, seed={seed}, pneumonia_fraction={pneumonia_fraction}, "
        f"test_fraction={test_fraction}, size={size})\n"
    )


def write_xray_phantom(out, *, images: int = 40, seed: int = 0, pneumonia_fraction: float = 0.5,
                       test_fraction: float = 0.25, size: int = 256, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Write a synthetic chest X-ray data set in the Kermany layout (generated, not patient data).

    ``out/<split>/<CLASS>/<name>.png``: 8-bit grayscale PNG radiographs, ``size`` pixels high
    and 1.0 to 1.3 times as wide, NORMAL images named ``IM-<patient>-<k>.png`` and PNEUMONIA
    images ``person<patient>_<bacteria|virus>_<n>.png`` as in the Kermany set, plus
    ``out/README.txt`` with the seed.  Patients have 1 to 3 images each (different position,
    inspiration and exposure), all in one split and class.  The folder is written under a
    temporary name and renamed when complete.

    Parameters
    ----------
    out : str or Path
        Folder to create.
    images : int, optional
        Number of images, 1 to 100,000.
    seed : int, optional
        Non-negative seed; the same arguments give byte-identical files.
    pneumonia_fraction : float, optional
        About this fraction of the images (whole patients) are PNEUMONIA.
    test_fraction : float, optional
        About this fraction of each class's patients go to ``test/``, the rest to ``train/``.
    size : int, optional
        Image height in pixels (32 to 2048).
    overwrite : bool, optional
        Replace ``out`` if it exists (otherwise :class:`FileExistsError`).
    progress : bool, optional
        Show a progress bar over images.

    Returns
    -------
    Path
        The folder written.

    Examples
    --------
    >>> out = write_xray_phantom("data/xray_phantom", images=40, seed=0)   # doctest: +SKIP
    >>> from workbench.data.xray import find_xrays
    >>> find_xrays(out).groupby(["split", "class_name"]).size()          # doctest: +SKIP
    """
    check_int("images", images, low=1, high=_MAX_IMAGES, error=DataError)
    check_int("seed", seed, low=0, error=DataError)
    check_int("size", size, low=32, high=2048, error=DataError)
    _check_fraction("pneumonia_fraction", pneumonia_fraction, upper_open=False)
    _check_fraction("test_fraction", test_fraction, upper_open=True)
    try:
        out = Path(out)
    except TypeError as exc:
        raise DataError(f"out must be a folder path, got {out!r}") from exc
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass {option_hint('overwrite')} to replace it)")

    from ..progress import tqdm

    plan = plan_xray_phantom(images=images, seed=seed, pneumonia_fraction=pneumonia_fraction,
                             test_fraction=test_fraction)
    text = f"PHANTOM: synthetic workbench chest X-ray, not patient data (seed={seed})"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        bar = tqdm(total=images, desc="chest X-ray phantom", unit="image", disable=not progress)
        try:
            for patient in plan:
                folder = tmp / patient.split / patient.class_name
                folder.mkdir(parents=True, exist_ok=True)
                for k, name in enumerate(patient.files, start=1):
                    pixels = xray_phantom_image(patient.number, k, seed=seed, pneumonia=patient.pneumonia,
                                                kind=patient.kind, size=size)
                    _write_png(folder / name, pixels, f"{text[:-1]} patient={patient.number} image={k})")
                    bar.update(1)
        finally:
            bar.close()
        (tmp / "README.txt").write_text(_readme(out, plan, images=images, seed=seed,
                                               pneumonia_fraction=pneumonia_fraction,
                                               test_fraction=test_fraction, size=size))
    return out
