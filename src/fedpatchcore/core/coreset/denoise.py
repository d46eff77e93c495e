"""Patch-level denoising of a client's training patches before k-center (SoftPatch).

A real "good" folder holds a few defective parts. PatchCore keeps every patch it is given, and
greedy k-center picks the most outlying patches first, so a defect in the training folder
becomes a bank row and a matching test defect scores as normal. SoftPatch (Jiang et al.,
NeurIPS 2022, "SoftPatch: Unsupervised Anomaly Detection with Noisy Data") scores every
training patch against the patches at the same position in the client's *other* images,
drops the most outlying share before the coreset and keeps the score of every kept row as a
weight the scorer can use (``scoring.soft_weights``).

Here a patch at grid position (y, x) of image i is compared with the patches of every other
image j != i at the positions within ``radius`` grid steps of (y, x) (a (2r+1)² window; the
image's own patches are never its references, so a defect spanning several patches cannot
vouch for itself). ``method`` (``coreset.denoise``):

* ``knn``: mean distance to the ``neighbours`` nearest references;
* ``lof``: local outlier factor (Breunig et al. 2000) over those ``neighbours`` nearest
  references: the references' local reachability density over the patch's own (about 1 for
  a patch as dense as its neighbours, larger for an outlier). It compares densities, so alike
  defects at one place in a few images can make each other's neighbourhood look as dense as a
  normal one (two stained images of ten, 3 neighbours: nothing planted was dropped), where
  ``knn``'s distances still stand out;
* ``gaussian``: Mahalanobis distance to a Gaussian fitted to the window's patches of all
  images (Ledoit-Wolf shrunk covariance, since a window holds fewer patches than dimensions).

Each score is divided by the median score of the same window (so a typical patch scores 1
whatever the position's own spread) before the ``share`` highest are dropped, those of them
scoring under ``min_score`` (``coreset.denoise_min_score``) excepted: a clean folder's most
outlying patches are rare normal ones (its relative LOF scores stay under about 1.25 at the 99th
percentile on the synthetic sets, where planted defects reach 1.5-4.5), so a floor keeps them.
With ``image_gate`` (``coreset.denoise_image_gate``, 3.5) only rows of images that stand out as
a whole may be dropped: the robust z-score (median, MAD over the category's images) of each
image's 3rd-highest row score. A defect is a cluster of outlying patches in one image, a clean
image's rare normal patch is alone; this is what lets ``knn`` (better recall of weak defects than
``lof``) run on a clean folder without dropping its rare normal patches.
:meth:`DenoiseResult.suspect_images` lists the images the gate lets through, most outlying first:
the client logs them by key, as "good" images a user should look at again.

The weight of a kept row is that ratio, floored at 1: a row as typical as its position's
median, or more, keeps its distances unchanged, a row ``w`` times more outlying multiplies the
distance of a test patch matched to it by ``w``.

Scores are computed on the vectors k-center chooses on (the feature file's random
projection), a window at a time: memory is one window's distance matrix, not N × N.

Imports: ``common``, ``data``, ``features`` (and this package).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from fedpatchcore.core.coreset.streaming import projected_rows
from fedpatchcore.core.features.feature_store import PatchFeatureFile

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "DenoiseResult",
    "DenoiseSettings",
    "denoise_feature_file",
    "denoise_rows",
    "image_outlyingness",
    "outlier_scores",
]

#: ``coreset.denoise`` values; ``none`` keeps every patch (PatchCore as before).
METHODS = ("none", "knn", "lof", "gaussian")


@dataclass(frozen=True)
class DenoiseSettings:
    """How a client scores and drops outlying training patches (``coreset.denoise*``)."""

    method: str = "none"
    share: float = 0.05  # share of a category's patch rows dropped at most, most outlying first
    radius: int = 1  # positions within this many grid steps (Chebyshev) are one position's window
    neighbours: int = 3  # nearest references of knn and lof
    # A row is dropped only if it also scores at least this many times its window's median (1: the
    # share alone decides); clean folders score under ~1.25 at their 99th percentile (measured).
    min_score: float = 1.3
    # Only rows of images whose outlyingness (robust z-score of their 3rd-highest row score among
    # the category's images) reaches this may be dropped; None: any image's rows. 3.5: a clean
    # folder's images stayed under 3.4 on the synthetic sets, most planted ones above 3.5.
    image_gate: float | None = 3.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"coreset.denoise must be one of {list(METHODS)}, got {self.method!r}")
        if not 0.0 <= float(self.share) < 1.0:
            raise ValueError(f"coreset.denoise_share must lie in [0, 1), got {self.share!r}")
        if int(self.radius) < 0:
            raise ValueError(f"coreset.denoise_radius must be >= 0, got {self.radius!r}")
        if int(self.neighbours) < 1:
            raise ValueError(f"coreset.denoise_neighbours must be >= 1, got {self.neighbours!r}")
        if not float(self.min_score) >= 1.0:
            raise ValueError(f"coreset.denoise_min_score must be >= 1, got {self.min_score!r}")
        if self.image_gate is not None and not float(self.image_gate) > 0.0:
            raise ValueError(f"coreset.denoise_image_gate must be > 0 or null, got {self.image_gate!r}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @classmethod
    def from_parameters(cls, coreset: Mapping[str, Any] | None, category: str | None = None) -> DenoiseSettings:
        """From the ``coreset`` block; ``coreset.denoise_by_category.<category>`` overrides
        ``coreset.denoise`` for that category (what validation chose for it)."""
        coreset = coreset or {}
        method = (coreset.get("denoise_by_category") or {}).get(category, coreset.get("denoise", "none"))
        return cls(
            method=str(method),
            share=float(coreset.get("denoise_share", cls.share)),
            radius=int(coreset.get("denoise_radius", cls.radius)),
            neighbours=int(coreset.get("denoise_neighbours", cls.neighbours)),
            min_score=float(coreset.get("denoise_min_score", cls.min_score)),
            image_gate=_optional_float(coreset.get("denoise_image_gate", cls.image_gate)),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class DenoiseResult:
    """Which rows of a category's patch file survive, and the weight of each survivor."""

    kept: np.ndarray  # (M,) int64, increasing: rows of the feature file k-center may choose
    weights: np.ndarray  # (M,) float32 >= 1, one per kept row
    scores: np.ndarray  # (N,) float32, every row's outlier score over its window's median
    # (n_images,) each image's outlyingness (image_outlyingness); None when nothing was scored
    image_outlyingness: np.ndarray | None = None

    def suspect_images(self, gate: float | None) -> list[tuple[int, float]]:
        """(image position, outlyingness) of the images at least ``gate`` outlying, most first:
        the "good" images a user should look at (None: no gate, no suspects)."""
        if gate is None or self.image_outlyingness is None:
            return []
        flagged = np.flatnonzero(self.image_outlyingness >= gate)
        flagged = flagged[np.argsort(-self.image_outlyingness[flagged], kind="stable")]
        return [(int(i), float(self.image_outlyingness[i])) for i in flagged]

    @property
    def dropped(self) -> np.ndarray:
        mask = np.ones(len(self.scores), dtype=bool)
        mask[self.kept] = False
        return np.flatnonzero(mask)


