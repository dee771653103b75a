"""Projection bounds from the data: a basis fitted to the reference bounds r for every pair cheaply.

For z-normalised unit vectors x, y and an orthogonal projection P onto a d-dimensional subspace,

    x.y = Px.Py + (x - Px).(y - Py) <= Px.Py + ||x - Px|| ||y - Py||          (Cauchy-Schwarz)

Block means (:func:`block_basis`) are one such P, fixed in advance.  Here P is fitted to
the reference itself: its leading principal directions (the eigenvectors of the Gram matrix of a
seeded sample of normalised reference rows, :func:`fit_basis`, refined by one step of subspace
iteration over a larger sample, :func:`refine_basis`).  Brain slices live near a
low-dimensional subspace, so ||y - Py|| is small and the bound is tight: on 4x64x64 phantom
slices, d = 256 leaves under 1 % of pairs whose bound reaches a query's k-th best, where 4x4
block means (d = 1024) leave 8-10 % (BENCHMARKS.md).  Each pair's bound costs a product of
d-long codes in place of D-long vectors.

Rigour in finite precision.  W (D x d) is stored in float32, orthonormalised by CholQR2
(:func:`fit_basis`), so it is orthonormal only up to delta >= ||W^T W - I||_2, which
:func:`basis_delta` computes in float64 (Frobenius norm, plus the float64 rounding of that
computation).  P = W (W^T W)^-1 W^T is the exact orthogonal projection onto span(W).  Codes
c = fl(W^T x) are computed in float32 in slices of CODE_CHUNK pixels, summed in float32 in
groups of CODE_GROUP slices and then in float64, so each coordinate is off by at most
(g + u) ||x|| ||w_j||, g = gamma_C + gamma_G (1 + gamma_C) (Higham eq. 3.5; u = 2^-24 covers
rounding x to float32) plus the float64 sum and the rounding of the code to float32, and

    ||c - W^T x|| <= eta = sqrt(d) ((g + u) sqrt(1 + delta) ||x|| + 2 n_C u64) + u ||c||.

With a = W^T x, b = W^T y: Px.Py = a^T (W^T W)^-1 b, ||Px||^2 >= ||a||^2 / (1 + delta), so

    ||x - Px|| <= rho(x) = sqrt(||x||^2 - max(0, ||c|| - eta)^2 / (1 + delta))
    |Px.Py - fl32(c_x.c_y)| <= eta_x ||b|| + ||c_x|| eta_y + (gamma_d + 2 delta) ||c_x|| ||c_y||

and the bound used is fl32(c_x.c_y) + rho(x) rho(y) + slack(x) + slack(y) with slack(x) =
1.001 eta_x + (gamma_d + 2 delta + 1e-6) / 2 (all norms here are at most 1.0005).  It is never
below the true r; ``tests/test_search_projection.py`` checks it on every pair, adversarial data
included.  At CODE_CHUNK = 256 and d = 256, eta is about 2.6e-4.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import WorkbenchError
from .bounds import ieee_float32

U32 = 2.0**-24
U64 = 2.0**-53
#: pixels per float32 partial product of a code (partials are summed in float64)
CODE_CHUNK = 256
#: partial products summed in float32 in groups of this many before the float64 sum
CODE_GROUP = 16
#: rows of the reference sampled to fit the basis (the Gram matrix is SAMPLE x SAMPLE)
BASIS_SAMPLE = 2048
#: rows per direction of the basis that :func:`refine_basis` reads (a seeded sample, the basis's
#: own sample included; the whole reference where it is smaller): 20 x 1,024 rows at workload (b)
#: came within 6 % of all 80,000 in the pairs left, for a quarter of the time (BENCHMARKS.md)
REFINE_PER_DIM = 20
BASES = ("pca", "blocks")


def gamma(n: int, u: float = U32) -> float:
    return n * u / (1 - n * u)


def fit_basis(sample: torch.Tensor, d: int) -> torch.Tensor:
    """An orthonormal basis (D x d', float32, d' <= d) of the leading principal directions of
    ``sample``, unit rows (n x D, float32 or float64).

    Why not ``torch.svd_lowrank`` or scikit-learn's PCA: the sample is short and wide (n << D), so
    the n x n Gram matrix is the cheapest exact route (one float32 product and one small ``eigh``).
    The directions are orthonormalised by Cholesky QR done twice (CholQR2), with its d x d Gram
    matrices and triangular solves in float64 over blocks of pixels, so memory stays at the
    float32 sample and basis (a 5 x 256 x 256 basis of 1024 is 1.3 GB; a float64 QR would need
    three times that).  The basis need not be optimal; delta (:func:`basis_delta`) says how far
    from orthonormal it is.
    """
    n, dim = sample.shape
    s32 = sample.to(torch.float32)
    gram = (s32 @ s32.T).double()
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order], evecs[:, order]
    keep = int(min(d, dim, int((evals > evals[0] * 1e-10).sum()))) if evals[0] > 0 else 0
    if keep == 0:
        raise WorkbenchError("the reference sample has no variance to fit a basis to (every image constant?)")
    w = s32.T @ evecs[:, :keep].float()  # D x keep
    del s32
    cholqr2(w)
    return w.contiguous()


def cholqr2(w: torch.Tensor) -> torch.Tensor:
    """Orthonormalise the columns of ``w`` (D x d float32) in place by Cholesky QR done twice, its
    d x d Gram matrices and triangular solves in float64 over blocks of pixels (memory stays at
    ``w``); return R (d x d float64, upper triangular) with w_given ~ w_returned @ R."""
    r = torch.eye(w.shape[1], dtype=torch.float64)
    for _ in range(2):  # CholQR2: the second pass makes it orthonormal to float32 rounding
        g = blocked_gram(w)
        g.diagonal().add_(g.diagonal().max() * 1e-12)  # a tiny shift keeps Cholesky defined
        chol = torch.linalg.cholesky(g)
        for a in range(0, w.shape[0], BASIS_ROWS):
            block = w[a:a + BASIS_ROWS].double()
            w[a:a + BASIS_ROWS] = torch.linalg.solve_triangular(chol, block.T, upper=False).T.float()
        r = chol.T @ r
    return r


def refine_basis(w: torch.Tensor, blocks) -> torch.Tensor:
    """One step of subspace iteration (the power step of a randomised SVD) from the basis ``w``
    over ``blocks`` of unit rows of the reference: the leading directions of span(Y^T Y w), in
    order of strength (D x d float32, orthonormal to float32 rounding; ``w`` is not changed).

    Why: :func:`fit_basis` sees BASIS_SAMPLE rows, too few to place a basis of 1,024 directions
    well; this step lets many more rows (``blocks``) move the subspace towards the reference's own
    principal directions at the cost of two products per row.  At workload (b) (80,000 x 65,536,
    d = 1,024) one step over 20,000 rows halved the pairs whose bound reaches a query's true 5th
    best (107,552 -> 52,944) and cut the rows they touch by 39 % (BENCHMARKS.md, issue 16 item 19).
    The columns of Y^T Y w are scaled to unit norm before the QR (their norms span the square of the
    eigenvalues' range, which would ruin the Gram matrix's condition) and ordered afterwards by the
    singular values of the unscaled product, so the first columns (a cascade's first level) stay the
    strongest.
    """
    z = torch.zeros_like(w)
    for y in blocks:
        y32 = y.to(torch.float32)
        z.addmm_(y32.T, y32 @ w)
    scale = torch.linalg.vector_norm(z, dim=0).double()
    if not bool((scale > 0).all()):  # rows that miss a direction altogether: keep the basis as fitted
        return w
    z /= scale.float()
    r = cholqr2(z) * scale  # Y^T Y w ~ z @ r
    u = torch.linalg.svd(r)[0]  # r = U S V^T: z @ U are the left singular vectors, strongest first
    for a in range(0, z.shape[0], BASIS_ROWS):
        z[a:a + BASIS_ROWS] = (z[a:a + BASIS_ROWS].double() @ u).float()
    return z


#: pixels per block of the float64 passes over a basis
BASIS_ROWS = 8192


def blocked_gram(w: torch.Tensor) -> torch.Tensor:
    """W^T W in float64, over blocks of pixels (d x d)."""
    d = w.shape[1]
    g = torch.zeros((d, d), dtype=torch.float64, device=w.device)
    for a in range(0, w.shape[0], BASIS_ROWS):
        block = w[a:a + BASIS_ROWS].double()
        g += block.T @ block
    return g


def block_ids(selector, image_shape, block: int) -> tuple[np.ndarray, int]:
    """Block id of every selected pixel (channel, then each spatial axis // b: 2D slices and 3D
    volumes alike), and the number of blocks."""
    c, *spatial = image_shape
    n_ch = len(selector.channels) if selector.channels else c
    ids = np.arange(n_ch).reshape((n_ch,) + (1,) * len(spatial))
    for axis, size in enumerate(spatial):
        count = -(-size // block)
        shape = [1] * (len(spatial) + 1)
        shape[axis + 1] = size
        ids = ids * count + (np.arange(size) // block).reshape(shape)
    ids = np.broadcast_to(ids, (n_ch, *spatial)).reshape(-1)
    if selector.mask is not None:
        ids = ids[selector.mask]
    uniq, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int64), len(uniq)


def block_basis(selector, image_shape, block: int) -> torch.Tensor:
    """Block means as a basis that needs no fitting: column j is the indicator of block j's
    selected pixels divided by sqrt(its count) (D x m, float32), an orthogonal projection (the
    block-mean bounds of the first version of the pruned search)."""
    ids, m = block_ids(selector, image_shape, block)
    dim = len(ids)
    if dim * m > 2**28:
        raise WorkbenchError(f"a {block}x{block} block basis of {dim} pixels has {m} columns: too large a dense basis; "
                             f"use a larger block or basis='pca'")
    counts = np.bincount(ids, minlength=m).astype(np.float64)
    w = torch.zeros((dim, m), dtype=torch.float32)
    w[torch.arange(dim), torch.from_numpy(ids)] = torch.from_numpy(1 / np.sqrt(counts[ids])).float()
    return w


def basis_delta(w: torch.Tensor) -> float:
    """An upper bound on ||W^T W - I||_2 (Frobenius norm in float64 plus its rounding)."""
    dim, d = w.shape
    g = blocked_gram(w)
    g.diagonal().sub_(1.0)
    # each entry of W^T W is off by gamma_D |w_i|.|w_j| <= gamma_D (1 + ...), whatever the blocking
    rounding = d * gamma(dim, U64) * 1.01
    return float(torch.linalg.matrix_norm(g).item()) * (1 + 1e-12) + rounding + 1e-15


@ieee_float32()
def codes(x: torch.Tensor, w: torch.Tensor, delta: float, input_error: float = 0.0,
          prefix: int | None = None):
    """Codes (n x d float32), an upper bound on ||x - Px|| and the slack of each row (float64).

    ``x``: z-normalised rows (float64 or float32; their norms are measured, so constant rows,
    which are all zero, get zero bounds).  ``input_error``: a bound on how far each given row is
    from the exact unit vector (NORMALISE_F32 for rows normalised in float32); it is added to eta
    (times ||w_j|| <= sqrt(1 + delta), over d coordinates) and to rho (the residual's norm is
    1-Lipschitz).  ``prefix`` = m: also return rho and slack of the first m codes alone (the
    projection onto the first m columns, the first level of a cascade), as a fourth item
    ``(rho_m, slack_m)``.  Module docstring: what the bounds hold.
    """
    n, dim = x.shape
    d = w.shape[1]
    chunks = -(-dim // CODE_CHUNK)
    pad = chunks * CODE_CHUNK - dim
    w32 = w.to(device=x.device)
    if pad:
        w32 = torch.nn.functional.pad(w32, (0, 0, 0, pad))
    wc = w32.view(chunks, CODE_CHUNK, d)
    acc = torch.zeros((n, d), dtype=torch.float64, device=x.device)
    group = CODE_GROUP if chunks % CODE_GROUP == 0 else 1
    step = group * max(1, CODE_GROUP // group)  # slices per batched product: whole groups
    # rows per block: their float32 copy and a batch's (step, rows, d) partial products each ~64 MB
    # at most.  Products of many rows by a batch of slices ran at 2.3x the speed of all slices of
    # few rows (0.41 against 0.94 s for 1,000 x 65,536 pixels, d = 1,024: BENCHMARKS.md, issue 16
    # item 14); the sums, and so the bound, are the same
    rows = max(1, min(2**26 // (4 * d * step), 2**26 // (4 * chunks * CODE_CHUNK)))
    for a in range(0, n, rows):
        x32 = x[a:a + rows].to(torch.float32)  # a block at a time: no float32 copy of all rows
        if pad:
            x32 = torch.nn.functional.pad(x32, (0, pad))
        xc = x32.view(-1, chunks, CODE_CHUNK).transpose(0, 1)  # chunks x rows x C
        block = acc[a:a + rows]
        for c in range(0, chunks, step):
            part = torch.bmm(xc[c:c + step], wc[c:c + step])
            if group > 1:  # groups of partials summed in float32 first: gamma_G more, 1/G of the float64 work
                part = part.view(-1, group, *part.shape[1:]).sum(dim=1)
            block += part.double().sum(dim=0)
    c = acc.to(torch.float32)
    xnorm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64) * (1 + 1e-15)  # no float64 copy of x
    rho, slack = code_bounds(c, xnorm, chunks, delta, input_error)
    if prefix is None:
        return c, rho, slack
    return c, rho, slack, code_bounds(c[:, :prefix], xnorm, chunks, delta, input_error)


def code_bounds(c: torch.Tensor, xnorm: torch.Tensor, chunks: int, delta: float,
                input_error: float) -> tuple[torch.Tensor, torch.Tensor]:
    """rho and slack of rows with codes ``c`` (n x m, any leading m columns of the basis: they
    are orthonormal to within delta too) and norms ``xnorm`` (module docstring)."""
    m = c.shape[1]
    cnorm = torch.linalg.vector_norm(c.double(), dim=1)
    g_c = gamma(CODE_CHUNK) + gamma(CODE_GROUP) * (1 + gamma(CODE_CHUNK))
    eta = (math.sqrt(m) * ((g_c + U32) * math.sqrt(1 + delta) * xnorm + 2 * chunks * U64 * 1.01)
           + U32 * cnorm) * (1 + 1e-9)
    inside = (cnorm - eta).clamp_min(0)
    rho2 = xnorm**2 - inside**2 / (1 + delta)
    rho = rho2.clamp_min(0).sqrt() * (1 + 1e-12) + 1e-12
    if input_error:
        live = xnorm > 0  # constant rows are exactly zero either way
        eta = eta + live * (math.sqrt(m) * math.sqrt(1 + delta) * input_error)
        rho = rho + live * input_error
    slack = 1.001 * eta + (gamma(m) + 2 * delta + 1e-6) / 2
    return rho, slack


def upper_bounds(cq: torch.Tensor, rho_q: torch.Tensor, slack_q: torch.Tensor, cr: torch.Tensor,
                 rho_r: torch.Tensor, slack_r: torch.Tensor) -> torch.Tensor:
    """Upper bound on r for every (query, reference) pair, Q x N float32 (rounded up by 1e-6,
    which covers the float32 sum of its three terms)."""
    return finish_bounds(cq @ cr.T, rho_q, slack_q, rho_r, slack_r)


def finish_bounds(est: torch.Tensor, rho_q, slack_q, rho_r, slack_r) -> torch.Tensor:
    """The bounds from the code products ``est`` = fl32(c_x.c_y) (Q x N float32), in place."""
    ub = est
    ub.addr_(rho_q.float(), rho_r.float())
    ub += (slack_q.float() + 1e-6)[:, None]
    ub += slack_r.float()[None, :]
    return ub
