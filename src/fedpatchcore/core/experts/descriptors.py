"""What the logical experts look at: patch features projected, pooled per image and per grid cell.

Every expert starts from the patch features PatchCore already computes (``(B, h, w, d)``, the
two backbone stages of :class:`~fedpatchcore.core.features.embedding.PatchEmbedder`), first
mapped by a public seeded random projection to ``experts.projection_dim`` dimensions (pooling
and projecting commute, so this costs nothing in what the pooled features say, and keeps a
Gaussian per grid cell small enough to send):

* :func:`global_descriptor`: the mean of an image's projected patches (PUAD's globally pooled
  features; both stages, so what is seen and roughly where);
* :func:`cell_descriptors`: the mean over each cell of a coarse ``grid`` x ``grid`` partition of
  the patch grid, optionally also over windows shifted by up to ``shift`` patches in each
  direction (the position expert scores a cell with the best of its 3 x 3 shifted windows, so a
  part a few pixels off its place is not an anomaly while a part in another cell is);
* the patches themselves, for the composition expert's k-means (:mod:`.kmeans`).
"""

from __future__ import annotations

import numpy as np

from fedpatchcore.core.common.seeding import derive_seed
from fedpatchcore.core.features.projection import random_projection_matrix

__all__ = ["cell_descriptors", "cell_edges", "expert_projection", "global_descriptor", "project_patches"]


def expert_projection(dim: int, projection_dim: int | None, seed: int) -> np.ndarray | None:
    """The public ``(dim, projection_dim)`` map of the experts (None: keep all ``dim`` dimensions).

    It depends only on ``(dim, projection_dim, seed)``, so every client of a category and the
    evaluator compute the same matrix without exchanging it.
    """
    if projection_dim is None or int(projection_dim) >= int(dim):
        return None
    return random_projection_matrix(int(dim), int(projection_dim), derive_seed(seed, "experts_projection"))


def project_patches(features: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Patch features ``(B, h, w, d)`` -> ``(B, h, w, p)`` float64 (p = d without a projection)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 4:
        raise ValueError(f"patch features must be (B, h, w, d), got shape {features.shape}")
    if projection is not None:
        if projection.shape[0] != features.shape[-1]:
            raise ValueError(
                f"patch features have {features.shape[-1]} dimensions, the experts were fitted on {projection.shape[0]}"
            )
        features = features @ projection
    return features.astype(np.float64)


def global_descriptor(patches: np.ndarray) -> np.ndarray:
    """``(B, h, w, p)`` -> ``(B, p)``: the mean over every patch of an image."""
    return patches.mean(axis=(1, 2))


def cell_edges(size: int, grid: int) -> np.ndarray:
    """Patch-row (or column) boundaries of ``min(grid, size)`` cells as equal as possible."""
    cells = max(1, min(int(grid), int(size)))
    return np.floor(np.arange(cells + 1) * size / cells).astype(np.int64)


def cell_descriptors(patches: np.ndarray, grid: int, shift: int = 0) -> np.ndarray:
    """Mean projected patch of every cell, for every window shift: ``(B, S, gh, gw, p)``.

    ``S = (2 shift + 1)²`` windows per cell (the unshifted one first): the cell's patch window
    moved by ``(dy, dx)`` patches, ``|dy|, |dx| <= shift``, clipped to the image; a window that
    would leave the image entirely is the unshifted one. ``gh, gw = min(grid, h), min(grid, w)``.
    """
    batch, height, width, dim = patches.shape
    rows, cols = cell_edges(height, grid), cell_edges(width, grid)
    integral = np.zeros((batch, height + 1, width + 1, dim))
    integral[:, 1:, 1:] = patches.cumsum(axis=1).cumsum(axis=2)
    offsets = [(0, 0)] + [
        (dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1) if (dy, dx) != (0, 0)
    ]
    out = np.empty((batch, len(offsets), len(rows) - 1, len(cols) - 1, dim))
    for s, (dy, dx) in enumerate(offsets):
        r0, r1 = np.clip(rows[:-1] + dy, 0, height), np.clip(rows[1:] + dy, 0, height)
        c0, c1 = np.clip(cols[:-1] + dx, 0, width), np.clip(cols[1:] + dx, 0, width)
        empty_r, empty_c = r1 <= r0, c1 <= c0
        r0, r1 = np.where(empty_r, rows[:-1], r0), np.where(empty_r, rows[1:], r1)
        c0, c1 = np.where(empty_c, cols[:-1], c0), np.where(empty_c, cols[1:], c1)
        total = (
            integral[:, r1][:, :, c1]
            - integral[:, r0][:, :, c1]
            - integral[:, r1][:, :, c0]
            + integral[:, r0][:, :, c0]
        )
        count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(np.float64)
        out[:, s] = total / count[None, :, :, None]
    return out