# --------------------------------------------------------------------------- windows


def _window(y: int, x: int, radius: int, height: int, width: int) -> tuple[slice, slice]:
    return slice(max(0, y - radius), min(height, y + radius + 1)), slice(max(0, x - radius), min(width, x + radius + 1))


def _grid_view(vectors: np.ndarray, n_images: int, grid: tuple[int, int]) -> np.ndarray:
    height, width = int(grid[0]), int(grid[1])
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n_images * height * width:
        raise ValueError(
            f"expected {n_images} images x {height}x{width} patches = {n_images * height * width} rows, "
            f"got an array of shape {vectors.shape}"
        )
    return vectors.reshape(n_images, height, width, vectors.shape[1])


def _neighbour_table(grid_rows: np.ndarray, radius: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (float64) and global row ids (N, k') of every row's k' nearest references.

    k' = min(k, what the smallest (corner) window holds from the other images), so every row
    has k' finite references. Distances are computed in float32 (``|q|² + |r|² - 2 q·r``, one
    matrix product per window), which ranks neighbours as exactly as outlier scores need.
    """
    n_images, height, width, _ = grid_rows.shape
    n_rows = n_images * height * width
    corner = min(radius + 1, height) * min(radius + 1, width)
    k_eff = max(1, min(k, (n_images - 1) * corner))
    distances = np.empty((n_rows, k_eff), dtype=np.float64)
    ids = np.empty((n_rows, k_eff), dtype=np.int64)
    row_ids = np.arange(n_rows).reshape(n_images, height, width)
    grid_rows = np.ascontiguousarray(grid_rows, dtype=np.float32)
    norms = np.einsum("nhwd,nhwd->nhw", grid_rows, grid_rows)
    images = np.arange(n_images)
    for y in range(height):
        for x in range(width):
            ys, xs = _window(y, x, radius, height, width)
            refs = grid_rows[:, ys, xs].reshape(-1, grid_rows.shape[-1])  # image after image
            per_image = len(refs) // n_images
            sq = grid_rows[:, y, x] @ refs.T  # (n, n * per_image)
            sq *= -2.0
            sq += norms[:, y, x][:, None]
            sq += norms[:, ys, xs].reshape(1, -1)
            np.maximum(sq, 0.0, out=sq)
            sq.reshape(n_images, n_images, per_image)[images, images] = np.inf  # never one's own image
            nearest = np.argpartition(sq, k_eff - 1, axis=1)[:, :k_eff]
            near = np.take_along_axis(sq, nearest, axis=1)
            order = near.argsort(axis=1)
            rows = row_ids[:, y, x]
            distances[rows] = np.sqrt(np.take_along_axis(near, order, axis=1))
            ids[rows] = row_ids[:, ys, xs].reshape(-1)[np.take_along_axis(nearest, order, axis=1)]
    return distances, ids


def _knn_scores(grid_rows: np.ndarray, radius: int, k: int) -> np.ndarray:
    distances, _ = _neighbour_table(grid_rows, radius, k)
    return distances.mean(axis=1)


def _lof_scores(grid_rows: np.ndarray, radius: int, k: int) -> np.ndarray:
    distances, ids = _neighbour_table(grid_rows, radius, k)
    k_distance = distances[:, -1]
    reach = np.maximum(distances, k_distance[ids])  # reach-dist(p, o) = max(k-distance(o), d(p, o))
    tiny = np.finfo(np.float64).tiny
    density = 1.0 / np.maximum(reach.mean(axis=1), tiny)  # local reachability density
    return density[ids].mean(axis=1) / density


def _mahalanobis_shrunk(pool: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of ``queries`` (q, d) to a Gaussian fitted to ``pool`` (m, d).

    The covariance is Ledoit-Wolf's shrinkage ``Σ = (1 - a) S + a (tr S / d) I`` (the formula
    of scikit-learn's ``ledoit_wolf``), solved in the smaller of the two spaces: the d × d
    covariance when the window holds more patches than dimensions, else the m × m Gram matrix
    of the pool (Woodbury): cost min(m, d)² · max(m, d), never m² · d for a large window.
    """
    m, dim = pool.shape
    mean = pool.mean(axis=0)
    centred = pool - mean
    small = centred @ centred.T if m <= dim else centred.T @ centred  # Gram (m, m) or scatter (d, d)
    norms_sq = (centred**2).sum(axis=1)
    mu = norms_sq.sum() / (m * dim)  # tr(S) / d
    # Ledoit-Wolf: delta = ||S - mu I||²_F / d, beta = min(delta, mean ||x xᵀ - S||²_F / (m d));
    # ||X Xᵀ||_F = ||Xᵀ X||_F, so either matrix gives them.
    frobenius_sq = float(np.sum(small**2))
    delta = (frobenius_sq / m**2 - 2.0 * mu * norms_sq.sum() / m + dim * mu**2) / dim
    beta = min(delta, (np.sum(norms_sq**2) / m - frobenius_sq / m**2) / (m * dim))
    shrinkage = 0.0 if delta <= 0 else max(beta, 0.0) / delta
    offsets = queries - mean
    if mu <= 0:
        return np.sqrt((offsets**2).sum(axis=1))
    ridge = shrinkage * mu
    if m > dim or ridge <= 0:  # Σ itself (pseudo-inverse when unshrunk and singular)
        covariance = (1.0 - shrinkage) * (centred.T @ centred if m <= dim else small) / m + ridge * np.eye(dim)
        if ridge <= 0:
            solved = np.linalg.pinv(covariance, hermitian=True) @ offsets.T
        else:
            solved = np.linalg.solve(covariance, offsets.T)
        return np.sqrt(np.maximum((offsets * solved.T).sum(axis=1), 0.0))
    if shrinkage >= 1.0:
        return np.sqrt((offsets**2).sum(axis=1) / mu)
    # Σ = (1-a)/m · XᵀX + a·mu·I;  Σ⁻¹ = (I - Xᵀ (c I + X Xᵀ)⁻¹ X) / (a mu),  c = m a mu / (1-a)
    projected = centred @ offsets.T  # (m, q)
    c = m * ridge / (1.0 - shrinkage)
    solved = np.linalg.solve(small + c * np.eye(m), projected)
    quadratic = ((offsets**2).sum(axis=1) - (projected * solved).sum(axis=0)) / ridge
    return np.sqrt(np.maximum(quadratic, 0.0))


def _gaussian_scores(grid_rows: np.ndarray, radius: int) -> np.ndarray:
    n_images, height, width, dim = grid_rows.shape
    scores = np.empty((n_images, height, width), dtype=np.float64)
    for y in range(height):
        for x in range(width):
            ys, xs = _window(y, x, radius, height, width)
            pool = grid_rows[:, ys, xs].reshape(-1, dim).astype(np.float64)
            scores[:, y, x] = _mahalanobis_shrunk(pool, grid_rows[:, y, x].astype(np.float64))
    return scores.reshape(-1)


def _relative_to_window_median(raw: np.ndarray, n_images: int, grid: tuple[int, int], radius: int) -> np.ndarray:
    """Each score over the median score of its window (all images): 1 for a typical patch.

    A window whose median is 0 (most patches duplicated in another image) is scaled by its mean
    instead, and one whose scores are all 0 scores 1 throughout.
    """
    height, width = grid
    scores = raw.reshape(n_images, height, width)
    out = np.empty_like(scores)
    for y in range(height):
        for x in range(width):
            ys, xs = _window(y, x, radius, height, width)
            window = scores[:, ys, xs]
            scale = float(np.median(window)) or float(window.mean())
            out[:, y, x] = scores[:, y, x] / scale if scale > 0 else 1.0
    return out.reshape(-1)


def outlier_scores(
    vectors: np.ndarray, n_images: int, grid: tuple[int, int], method: str, radius: int = 1, neighbours: int = 3
) -> np.ndarray:
    """(N,) float32 outlier score of every row over its window's median (see the module docstring).

    ``vectors``: (N, d) rows image after image, each image's ``grid`` = (h, w) patches in
    row-major order (a feature file's layout). With fewer than two images there is nothing to
    compare a patch with: every row scores 1.
    """
    if method not in METHODS or method == "none":
        raise ValueError(f"outlier_scores needs a method among {list(METHODS[1:])}, got {method!r}")
    grid_rows = _grid_view(vectors, int(n_images), grid)
    if n_images < 2:
        return np.ones(len(vectors), dtype=np.float32)
    # One window's matrices are small: BLAS threads would spend more time waking than computing
    # (20x slower on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        if method == "knn":
            raw = _knn_scores(grid_rows, radius, neighbours)
        elif method == "lof":
            raw = _lof_scores(grid_rows, radius, neighbours)
        else:
            raw = _gaussian_scores(grid_rows, radius)
    return _relative_to_window_median(raw, int(n_images), (int(grid[0]), int(grid[1])), radius).astype(np.float32)


def image_outlyingness(scores: np.ndarray, n_images: int) -> np.ndarray:
    """(n_images,) robust z-score of each image's 3rd-highest row score among the images.

    A defective part puts a cluster of outlying patches into one image; a clean image's rare
    normal patches are few and moderate. The 3rd-highest score (not the maximum) asks for a
    cluster; median and MAD (×1.4826) over the images stay those of the clean ones while fewer
    than half are defective. Images all alike (MAD 0): 0 for every image at or under the median,
    +inf above it.
    """
    per_image = np.asarray(scores, dtype=np.float64).reshape(int(n_images), -1)
    third = np.sort(per_image, axis=1)[:, -min(3, per_image.shape[1])]
    centre = float(np.median(third))
    spread = 1.4826 * float(np.median(np.abs(third - centre)))
    if spread <= 0:
        return np.where(third > centre, np.inf, 0.0)
    return (third - centre) / spread


def denoise_rows(vectors: np.ndarray, n_images: int, grid: tuple[int, int], settings: DenoiseSettings) -> DenoiseResult:
    """Score every row, drop the ``settings.share`` most outlying (ties: the earlier row first)
    among those scoring at least ``settings.min_score`` (and, with ``settings.image_gate``, lying
    in an image at least that outlying), weigh the rest by their score floored at 1.

    Disabled (``method: none``): every row kept with weight 1.
    """
    n_rows = len(vectors)
    if not settings.enabled:
        return DenoiseResult(np.arange(n_rows, dtype=np.int64), np.ones(n_rows, np.float32), np.ones(n_rows, np.float32))
    scores = outlier_scores(vectors, n_images, grid, settings.method, settings.radius, settings.neighbours)
    outlyingness = image_outlyingness(scores, n_images) if n_images > 1 else None
    n_drop = int(np.floor(settings.share * n_rows))
    eligible = scores >= settings.min_score  # a clean folder's tail is not noise
    if settings.image_gate is not None and outlyingness is not None:
        eligible &= np.repeat(outlyingness >= settings.image_gate, n_rows // int(n_images))
    order = np.lexsort((np.arange(n_rows), -scores))  # most outlying first, earlier row first on ties
    dropped = order[eligible[order]][:n_drop]
    mask = np.ones(n_rows, dtype=bool)
    mask[dropped] = False
    kept = np.flatnonzero(mask)
    weights = np.maximum(scores[kept], 1.0).astype(np.float32)
    return DenoiseResult(kept.astype(np.int64), weights, scores, outlyingness)


def denoise_feature_file(
    feature_file: PatchFeatureFile, n_images: int, grid: tuple[int, int], settings: DenoiseSettings
) -> DenoiseResult:
    """:func:`denoise_rows` of a streamed feature file, on the projection k-center chooses on
    (the full float16 vectors when the file keeps no projection)."""
    vectors = projected_rows(feature_file)
    if vectors is None:
        vectors = feature_file.load(mmap=True)
    return denoise_rows(vectors, n_images, grid, settings)
