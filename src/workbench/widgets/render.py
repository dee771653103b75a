"""Images as PNG bytes for ipywidgets: fast to update, and nothing for nbclient to choke on.

(Plotly figures shown inside an ``ipywidgets.Output`` make papermill/nbclient hang, and
re-rendering a plotly figure per step is slow; PNG panels update in milliseconds.)
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_png(plane: np.ndarray, *, vmin: float = 0.0, vmax: float = 1.0, size: int | None = None) -> bytes:
    """One 2D image as an 8-bit grayscale PNG, windowed to [vmin, vmax], optionally upscaled."""
    scaled = np.clip((np.asarray(plane, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return _png(Image.fromarray((scaled * 255 + 0.5).astype(np.uint8), mode="L"), size)


def _png(img: Image.Image, size: int | None) -> bytes:
    """PNG bytes of ``img``, upscaled (nearest neighbour: pixels stay pixels) to ``size`` wide."""
    if size and size != img.width:
        img = img.resize((size, round(size * img.height / img.width)), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: panels must update while the user steps
    return buf.getvalue()


#: colour of the segmentation overlay (RGB in [0, 1]) and its opacity
OVERLAY_RGB = np.array([1.0, 0.15, 0.1], dtype=np.float32)
OVERLAY_ALPHA = 0.45


def overlay_png(plane: np.ndarray, mask: np.ndarray, *, vmin: float = 0.0, vmax: float = 1.0,
                size: int | None = None, level: float = 0.125) -> bytes:
    """A windowed grayscale image with the segmentation ``mask`` tinted in red where it is >= ``level``.

    Stores keep BraTS labels 1, 2, 4 as 0.25, 0.5, 1.0, so the default ``level`` (half the lowest
    label) shows every label and hides the faint values a generative model leaves in the
    background of a synthetic segmentation channel.  Higher labels get a stronger tint.
    """
    return _png(Image.fromarray(_overlay_rgb(plane, mask, vmin, vmax, level), mode="RGB"), size)


def _overlay_rgb(plane, mask, vmin: float, vmax: float, level: float) -> np.ndarray:
    """8-bit RGB of the windowed ``plane``, tinted red where ``mask`` >= ``level`` (gray where mask is None)."""
    gray = np.clip((np.asarray(plane, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    if mask is None:
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    else:
        m = np.clip(np.asarray(mask, dtype=np.float32), 0, 1)
        alpha = np.where(m >= level, OVERLAY_ALPHA * np.maximum(m, 0.5), 0.0)[..., None]
        rgb = gray[..., None] * (1 - alpha) + OVERLAY_RGB * alpha
    return (rgb * 255 + 0.5).astype(np.uint8)


#: colour of the cursor's cross-hair (8-bit RGB): yellow, apart from the red overlay and the gray image
CROSSHAIR_RGB = (255, 214, 0)


def crosshair_png(plane: np.ndarray, point: tuple[int, int], *, mask: np.ndarray | None = None, vmin: float = 0.0,
                  vmax: float = 1.0, size: int | None = None, level: float = 0.125,
                  colour: tuple[int, int, int] = CROSSHAIR_RGB) -> bytes:
    """A windowed image (with the segmentation ``mask`` tinted red, as :func:`overlay_png`) and a
    one-pixel cross-hair through the centre of pixel ``point`` = (row, column).

    The cross-hair is drawn after upscaling, so it stays thin on a small image, and it leaves a
    gap around the pixel it marks, so that pixel stays visible.

    >>> png = crosshair_png(volume[0, z], (y, x), size=256)     # doctest: +SKIP
    """
    rows, cols = np.shape(plane)
    img = Image.fromarray(_overlay_rgb(plane, mask, vmin, vmax, level), mode="RGB")
    if size and size != img.width:
        img = img.resize((size, round(size * img.height / img.width)), Image.NEAREST)
    a = np.asarray(img).copy()
    h, w = a.shape[:2]
    r, c = int(point[0]), int(point[1])
    y, x = int((r + 0.5) * h / rows), int((c + 0.5) * w / cols)
    gap_y, gap_x = max(int(h / rows), 2) + 2, max(int(w / cols), 2) + 2
    keep_x = np.abs(np.arange(w) - x) > gap_x
    keep_y = np.abs(np.arange(h) - y) > gap_y
    if 0 <= y < h:
        a[y, keep_x] = colour
    if 0 <= x < w:
        a[keep_y, x] = colour
    return _png(Image.fromarray(a, mode="RGB"), None)


def density_png(x: np.ndarray, y: np.ndarray, *, bins: int = 96, size: int | None = None) -> bytes:
    """A pixel scatter plot as a log-density image: x to the right, y upwards, both in [0, 1].

    Every pixel pair is counted (a 256x256x5 image has 327,680 of them), which a point scatter
    cannot show legibly.  Darker = more pixels; the diagonal is drawn faintly for reference.
    (Counted with one ``bincount``: ``np.histogram2d`` takes ~10x longer, too slow for a
    panel that must update as the user steps through images.)
    """
    xi = np.clip((np.ravel(x).astype(np.float32) * bins).astype(np.int32), 0, bins - 1)
    yi = np.clip((np.ravel(y).astype(np.float32) * bins).astype(np.int32), 0, bins - 1)
    h = np.bincount(yi * bins + xi, minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    d = np.log1p(h)
    d = d / d.max() if d.max() > 0 else d
    img = 1.0 - d[::-1]  # y up; white background, dark density
    diag = np.arange(bins)
    img[bins - 1 - diag, diag] = np.minimum(img[bins - 1 - diag, diag], 0.8)
    return to_png(img, size=size)
