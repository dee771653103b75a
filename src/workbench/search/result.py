"""What a search returns: :class:`SearchResult`, and how constant queries are marked in it."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SearchResult:
    """Top-k matches: ``values`` (Q, k) Pearson r, descending; ``indices`` (Q, k) into the reference.

    Constant (zero-variance) queries have no Pearson r: their rows hold index -1 and value
    -inf, and ``constant_queries`` marks them.  Constant reference images are never matched
    and are listed in ``constant_reference``.  Unpacks as ``values, indices = result``.
    ``stats`` says how the search went (pairs screened, candidates rescored, the bound used).
    """

    values: np.ndarray
    indices: np.ndarray
    constant_queries: np.ndarray
    constant_reference: np.ndarray
    pairs: int = 0
    rescored: int = 0
    stats: dict = field(default_factory=dict)
    #: a search asked for the best match of each label as well (``by_label``, :mod:`.subjects`):
    #: ``(values, indices, complete)``, per query the best of each of its k best labels and whether
    #: that is the exact answer; None otherwise
    by_label: tuple | None = None

    def __iter__(self):
        return iter((self.values, self.indices))


def mark_constant_queries(values: np.ndarray, indices: np.ndarray, const_q: np.ndarray, *, stacklevel: int = 4) -> None:
    """Constant queries have no Pearson r: value -inf, index -1, and a warning that lists them.

    ``stacklevel`` is passed to :func:`warnings.warn`: the warning names the user's call.
    """
    values[const_q] = -np.inf
    indices[const_q] = -1
    if const_q.any():
        warnings.warn(f"{int(const_q.sum())} query image(s) are constant (zero variance); Pearson r is undefined "
                      f"for them and they are reported with index -1: {np.flatnonzero(const_q)[:10].tolist()}",
                      stacklevel=stacklevel)
