"""A private summary bank: public centres moved by a few rounds of DP-Lloyd (``privacy.mechanism: summary``).

Releasing patch vectors one by one drowns them in noise (a row's noise is ≈ 2z·√(m·d) times
the clip norm); a statistic that averages many images does not. Per category:

1. **Public centres.** ``centres`` (K) starting points from public data only: patch vectors of
   public images (:func:`public_centres`: greedy k-center, then Lloyd, on the public vectors),
   never from a client's rows.
2. **DP-Lloyd rounds** (``rounds``, T). Every patch of an image goes to its nearest centre; its
   residual is clipped to ``residual_clip`` (R). The image's contribution, for every centre k,
   is (Σ residuals / (P·R), count / P, Σ |residual|² / (P·R²)) over its P patches: one vector
   of K·(d + 2) numbers, clipped *as a whole* to ``contribution_clip`` (B). Replacing one
   image moves the sum by at most Δ₂ = 2B, whatever its patches. The sums over all images
   (of every client: :mod:`~fedpatchcore.core.privacy.secure_sum`) get N(0, σ²) per
   coordinate, σ = z·2B, z from the accountant for T Gaussian releases.
3. **Server update** (:func:`lloyd_update`, post-processing of released sums only): each
   centre moves by its noisy mean residual, shrunk towards no move where the noise would
   dominate it (positive-part James–Stein: the factor 1 − d·(σR/N)²/|mean|²); its radius is
   the root mean squared residual around the moved centre (never under ``radius_floor``·R);
   a centre whose noisy count N is under ``min_count`` × the count noise σ is dropped.
4. **Scoring** (:mod:`fedpatchcore.core.scoring.summary`): a test patch's score is its distance
   to a released centre divided by that centre's released radius, minimised over centres;
   the image score is the max over its patches.

Everything the server gets and everything scoring uses is a function of the released sums and
public values (post-processing): :func:`centres_from_release` rebuilds the bank from them alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpatchcore.core.coreset.kcenter import greedy_kcenter

# Images whose contributions are computed at a time (bounds memory: chunk × K × d floats).
_IMAGES_PER_CHUNK = 64
# Public Lloyd iterations from the k-center start (public data: free, any number would do).
PUBLIC_LLOYD_ITERATIONS = 10
SUMMARY_KEYS = (
    "centres",
    "rounds",
    "residual_clip",
    "contribution_clip",
    "min_count",
    "radius_floor",
    "public_images",
    "public_root",
)


@dataclass(frozen=True)
class SummarySettings:
    """The ``privacy.summary`` block (used when ``privacy.mechanism`` is ``summary``)."""

    centres: int = 64
    rounds: int = 2
    residual_clip: float = 20.0
    contribution_clip: float = 0.25
    min_count: float = 2.0
    radius_floor: float = 0.05
    public_images: int = 2
    public_root: str | None = None

    def __post_init__(self) -> None:
        if self.centres < 1:
            raise ValueError(f"privacy.summary.centres must be >= 1, got {self.centres}")
        if self.rounds < 0:
            raise ValueError(f"privacy.summary.rounds must be >= 0 (0: public centres only), got {self.rounds}")
        for name in ("residual_clip", "contribution_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"privacy.summary.{name} must be positive, got {getattr(self, name)}")
        if self.min_count < 0:
            raise ValueError(f"privacy.summary.min_count must be >= 0, got {self.min_count}")
        if not 0 < self.radius_floor <= 1:
            raise ValueError(f"privacy.summary.radius_floor must lie in (0, 1], got {self.radius_floor}")
        if self.public_images < 1:
            raise ValueError(f"privacy.summary.public_images must be >= 1, got {self.public_images}")

    @classmethod
    def from_parameters(cls, block: Mapping[str, Any] | None) -> SummarySettings:
        block = dict(block or {})
        unknown = sorted(set(block) - set(SUMMARY_KEYS))
        if unknown:
            raise ValueError(f"privacy.summary: unknown keys {unknown}; expected some of {list(SUMMARY_KEYS)}")
        defaults = cls()
        return cls(
            centres=int(block.get("centres", defaults.centres)),
            rounds=int(block.get("rounds", defaults.rounds)),
            residual_clip=float(block.get("residual_clip", defaults.residual_clip)),
            contribution_clip=float(block.get("contribution_clip", defaults.contribution_clip)),
            min_count=float(block.get("min_count", defaults.min_count)),
            radius_floor=float(block.get("radius_floor", defaults.radius_floor)),
            public_images=int(block.get("public_images", defaults.public_images)),
            public_root=block.get("public_root"),
        )

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one round's sums to replacing one image: 2B."""
        return 2.0 * self.contribution_clip


