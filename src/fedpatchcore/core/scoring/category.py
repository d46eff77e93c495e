"""Score test images of one category against that category's memory bank."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
from tqdm.auto import tqdm

from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.scoring.patch_scores import score_images

logger = logging.getLogger(__name__)


@dataclass
class CategoryScores:
    samples: list[Sample]  # scored images, in the order of the rows below
    maps: np.ndarray  # float32 (n, H, W), raw distances: one scale for the whole category
    image_scores: np.ndarray  # float32 (n,)
    skipped: list[dict[str, str]] = field(default_factory=list)


def score_category(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    index: faiss.Index,
    *,
    batch_size: int,
    sigma: float,
    reweight: bool = False,
    bank: np.ndarray | None = None,
    reweight_neighbours: int = 9,
    num_workers: int = 2,
    image_score: str = "max",
    topk: int = 10,
    row_weights: np.ndarray | None = None,
) -> CategoryScores:
    """Anomaly map and image score of every readable test image of ``info.name``.

    ``image_score`` / ``topk``: parameters ``scoring.image_score`` / ``scoring.topk``
    (:func:`~fedpatchcore.core.scoring.patch_scores.score_images`); the default ``"max"`` is unchanged.
    ``row_weights``: the bank's outlier weights, with ``scoring.soft_weights`` (None: plain distances).
    """
    width, height = info.image_size
    maps = np.empty((len(samples), height, width), dtype=np.float32)
    scores = np.empty(len(samples), dtype=np.float32)
    kept: list[Sample] = []
    skipped: list[dict[str, str]] = []
    progress = tqdm(total=len(samples), desc=f"score {info.name}", unit="img", leave=False)
    for batch in iter_image_batches(samples, info.image_size, batch_size, skipped, num_workers):
        features = embedder.embed(batch.images)
        batch_maps, batch_scores = score_images(
            index,
            features,
            info.image_size,
            sigma=sigma,
            reweight=reweight,
            bank=bank,
            num_neighbours=reweight_neighbours,
            image_score=image_score,
            topk=topk,
            row_weights=row_weights,
        )
        rows = slice(len(kept), len(kept) + len(batch.samples))
        maps[rows] = batch_maps
        scores[rows] = batch_scores
        kept.extend(batch.samples)
        progress.update(len(batch.samples))
    progress.close()
    return CategoryScores(kept, maps[: len(kept)], scores[: len(kept)], skipped)
