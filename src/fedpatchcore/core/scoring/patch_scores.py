"""From patch distances to anomaly maps and image scores (PatchCore's scoring).

:func:`score_images`: patch score = distance to the nearest bank vector; anomaly map =
patch-score grid upsampled bilinearly to the image size, then Gaussian-smoothed; image
score (``image_score``) = max of that RAW map (``"max"``, the default; never normalised
per image), or the PatchCore paper's reweighted max patch score (``reweight``), or the
mean of the ``topk`` highest patch scores (``"topk_mean"``). With ``row_weights`` (the bank's
outlier weights from patch denoising, ``scoring.soft_weights``) a patch score is the distance
to the nearest bank row times that row's weight (SoftPatch).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fedpatchcore.core.banks.knn import nearest_neighbours
from fedpatchcore.core.features.embedding import image_hw
from fedpatchcore.core.features.setting import IMAGE_SCORES

__all__ = ["IMAGE_SCORES", "anomaly_maps", "reweight_scores", "score_images", "topk_mean"]


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def anomaly_maps(
    patch_scores: np.ndarray, image_size: int | tuple[int, int], sigma: float = 4.0
) -> np.ndarray:
    """Patch-score grids ``(B, h, w)`` -> maps ``(B, H, W)`` float32: bilinear upsampling
    (align_corners=False) to the image size, then a Gaussian of ``sigma`` pixels per image.
    Values stay in patch-distance units: nothing is normalised."""
    height, width = image_hw(image_size)
    grid = torch.from_numpy(_as_f32(patch_scores))[:, None]
    maps = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    if sigma and sigma > 0:
        maps = gaussian_filter(maps, sigma=(0.0, float(sigma), float(sigma)))
    return np.ascontiguousarray(maps, dtype=np.float32)


def reweight_scores(
    index: faiss.Index,
    bank: np.ndarray,
    max_patches: np.ndarray,
    max_scores: np.ndarray,
    nearest_ids: np.ndarray,
    num_neighbours: int = 9,
) -> np.ndarray:
    """PatchCore's image-score reweighting (Roth et al. 2022, eq. 7).

    For each image: ``m_test*`` is its highest-scoring patch, ``m*`` its nearest bank vector,
    ``N_b(m*)`` the ``b`` nearest bank vectors of ``m*`` (``m*`` itself first). Then
    ``s = (1 - softmax_j(||m_test* - n_j||)[m*]) * s*``, computed stably with logsumexp.
    """
    bank = _as_f32(bank)
    b = int(min(num_neighbours, bank.shape[0]))
    m_star = bank[nearest_ids]  # (B, d)
    _, support = nearest_neighbours(index, m_star, k=b)  # (B, b) ids of N_b(m*)
    # Ensure m* is the reference element (exact ties / IVF could order it elsewhere).
    support[:, 0] = nearest_ids
    diffs = bank[support] - max_patches[:, None, :]  # (B, b, d)
    dists = np.sqrt(np.maximum((diffs.astype(np.float64) ** 2).sum(-1), 0.0))  # (B, b)
    dists[:, 0] = max_scores  # ||m_test* - m*|| exactly as scored
    log_norm = np.logaddexp.reduce(dists, axis=1)
    weight = 1.0 - np.exp(dists[:, 0] - log_norm)
    return (weight * max_scores).astype(np.float32)


def topk_mean(patch_scores: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` highest values of each row of ``patch_scores`` ``(B, ...)`` -> ``(B,)`` float32.

    ``k`` larger than the number of values per row averages them all; ``k = 1`` is the max.
    """
    if int(k) < 1:
        raise ValueError(f"scoring.topk must be >= 1, got {k}")
    flat = np.asarray(patch_scores, dtype=np.float32).reshape(len(patch_scores), -1)
    k = min(int(k), flat.shape[1])
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.astype(np.float64).mean(axis=1).astype(np.float32)


def score_images(
    index: faiss.Index,
    patch_features: np.ndarray,
    image_size: int | tuple[int, int],
    sigma: float = 4.0,
    reweight: bool = False,
    bank: np.ndarray | None = None,
    num_neighbours: int = 9,
    batch_size: int = 65536,
    image_score: str = "max",
    topk: int = 10,
    row_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and image scores for patch features ``(B, h, w, d)``.

    Args:
        index: faiss index over the memory bank (:func:`build_index`).
        image_size: ``(width, height)`` of the maps (the original image size), or an int.
        sigma: Gaussian smoothing of the upsampled map, in pixels (0 = none).
        reweight: use the paper's reweighted max patch score as image score (needs ``bank``).
        num_neighbours: ``b``, the bank neighbourhood size of the reweighting.
        image_score: ``"max"`` (max of the map, or the reweighted score with ``reweight``) or
            ``"topk_mean"``: mean of the ``topk`` highest patch scores (raw nearest-neighbour
            distances on the patch grid), which a single noisy patch moves less.
        topk: patches averaged by ``"topk_mean"``.
        row_weights: ``(M,)`` weight of every bank row (``scoring.soft_weights``): the patch
            score is the distance to the nearest row (found by plain distance) times its weight.

    Returns:
        ``maps`` ``(B, H, W)`` float32 in raw distance units and ``image_scores`` ``(B,)``:
        ``maps.max((1, 2))``, with ``reweight`` the reweighted max patch score, with
        ``"topk_mean"`` the top-k mean of the patch scores.
    """
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"Unknown scoring.image_score {image_score!r}; choose one of {list(IMAGE_SCORES)}")
    if image_score != "max" and reweight:
        raise ValueError("scoring.reweight applies to the max image score only (scoring.image_score: max)")
    feats = np.asarray(patch_features)
    if feats.ndim != 4:
        raise ValueError(f"patch_features must be (B, h, w, d), got shape {feats.shape}")
    n_img, h, w, d = feats.shape
    flat = _as_f32(feats.reshape(-1, d))
    dist, ids = nearest_neighbours(index, flat, k=1, batch_size=batch_size)
    if row_weights is not None:
        dist[:, 0] *= np.asarray(row_weights, dtype=np.float32)[ids[:, 0]]
    patch_scores = dist[:, 0].reshape(n_img, h, w)
    maps = anomaly_maps(patch_scores, image_size, sigma=sigma)
    if image_score == "topk_mean":
        return maps, topk_mean(patch_scores, topk)
    if not reweight:
        return maps, maps.reshape(n_img, -1).max(axis=1).astype(np.float32)
    if bank is None:
        raise ValueError("score_images(reweight=True) needs the memory bank array (bank=...)")
    per_image = patch_scores.reshape(n_img, -1)
    arg = per_image.argmax(axis=1)
    rows = np.arange(n_img) * h * w + arg
    scores = reweight_scores(
        index,
        bank,
        max_patches=flat[rows],
        max_scores=per_image[np.arange(n_img), arg].astype(np.float64),
        nearest_ids=ids[rows, 0],
        num_neighbours=num_neighbours,
    )
    return maps, scores
