"""The seeded random projection that every stage shares (coreset loop, feature store, DP release).

A Gaussian Johnson-Lindenstrauss matrix depends only on (input dimension, output dimension,
seed): it is public, data-independent, and the same on every platform.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DEFAULT_PROJECTION_DIM", "random_projection_matrix"]

#: Default dimension of the random projection used for the greedy loop. 128 keeps the
#: covering radius within a few percent of the unprojected greedy on patch features
#: while the per-step matrix-vector product stays memory-bandwidth cheap.
DEFAULT_PROJECTION_DIM = 128


def random_projection_matrix(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    """Seeded Gaussian Johnson-Lindenstrauss matrix of shape ``(dim_in, dim_out)``, float32.

    Entries are i.i.d. N(0, 1/dim_out), so ``x @ P`` preserves squared norms and
    distances in expectation. The same ``(dim_in, dim_out, seed)`` always gives the same
    matrix (numpy ``default_rng``), on every platform.
    """
    if dim_in < 1 or dim_out < 1:
        raise ValueError(f"projection dimensions must be >= 1, got {dim_in} -> {dim_out}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x50524F4A]))  # "PROJ"
    matrix = rng.standard_normal((dim_in, dim_out), dtype=np.float32)
    matrix *= np.float32(1.0 / math.sqrt(dim_out))
    return matrix
