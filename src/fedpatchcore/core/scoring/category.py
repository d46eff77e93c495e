"""Score the test images of each category against its memory bank: the one entry of scoring.

:class:`CategoryPlan` says how one category is scored: the network (``backbone`` /
``extraction`` blocks), the size the network sees, the size the maps end at, and the
:class:`~fedpatchcore.core.scoring.patch_scores.PatchScorer`. The caller resolves a plan per
category once, before any image is read (the run's blocks, or a category's tuned setting), and
:func:`score_test_set` scores every category from its plan: one embedder per distinct network
(followed by the public transform when the bank holds privacy-released rows), the test patches
of many images searched in one call (:class:`SearchBatches`), each map upsampled and smoothed
once. Nothing here reads parameters beyond what a plan carries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.privacy.release import PrivacySettings, with_public_transform
from fedpatchcore.core.scoring.patch_scores import CategoryScores, PatchScorer, resize_maps
from fedpatchcore.core.scoring.summary import score_category_summary

logger = logging.getLogger(__name__)

#: ``scoring.query_dtype`` values: how test-patch features wait for their search.
QUERY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class SearchBatches:
    """How test patches go through the index (parameters ``scoring.batch_size``, ``.query_patches``,
    ``.query_dtype``; ``extraction.num_workers``).

    ``batch_size`` images per forward pass. ``query_patches=None`` searches each pass's patches
    as they come; a number lets the features of consecutive passes wait in one buffer until it
    holds that many patches, which are then searched in one call (fewer, larger searches: what
    a GPU or a threaded approximate index wants). Exact faiss search computes a distance by
    the norm expansion through BLAS, whose last bits depend on the query block a patch lands
    in, so distances then differ from the one-pass-at-a-time ones by float32 rounding (~1e-6
    relative). ``query_dtype="float16"`` halves that buffer; the nearest bank row only changes
    where the best two rows are closer than the rounding (``tests/core/scoring``), and distances
    move by at most the rounding of the query (``2**-11`` of its norm).
    """

    batch_size: int = 8
    query_patches: int | None = None
    query_dtype: str = "float32"
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.query_dtype not in QUERY_DTYPES:
            raise ValueError(f"unknown scoring.query_dtype {self.query_dtype!r}; choose one of {list(QUERY_DTYPES)}")

    @classmethod
    def from_params(cls, scoring: Mapping[str, Any], extraction: Mapping[str, Any]) -> SearchBatches:
        return cls(
            batch_size=int(scoring["batch_size"]),
            query_patches=None if scoring.get("query_patches") is None else int(scoring["query_patches"]),
            query_dtype=str(scoring.get("query_dtype", cls.query_dtype)),
            num_workers=int(extraction.get("num_workers", cls.num_workers)),
        )


@dataclass(frozen=True)
class CategoryPlan:
    """How one category's test images are scored, resolved before any image is read.

    ``info``: the category at the size the network sees; ``output_size``: (width, height) of
    the published maps (``category_info``'s size, where the ground truth lives). When the two
    differ (a tuned input size), maps and image scores are made at the network's size and the
    maps are then resized, so the image score is the one the tuner validated.
    """

    info: CategoryInfo
    output_size: tuple[int, int]
    backbone: Mapping[str, Any]
    extraction: Mapping[str, Any]
    scorer: PatchScorer

    @classmethod
    def from_blocks(
        cls,
        info: CategoryInfo,
        backbone: Mapping[str, Any],
        extraction: Mapping[str, Any],
        scoring: Mapping[str, Any],
        input_size: tuple[int, int] | None = None,
    ) -> CategoryPlan:
        """The plan of the ``backbone`` / ``extraction`` / ``scoring`` blocks for ``info``'s category,
        seen by the network at ``input_size`` (None: ``info``'s own size)."""
        network_info = info if input_size is None else replace(info, image_size=tuple(input_size))
        return cls(
            network_info, tuple(info.image_size), dict(backbone), dict(extraction), PatchScorer.from_params(scoring)
        )

    @property
    def network_key(self) -> str:
        """Plans with equal keys embed with the same network (one embedder serves them all)."""
        return json.dumps([self.backbone, self.extraction], sort_keys=True, default=str)


def score_test_set(
    plans: Mapping[str, CategoryPlan],
    samples: Mapping[str, Sequence[Sample]],
    indexes: Mapping[str, faiss.Index],
    banks: Mapping[str, np.ndarray],
    privacy: PrivacySettings,
    search: SearchBatches,
    radius: Mapping[str, np.ndarray] | None = None,
) -> dict[str, CategoryScores]:
    """Anomaly maps and image scores of every category of ``samples``, each from its plan.

    ``indexes`` / ``banks``: the search index and the rows of each category's memory bank (the
    rows are read only by scorers that need them, e.g. the reweighting). With ``privacy``
    enabled the bank holds released rows: test patches go through the same public map
    (projection, clipping) before they are compared with it. ``radius``: the released radius
    of each centre of a category whose bank is a private summary bank
    (:mod:`~fedpatchcore.core.scoring.summary`: distance to a centre over its radius).
    """
    radius = radius or {}
    embedders: dict[str, Any] = {}
    scores = {}
    for category, category_samples in samples.items():
        if category not in indexes:
            raise KeyError(f"no memory bank for category '{category}': no client held its training images")
        plan = plans[category]
        if plan.network_key not in embedders:
            embedders[plan.network_key] = with_public_transform(make_embedder(plan.backbone, plan.extraction), privacy)
        if category in radius:
            scorer = plan.scorer
            summary = score_category_summary(
                category_samples,
                plan.info,
                embedders[plan.network_key],
                banks[category],
                radius[category],
                batch_size=search.batch_size,
                sigma=scorer.sigma,
                num_workers=search.num_workers,
                image_score=scorer.image_score,
                topk=scorer.topk,
            )
            summary.maps = resize_maps(summary.maps, plan.output_size)
            scores[category] = summary
        else:
            scores[category] = score_category(
                category_samples,
                plan.info,
                embedders[plan.network_key],
                indexes[category],
                plan.scorer,
                bank=banks[category] if plan.scorer.needs_bank else None,
                search=search,
                output_size=plan.output_size,
            )
        if scores[category].skipped:
            logger.warning(
                "%s: %d unreadable test image(s) left out of scoring and metrics (listed in the metrics "
                "under skipped_test_images)",
                category,
                len(scores[category].skipped),
            )
    return scores


def score_category(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    index: faiss.Index,
    scorer: PatchScorer | None = None,
    *,
    bank: np.ndarray | None = None,
    search: SearchBatches | None = None,
    output_size: tuple[int, int] | None = None,
) -> CategoryScores:
    """Anomaly map and image score of every readable test image of ``info.name``, at ``info``'s size.

    Features of consecutive forward passes wait in one buffer and are searched together
    (:class:`SearchBatches`); each image's map is then made once. ``output_size``: resize the
    finished maps to it (image scores stay those of the maps at ``info``'s size).
    """
    scorer = scorer or PatchScorer()
    search = search or SearchBatches()
    width, height = info.image_size
    maps = np.empty((len(samples), height, width), dtype=np.float32)
    scores = np.empty(len(samples), dtype=np.float32)
    kept: list[Sample] = []
    skipped: list[dict[str, str]] = []
    buffer: np.ndarray | None = None
    waiting = 0  # images in the buffer
    done = 0  # images scored

    def flush() -> None:
        nonlocal waiting, done
        rows = slice(done, done + waiting)
        _, scores[rows] = scorer.score(index, buffer[:waiting], info.image_size, bank=bank, maps_out=maps[rows])
        done, waiting = done + waiting, 0

    progress = tqdm(total=len(samples), desc=f"score {info.name}", unit="img", leave=False)
    for batch in iter_image_batches(samples, info.image_size, search.batch_size, skipped, search.num_workers):
        features = embedder.embed(batch.images)
        if buffer is None:
            per_image = int(np.prod(features.shape[1:3]))
            wanted = -(-search.query_patches // per_image) if search.query_patches else 0
            capacity = max(search.batch_size, len(features), min(len(samples), wanted))
            buffer = np.empty((capacity, *features.shape[1:]), dtype=QUERY_DTYPES[search.query_dtype])
        if waiting + len(features) > len(buffer):
            flush()
        buffer[waiting : waiting + len(features)] = features
        waiting += len(features)
        kept.extend(batch.samples)
        progress.update(len(batch.samples))
    if waiting:
        flush()
    progress.close()
    maps, scores = maps[: len(kept)], scores[: len(kept)]
    if output_size is not None:
        maps = resize_maps(maps, output_size)
    return CategoryScores(kept, maps, scores, skipped)
