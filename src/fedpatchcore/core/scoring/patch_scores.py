"""From patch distances to anomaly maps and image scores (PatchCore's scoring).

:class:`PatchScorer` (:func:`score_images` is its one-call form): patch score = distance to
the nearest bank vector; anomaly map = patch-score grid upsampled bilinearly to the image
size, then Gaussian-smoothed; image score (``image_score``) = max of that RAW map
(``"max"``, the default; never normalised per image), or the PatchCore paper's reweighted
max patch score (``reweight``), or the mean of the ``topk`` highest patch scores
(``"topk_mean"``). :meth:`PatchScorer.from_params` is the one place where the ``scoring``
parameters become a scorer: a new scoring option goes there and into the scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fedpatchcore.core.banks.knn import nearest_neighbours
from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.features.embedding import image_hw
from fedpatchcore.core.features.setting import IMAGE_SCORES

__all__ = [
    "IMAGE_SCORES",
    "CategoryScores",
    "PatchScorer",
    "anomaly_maps",
    "resize_maps",
    "reweight_scores",
    "score_images",
    "topk_mean",
]


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class CategoryScores:
    """What scoring one category's test images gives."""

    samples: list[Sample]  # scored images, in the order of the rows below
    maps: np.ndarray  # float32 (n, H, W), raw distances: one scale for the whole category
    image_scores: np.ndarray  # float32 (n,)
    skipped: list[dict[str, str]] = field(default_factory=list)


def anomaly_maps(
    patch_scores: np.ndarray,
    image_size: int | tuple[int, int],
    sigma: float = 4.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Patch-score grids ``(B, h, w)`` -> maps ``(B, H, W)`` float32: bilinear upsampling
    (align_corners=False) to the image size, then a Gaussian of ``sigma`` pixels per image.
    Values stay in patch-distance units: nothing is normalised.

    One image at a time (the same values as the whole batch at once: the Gaussian runs along
    each image's own two axes), so the temporaries are one image's; ``out`` ``(B, H, W)``
    float32 receives the maps in place.
    """
    height, width = image_hw(image_size)
    grids = _as_f32(patch_scores)
    if out is None:
        out = np.empty((len(grids), height, width), dtype=np.float32)
    for i, grid in enumerate(grids):
        upsampled = F.interpolate(
            torch.from_numpy(grid)[None, None], size=(height, width), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        if sigma and sigma > 0:
            gaussian_filter(upsampled, sigma=float(sigma), output=out[i])
        else:
            out[i] = upsampled
    return out


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw maps ``(n, H, W)`` bilinearly resized to ``size`` = (width, height) (values keep their scale)."""
    width, height = int(size[0]), int(size[1])
    if maps.shape[1:] == (height, width):
        return maps
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(maps))[:, None], size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[:, 0].numpy().astype(np.float32)


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


@dataclass(frozen=True)
class PatchScorer:
    """How patch distances become anomaly maps and image scores (parameters of the ``scoring`` block).

    Attributes:
        sigma: Gaussian smoothing of the upsampled map, in pixels (0 = none).
        image_score: ``"max"`` (max of the map, or the reweighted score with ``reweight``) or
            ``"topk_mean"``: mean of the ``topk`` highest patch scores (raw nearest-neighbour
            distances on the patch grid), which a single noisy patch moves less.
        topk: patches averaged by ``"topk_mean"``.
        reweight: use the paper's reweighted max patch score as image score (needs the bank).
        reweight_neighbours: ``b``, the bank neighbourhood size of the reweighting.
    """

    sigma: float = 4.0
    image_score: str = "max"
    topk: int = 10
    reweight: bool = False
    reweight_neighbours: int = 9

    def __post_init__(self) -> None:
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"Unknown scoring.image_score {self.image_score!r}; choose one of {list(IMAGE_SCORES)}")
        if self.image_score != "max" and self.reweight:
            raise ValueError("scoring.reweight applies to the max image score only (scoring.image_score: max)")

    @classmethod
    def from_params(cls, scoring: Mapping[str, Any]) -> PatchScorer:
        """The scorer the ``scoring`` parameter block describes (missing keys: the defaults above)."""
        return cls(
            sigma=float(scoring.get("sigma", cls.sigma)),
            image_score=str(scoring.get("image_score", cls.image_score)),
            topk=int(scoring.get("topk", cls.topk)),
            reweight=bool(scoring.get("reweight", cls.reweight)),
            reweight_neighbours=int(scoring.get("reweight_neighbours", cls.reweight_neighbours)),
        )

    @property
    def needs_bank(self) -> bool:
        """Does scoring read the bank rows themselves (not only the index)?"""
        return self.reweight

    def score(
        self,
        index: faiss.Index,
        patch_features: np.ndarray,
        image_size: int | tuple[int, int],
        bank: np.ndarray | None = None,
        batch_size: int = 65536,
        maps_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps ``(B, H, W)`` float32 (raw distance units) and image scores ``(B,)`` of
        patch features ``(B, h, w, d)`` (float32 or float16: converted block by block).

        All ``B * h * w`` patches go through the index in one call (``batch_size`` queries per
        faiss search); then each image's map is upsampled and smoothed once, into ``maps_out``
        when given. ``image_size``: ``(width, height)`` of the maps, or an int.
        """
        feats = np.asarray(patch_features)
        if feats.ndim != 4:
            raise ValueError(f"patch_features must be (B, h, w, d), got shape {feats.shape}")
        if self.reweight and bank is None:
            raise ValueError("score_images(reweight=True) needs the memory bank array (bank=...)")
        n_img, h, w, d = feats.shape
        flat = feats.reshape(-1, d)
        dist, ids = nearest_neighbours(index, flat, k=1, batch_size=batch_size)
        patch_scores = dist[:, 0].reshape(n_img, h, w)
        maps = anomaly_maps(patch_scores, image_size, sigma=self.sigma, out=maps_out)
        if self.image_score == "topk_mean":
            return maps, topk_mean(patch_scores, self.topk)
        if not self.reweight:
            return maps, maps.reshape(n_img, -1).max(axis=1).astype(np.float32)
        per_image = patch_scores.reshape(n_img, -1)
        arg = per_image.argmax(axis=1)
        rows = np.arange(n_img) * h * w + arg
        scores = reweight_scores(
            index,
            bank,
            max_patches=_as_f32(flat[rows]),
            max_scores=per_image[np.arange(n_img), arg].astype(np.float64),
            nearest_ids=ids[rows, 0],
            num_neighbours=self.reweight_neighbours,
        )
        return maps, scores


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
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and image scores for patch features ``(B, h, w, d)``: :meth:`PatchScorer.score`.

    Args:
        index: faiss index over the memory bank (:func:`build_index`).
        image_size: ``(width, height)`` of the maps (the original image size), or an int.
        sigma, reweight, image_score, topk: as :class:`PatchScorer`; ``num_neighbours`` is its
            ``reweight_neighbours``.

    Returns:
        ``maps`` ``(B, H, W)`` float32 in raw distance units and ``image_scores`` ``(B,)``:
        ``maps.max((1, 2))``, with ``reweight`` the reweighted max patch score, with
        ``"topk_mean"`` the top-k mean of the patch scores.
    """
    scorer = PatchScorer(sigma, image_score, topk, reweight, num_neighbours)
    return scorer.score(index, patch_features, image_size, bank=bank, batch_size=batch_size)