# --------------------------------------------------------------------------- statistics


@dataclass
class Statistics:
    """One round's sums for one category, in the normalised units of the module docstring."""

    residual_sum: np.ndarray  # (K, d) Σ clipped residual / (P·R)
    count: np.ndarray  # (K,) Σ patches / P
    squared_sum: np.ndarray  # (K,) Σ |clipped residual|² / (P·R²)
    clipped: int = 0  # images whose contribution was scaled down to B (stays on the site)

    def to_vector(self) -> np.ndarray:
        """float64 ``[residual_sum.ravel(), count, squared_sum]``: what is noised and summed."""
        return np.concatenate([self.residual_sum.ravel(), self.count, self.squared_sum]).astype(np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray, centres: int, dim: int) -> Statistics:
        vector = np.asarray(vector, dtype=np.float64)
        expected = centres * (dim + 2)
        if vector.shape != (expected,):
            raise ValueError(f"a summary statistic of {centres} centres x {dim} dims has {expected} values, got {vector.shape}")
        split = centres * dim
        return cls(vector[:split].reshape(centres, dim), vector[split : split + centres], vector[split + centres :])

    @classmethod
    def zeros(cls, centres: int, dim: int) -> Statistics:
        return cls(np.zeros((centres, dim)), np.zeros(centres), np.zeros(centres))


def vector_length(centres: int, dim: int) -> int:
    return int(centres) * (int(dim) + 2)


def _squared_distances(vectors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64, copy=False)
    centres = centres.astype(np.float64, copy=False)
    squared = (vectors**2).sum(1)[:, None] + (centres**2).sum(1)[None, :] - 2.0 * vectors @ centres.T
    return np.maximum(squared, 0.0)


def image_statistics(
    patches: np.ndarray, centres: np.ndarray, residual_clip: float, contribution_clip: float
) -> Statistics:
    """Sums over images ``patches`` ``(n, P, d)`` of their clipped contributions (one site, no noise)."""
    patches = np.asarray(patches)
    n, per_image, dim = patches.shape
    k = len(centres)
    total = Statistics.zeros(k, dim)
    if n == 0:
        return total
    for start in range(0, n, _IMAGES_PER_CHUNK):
        chunk = patches[start : start + _IMAGES_PER_CHUNK].astype(np.float64).reshape(-1, dim)
        m = len(chunk) // per_image
        nearest = _squared_distances(chunk, centres).argmin(1)
        residual = chunk - centres[nearest]
        norms = np.linalg.norm(residual, axis=1)
        scale = np.minimum(1.0, residual_clip / np.maximum(norms, 1e-12))
        residual *= scale[:, None]
        norms = np.minimum(norms, residual_clip)
        slot = np.repeat(np.arange(m), per_image) * k + nearest
        sums = np.zeros((m * k, dim))
        np.add.at(sums, slot, residual / (per_image * residual_clip))
        counts = np.bincount(slot, minlength=m * k) / per_image
        squares = np.bincount(slot, weights=norms**2 / (per_image * residual_clip**2), minlength=m * k)
        sums, counts, squares = sums.reshape(m, k, dim), counts.reshape(m, k), squares.reshape(m, k)
        length = np.sqrt((sums**2).sum((1, 2)) + (counts**2).sum(1) + (squares**2).sum(1))
        factor = np.minimum(1.0, contribution_clip / np.maximum(length, 1e-12))
        total.clipped += int((length > contribution_clip).sum())
        total.residual_sum += np.einsum("i,ikd->kd", factor, sums)
        total.count += factor @ counts
        total.squared_sum += factor @ squares
    return total


def feature_file_statistics(
    feature_file: Any,
    n_images: int,
    per_image: int,
    centres: np.ndarray,
    settings: SummarySettings,
    transform: Any = None,
) -> Statistics:
    """:func:`image_statistics` of a site's feature file (``gather(rows)``), image chunk by chunk.

    ``transform``: the public map applied to every patch vector first (projection), or None.
    """
    total = Statistics.zeros(len(centres), centres.shape[1])
    for start in range(0, n_images, _IMAGES_PER_CHUNK):
        stop = min(n_images, start + _IMAGES_PER_CHUNK)
        rows = feature_file.gather(np.arange(start * per_image, stop * per_image))
        if transform is not None:
            rows = transform(rows)
        part = image_statistics(
            rows.reshape(stop - start, per_image, -1), centres, settings.residual_clip, settings.contribution_clip
        )
        total.residual_sum += part.residual_sum
        total.count += part.count
        total.squared_sum += part.squared_sum
        total.clipped += part.clipped
    return total


