"""Scoring against a private summary bank (``privacy.mechanism: summary``): centres and their radii.

A test patch's score is its distance to a centre divided by that centre's released radius,
minimised over the centres (how many of its own spreads the patch lies from the closest normal
cluster); maps and image scores then follow PatchCore's rules
(:func:`~fedpatchcore.core.scoring.patch_scores.anomaly_maps`: raw scores, one scale per
category; image score = max of the map, or the top-k mean). Only released values are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.scoring.category import CategoryScores
from fedpatchcore.core.scoring.patch_scores import anomaly_maps, topk_mean

# Patches scored against the centres at a time (bounds the (patches x centres) matrix).
_PATCHES_PER_CHUNK = 8192


def scaled_distances(patches: np.ndarray, centres: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``min_k |p - c_k| / r_k`` for every row of ``patches`` ``(n, d)`` -> ``(n,)`` float32."""
    centres = np.asarray(centres, dtype=np.float64)
    radius = np.asarray(radius, dtype=np.float64)
    if len(centres) == 0:
        raise ValueError("a summary bank without centres cannot score (every centre was dropped)")
    if len(radius) != len(centres) or not (radius > 0).all():
        raise ValueError("a summary bank needs one positive radius per centre")
    out = np.empty(len(patches), dtype=np.float32)
    centre_norms = (centres**2).sum(1)
    for start in range(0, len(patches), _PATCHES_PER_CHUNK):
        chunk = np.asarray(patches[start : start + _PATCHES_PER_CHUNK], dtype=np.float64)
        squared = (chunk**2).sum(1)[:, None] + centre_norms[None, :] - 2.0 * chunk @ centres.T
        out[start : start + len(chunk)] = (np.sqrt(np.maximum(squared, 0.0)) / radius[None, :]).min(1)
    return out


def score_category_summary(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder,
    centres: np.ndarray,
    radius: np.ndarray,
    *,
    batch_size: int,
    sigma: float,
    num_workers: int = 2,
    image_score: str = "max",
    topk: int = 10,
) -> CategoryScores:
    """Anomaly maps and image scores of every readable test image against a summary bank.

    ``embedder`` must apply the release's public map (projection) to the test patches.
    """
    width, height = info.image_size
    maps = np.empty((len(samples), height, width), dtype=np.float32)
    scores = np.empty(len(samples), dtype=np.float32)
    kept: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for batch in iter_image_batches(samples, info.image_size, batch_size, skipped, num_workers):
        features = embedder.embed(batch.images)
        n, h, w, d = features.shape
        patch_scores = scaled_distances(features.reshape(-1, d), centres, radius).reshape(n, h, w)
        batch_maps = anomaly_maps(patch_scores, info.image_size, sigma=sigma)
        if image_score == "topk_mean":
            batch_scores = topk_mean(patch_scores, topk)
        elif image_score == "max":
            batch_scores = batch_maps.reshape(n, -1).max(axis=1)
        else:
            raise ValueError(f"a summary bank scores images by max or topk_mean, got scoring.image_score={image_score!r}")
        rows = slice(len(kept), len(kept) + n)
        maps[rows] = batch_maps
        scores[rows] = batch_scores
        kept.extend(batch.samples)
    return CategoryScores(kept, maps[: len(kept)], scores[: len(kept)], skipped)
