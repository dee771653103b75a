"""Error bounds of the low-precision screen: how far a screened r may be from the exact one.

Pearson r of two images is the dot product x.y of their z-normalised, unit-norm pixel vectors.
The screen computes it in bfloat16 or float32, in slices of SCREEN_CHUNK pixels whose partial
products are summed in float64 (:mod:`workbench.search.layout`); the bounds below say how far
the screened value s~ can be from x.y, so that the rescore (:mod:`workbench.search.kernel`)
knows which pairs may still be in the top k.

bf16: a per-pair bound.  Write x = x_h + x_l with x_h the bf16 copy of the unit vector x and
x_l what rounding left (likewise y).  Each slice c of SCREEN_CHUNK pixels is followed by an
offset column (PAD, :func:`~workbench.search.layout.pad_slices`): 1 in the reference, -t_c in
the query, with t_c a bf16 number (the query's running k-th best times its share of energy in
slice c).  So the product of slice c comes out as acc_c ~ x_h,c.y_h,c - t_c, accumulated in
float32 and rounded to bf16 relative to that small difference rather than to r.  The screened
value is s~ = sum_c (fl_bf16(acc_c) + t_c), summed in float64, and

    |s~ - x.y| <= |x_l.y_h| + |x_h.y_l| + |x_l.y_l|              input rounding (exact split)
                 + sum_c |acc_c - (x_h,c.y_h,c - t_c)|           float32 accumulation
                 + sum_c |fl_bf16(acc_c) - acc_c|                 output rounding
              <= ||x_l|| ||y_h|| + ||x_h|| ||y_l|| + ||x_l|| ||y_l||
                 + gamma_n (||x_h|| ||y_h|| + sum_c |t_c|)
                 + u/(1-u) sum_c |fl_bf16(acc_c)|  +  1e-7

with gamma_n = n u32 / (1 - n u32), n = SCREEN_CHUNK + 1 (a slice's pixels and its offset
term), u32 = 2**-24, the worst-case float32 accumulation error of an n-term dot product in any
order (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5;
Cauchy-Schwarz over the slices bounds sum_c ||x_h,c|| ||y_h,c|| by ||x_h|| ||y_h||), u = 2**-8
the unit roundoff of bf16 (round to nearest), and 1e-7 covering the final rounding of the
float64 sum to float32.  Any offsets keep the bound valid; good ones only make it smaller.  The
norms ||x_h||, ||x_l|| are computed per vector in float64 (a CorrelationIndex stores them), so
the bound costs a few element-wise operations per pair and is about 0.003-0.005 near a query's
k-th best on brain slices, against 0.012 for the worst case over all unit vectors without
offsets, which :func:`screen_error_bound` gives (2v + v^2 + 4 u32 + gamma_n (1 + v)^2 +
v (1 + 2v + gamma_n), v = 2**-8).  Where the reference is normalised in float32 on the fly
(``topk_correlation`` without an index) its ||y_l|| is taken from the float32 vector and 4 u32
is added for the float32 normalisation.

float32: one bound for all pairs, the same formula with v = u32: eps ~ 0.00025 at any image
size (5x256x256 included).
"""
from __future__ import annotations

import contextlib

import torch

from .layout import SCREEN_CHUNK

U32 = 2.0**-24
BF16_U = 2.0**-8
#: float32 normalisation of a reference on the fly moves its unit vector by at most this much
NORMALISE_F32 = 4 * U32


def screen_error_bound(dim: int, dtype=torch.bfloat16) -> float:
    """Bound on |screened dot - exact dot| for unit vectors of length ``dim`` (module docstring)."""
    u = 2.0**-24
    v = 2.0**-8 if dtype == torch.bfloat16 else u
    n = min(dim, SCREEN_CHUNK)
    gamma = n * u / (1 - n * u)
    return (2 * v + v * v + 4 * u) + gamma * (1 + v) ** 2 + v * (1 + 2 * v + gamma)


def float32_error_bound(dim: int) -> float:
    """The bound of a float32 screen (kept for callers of the first version)."""
    return screen_error_bound(dim, torch.float32)


def split_norms(x: torch.Tensor, x_lo_precision: torch.Tensor) -> torch.Tensor:
    """Per row ``[||x_h||, ||x - x_h||]`` in float64: x_h the low-precision copy of unit vectors x.

    ``x`` is the float64 (or float32) vector, ``x_lo_precision`` its bf16 copy; see the module
    docstring for how the screen's per-pair bound uses them.
    """
    out = torch.empty((len(x), 2), dtype=torch.float64, device=x.device)
    step = max(1, 2**24 // (8 * max(1, x.shape[1])))  # float64 ~16 MB of rows at a time: bounded temporaries
    for a in range(0, len(x), step):
        hi = x_lo_precision[a:a + step].double()
        out[a:a + step, 0] = torch.linalg.vector_norm(hi, dim=1)
        out[a:a + step, 1] = torch.linalg.vector_norm(x[a:a + step].double() - hi, dim=1)
    return out * (1 + 1e-12) + 1e-15  # round up: these only ever enlarge the bound


def pair_error(qn: torch.Tensor, rn: torch.Tensor, out_abs: torch.Tensor, t_abs: torch.Tensor) -> torch.Tensor:
    """The bf16 screen's per-pair bound (module docstring) from split norms, the |partial sums|
    and the |offsets| of each query."""
    n = SCREEN_CHUNK + 1  # a slice's pixels and its offset term
    gamma = n * U32 / (1 - n * U32)
    qh, ql = qn[:, 0:1].float(), qn[:, 1:2].float()
    rh, rl = rn[:, 0].float()[None], rn[:, 1].float()[None]
    err = ql * rh + qh * rl + ql * rl + gamma * (qh * rh + t_abs[:, None])
    err += out_abs * (BF16_U / (1 - BF16_U))
    # float32 rounding of this sum itself: a relative 1e-6 margin covers it many times over
    return err.mul_(1 + 1e-6).add_(1e-7)


@contextlib.contextmanager
def ieee_float32():
    """Float32 matrix products in IEEE float32 inside (also as a decorator): every error bound of
    the search assumes them.  ``torch.set_float32_matmul_precision("high")`` or ``"medium"``, which
    training scripts set for speed, lets CUDA multiply float32 in TF32 and, with "medium", the CPU
    (oneDNN, AMX) in bf16: measured here, a 2048-long float32 product came out 0.53 off against
    1.3e-4 in IEEE float32, far outside any bound the rescore trusts.  Set through torch's
    per-backend ``fp32_precision`` (torch refuses a mix of its legacy and new switches), and the
    caller's settings restored on the way out."""
    backends = [torch.backends.mkldnn.matmul, torch.backends.cuda.matmul]
    before = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value