# --------------------------------------------------------------------------- the server's update


@dataclass
class SummaryCategory:
    """One category's summary bank after a round: centres, their radii and noisy counts."""

    centres: np.ndarray  # (K', d) float32
    radius: np.ndarray  # (K',) float32, > 0
    count: np.ndarray  # (K',) float64: noisy count, in images' worth of patches

    def __len__(self) -> int:
        return len(self.centres)


def lloyd_update(
    state: SummaryCategory, pooled: Statistics, sigma: float, settings: SummarySettings
) -> tuple[SummaryCategory, SummaryCategory]:
    """One DP-Lloyd step from the pooled noisy sums (post-processing only).

    ``state``: every centre of the round with its current radius (round 1: the public ones).
    Returns the next state (every centre, so each site computes sums of the same shape next
    round; a dropped centre stays where it was with its radius) and the category's bank: the
    centres whose noisy count passes ``min_count`` × σ, with their new radii. If no centre
    passes, the bank is the whole next state (the public start where nothing was learnt): a
    bank always has a centre to score against.
    """
    centres = np.asarray(state.centres, dtype=np.float32)
    residual_clip = settings.residual_clip
    dim = centres.shape[1]
    count = pooled.count
    positive = np.maximum(count, 1e-12)
    mean = pooled.residual_sum * residual_clip / positive[:, None]
    mean_squared = (mean**2).sum(1)
    if sigma > 0:
        noise_squared = dim * (sigma * residual_clip / positive) ** 2
        shrink = np.clip(1.0 - noise_squared / np.maximum(mean_squared, 1e-300), 0.0, 1.0)
    else:
        shrink = np.ones(len(centres))
    keep = count > max(settings.min_count * sigma, 0.0)
    shrink = np.where(keep, shrink, 0.0)
    moved = (centres + shrink[:, None] * mean).astype(np.float32)
    # E|x - (c + s·m)|² = E|x - c|² - (2s - s²)|m|²: the spread around the moved centre.
    variance = pooled.squared_sum * residual_clip**2 / positive - (2 * shrink - shrink**2) * mean_squared
    floor = settings.radius_floor * residual_clip
    radius = np.where(keep, np.sqrt(np.maximum(variance, floor**2)), state.radius).astype(np.float32)
    following = SummaryCategory(moved, radius, count.astype(np.float64))
    if not keep.any():
        return following, following
    return following, SummaryCategory(moved[keep], radius[keep], count[keep].astype(np.float64))


def public_centres(public_vectors: np.ndarray, settings: SummarySettings, seed: int) -> SummaryCategory:
    """K starting centres (and their public radii) from public patch vectors only.

    Greedy k-center picks K spread-out public vectors, then Lloyd iterations on the public
    vectors move them to their cells' means; each radius is the root mean squared distance of
    its cell (the public-only bank, the summary at ``rounds: 0``).
    """
    vectors = np.asarray(public_vectors, dtype=np.float32)
    if len(vectors) == 0:
        raise ValueError("the public images gave no patch vector to start the summary centres from")
    k = min(settings.centres, len(vectors))
    chosen = greedy_kcenter(vectors, k, projection_dim=None, seed=int(seed), device="cpu")
    centres = vectors[np.asarray(chosen)].astype(np.float64)
    for _ in range(PUBLIC_LLOYD_ITERATIONS):
        nearest = _squared_distances(vectors, centres).argmin(1)
        counts = np.bincount(nearest, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, vectors)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    distances = _squared_distances(vectors, centres)
    nearest = distances.argmin(1)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    squared = np.bincount(nearest, weights=distances[np.arange(len(vectors)), nearest], minlength=k)
    floor = settings.radius_floor * settings.residual_clip
    radius = np.sqrt(np.maximum(squared / np.maximum(counts, 1.0), floor**2))
    return SummaryCategory(centres.astype(np.float32), radius.astype(np.float32), counts)


def centres_from_release(
    start: SummaryCategory, released: list[np.ndarray], sigma: float, settings: SummarySettings
) -> SummaryCategory:
    """The category's bank rebuilt from public values and the released round sums alone.

    ``start``: the public centres and radii; ``released``: each round's pooled noisy statistic
    vector, in order. This is all the server does, so a bank equal to this one is post-processing.
    """
    state, bank = start, None
    for vector in released:
        pooled = Statistics.from_vector(vector, len(state.centres), state.centres.shape[1])
        state, bank = lloyd_update(state, pooled, sigma, settings)
    if bank is None:
        raise ValueError("centres_from_release needs at least one released round")
    return bank
