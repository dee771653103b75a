"""The screen's slices and the bf16 padded layout.

The screen multiplies vectors in slices of SCREEN_CHUNK pixels whose partial products are summed
in float64.  For a bf16 screen every slice is followed by PAD offset columns: the reference holds
[1, 0, ..., 0] there, a query [-t_c, 0, ..., 0], so each slice's product comes out as
x_c.y_c - t_c and its bf16 rounding is relative to that small difference rather than to r
(the per-pair bound in :mod:`workbench.search.bounds` says why this keeps the screen tight).
"""
from __future__ import annotations

import torch

#: pixels per slice of the screen's dot products (partial sums are added in float64)
SCREEN_CHUNK = 4096
#: columns after each slice: the reference holds [1, 0, ..., 0] there, a query [-t, 0, ..., 0];
#: 32 keeps every slice a multiple of the 32-wide AMX / tensor-core tiles when the slice is
PAD = 32


def slice_bounds(dim: int) -> list[tuple[int, int]]:
    """Pixel ranges of the screen's slices."""
    return [(a, min(a + SCREEN_CHUNK, dim)) for a in range(0, dim, SCREEN_CHUNK)] or [(0, 0)]


def padded_width(dim: int) -> int:
    """Width of a vector of ``dim`` pixels in the padded layout."""
    return dim + PAD * len(slice_bounds(dim))


def pad_slices(x_lo: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Copy bf16 vectors (n, dim) into the padded layout, with ``fill`` in each offset column."""
    dim = x_lo.shape[1]
    out = torch.zeros((len(x_lo), padded_width(dim)), dtype=x_lo.dtype, device=x_lo.device)
    pos = 0
    for a, b in slice_bounds(dim):
        out[:, pos:pos + b - a] = x_lo[:, a:b]
        out[:, pos + b - a] = fill
        pos += b - a + PAD
    return out


def offset_columns(dim: int) -> list[int]:
    """Positions of the offset column of every slice in the padded layout."""
    cols, pos = [], 0
    for a, b in slice_bounds(dim):
        cols.append(pos + b - a)
        pos += b - a + PAD
    return cols


def unpad_slices(x_pad: torch.Tensor, dim: int, dtype=torch.float32) -> torch.Tensor:
    """The pixels of vectors in the padded layout (the offset columns dropped), in ``dtype``."""
    out = torch.empty((len(x_pad), dim), dtype=dtype, device=x_pad.device)
    pos = 0
    for a, b in slice_bounds(dim):
        out[:, a:b] = x_pad[:, pos:pos + b - a]
        pos += b - a + PAD
    return out
