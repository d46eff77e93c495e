"""k-means of normal patch features by Lloyd rounds whose statistics merge exactly.

One Lloyd round: every site assigns its (projected) patches to the nearest of the broadcast
centroids and reports, per cluster, how many patches it assigned and their sum
(:class:`LloydSums`); the server adds the reports and moves each centroid to the mean of its
patches (:func:`update_centroids`; a cluster no site assigned anything to keeps its place).
Because counts and sums add up, ``R`` rounds over several sites give exactly the centroids of
``R`` rounds over their pooled patches (from the same start). The start is public to every site:
greedy k-center on the rows of the memory bank the server already holds (:func:`initial_centroids`),
so no extra round is needed to agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpatchcore.core.coreset.kcenter import greedy_kcenter

__all__ = ["LloydSums", "assign", "histograms", "initial_centroids", "lloyd_sums", "update_centroids"]


def assign(patches: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean distance) of every row of ``patches`` ``(N, p)``."""
    patches = np.asarray(patches, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    distances = (
        np.einsum("np,np->n", patches, patches)[:, None]
        - 2.0 * patches @ centroids.T
        + np.einsum("kp,kp->k", centroids, centroids)[None, :]
    )
    return distances.argmin(axis=1)


@dataclass
class LloydSums:
    """Per cluster: patches assigned (``counts``, k) and their sum (``sums``, k x p)."""

    counts: np.ndarray
    sums: np.ndarray

    def merge(self, other: LloydSums) -> LloydSums:
        if other.sums.shape != self.sums.shape:
            raise ValueError(f"cannot merge Lloyd statistics of shape {other.sums.shape} into {self.sums.shape}")
        return LloydSums(self.counts + other.counts, self.sums + other.sums)


def lloyd_sums(patches: np.ndarray, centroids: np.ndarray) -> LloydSums:
    """One site's Lloyd statistics of ``patches`` ``(N, p)`` for the broadcast ``centroids``."""
    labels = assign(patches, centroids)
    k = len(centroids)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, patches.shape[1]))
    np.add.at(sums, labels, np.asarray(patches, dtype=np.float64))
    return LloydSums(counts, sums)


def update_centroids(centroids: np.ndarray, sums: LloydSums) -> np.ndarray:
    """The centroids after one Lloyd round (a cluster without patches keeps its centroid)."""
    out = np.array(centroids, dtype=np.float64, copy=True)
    filled = sums.counts > 0
    out[filled] = sums.sums[filled] / sums.counts[filled, None]
    return out


def initial_centroids(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``min(k, len(rows))`` starting centroids: greedy k-center (farthest-first) over ``rows`` ``(N, p)``.

    Farthest-first starts spread over every kind of patch, so a component that covers little
    of an image (a small part) still gets a cluster of its own.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if len(rows) == 0:
        raise ValueError("k-means needs at least one bank row to start from")
    chosen = greedy_kcenter(rows, int(k), projection_dim=None, seed=int(seed), dtype="float64")
    return rows[np.sort(chosen)]


def histograms(patches: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Share of each image's patches in every cluster: ``(B, h, w, p)`` -> ``(B, k)`` (rows sum to 1)."""
    batch = patches.shape[0]
    flat = patches.reshape(batch, -1, patches.shape[-1])
    k = len(centroids)
    labels = assign(flat.reshape(-1, flat.shape[-1]), centroids).reshape(batch, -1)
    counts = np.stack([np.bincount(row, minlength=k) for row in labels]).astype(np.float64)
    return counts / flat.shape[1]
