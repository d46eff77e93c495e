"""Scoring test images with the logical experts, and fusing them with PatchCore's maps and scores.

:func:`score_category_experts` reads a category's test images at its input size, embeds them
and scores them with its fitted experts (:class:`~fedpatchcore.core.experts.model.CategoryExperts`);
:func:`fuse_category` applies the category's rule (:class:`~fedpatchcore.core.experts.fusion.FusionRule`,
chosen on validation) to PatchCore's raw maps and image scores and the experts' outputs. The
fused maps keep PatchCore's resolution and one scale per category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedpatchcore.core.data.types import CategoryInfo, Sample
from fedpatchcore.core.experts.fusion import FusionRule
from fedpatchcore.core.experts.model import CategoryExperts, ExpertOutputs
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.embedding import PatchEmbedder

__all__ = ["CategoryExpertScores", "expert_scores_for", "fuse_category", "score_category_experts"]


@dataclass
class CategoryExpertScores:
    keys: list[str]  # the scored images, in row order
    scores: dict[str, np.ndarray]  # "global", "position" -> (n,)
    composition: dict[int, np.ndarray]  # k -> (n,)
    cells: dict[str, np.ndarray] = field(default_factory=dict)  # "position" -> (n, gh, gw)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/keys": np.asarray(self.keys, dtype=str)}
        out.update({f"{prefix}/score/{name}": values for name, values in self.scores.items()})
        out.update({f"{prefix}/composition/{k}": values for k, values in self.composition.items()})
        out.update({f"{prefix}/cells/{name}": values for name, values in self.cells.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> CategoryExpertScores:
        def part(kind: str) -> dict[str, np.ndarray]:
            start = f"{prefix}/{kind}/"
            return {key[len(start) :]: np.asarray(value) for key, value in arrays.items() if key.startswith(start)}

        return cls(
            [str(k) for k in arrays[f"{prefix}/keys"]],
            part("score"),
            {int(k): v for k, v in part("composition").items()},
            part("cells"),
        )


def score_category_experts(
    samples: Sequence[Sample],
    info: CategoryInfo,
    embedder: PatchEmbedder,
    experts: CategoryExperts,
    *,
    batch_size: int,
    num_workers: int = 2,
) -> CategoryExpertScores:
    """Every readable image of ``samples`` (read at ``info.image_size``) scored by the experts."""
    keys: list[str] = []
    outputs: list[ExpertOutputs] = []
    skipped: list[dict[str, str]] = []
    for batch in iter_image_batches(samples, info.image_size, batch_size, skipped, num_workers):
        outputs.append(experts.score(embedder.embed(batch.images)))
        keys.extend(s.key for s in batch.samples)
    if not outputs:
        return CategoryExpertScores([], {}, {}, {}, skipped)
    return CategoryExpertScores(
        keys,
        {name: np.concatenate([o.scores[name] for o in outputs]) for name in outputs[0].scores},
        {k: np.concatenate([o.composition[k] for o in outputs]) for k in outputs[0].composition},
        {name: np.concatenate([o.maps[name] for o in outputs]) for name in outputs[0].maps},
        skipped,
    )


def expert_scores_for(
    texture_scores: np.ndarray, experts: CategoryExpertScores, composition_k: int | None
) -> dict[str, np.ndarray]:
    """Raw image scores of every expert, PatchCore's as ``texture``, composition at ``composition_k``."""
    scores = {"texture": np.asarray(texture_scores, dtype=np.float64), **experts.scores}
    if composition_k is not None and composition_k in experts.composition:
        scores["composition"] = experts.composition[composition_k]
    return scores


def fuse_category(
    rule: FusionRule, texture_maps: np.ndarray, texture_scores: np.ndarray, experts: CategoryExpertScores
) -> tuple[np.ndarray, np.ndarray]:
    """Fused maps ``(n, H, W)`` and image scores ``(n,)`` of one category by ``rule``.

    ``texture_maps`` / ``texture_scores``: PatchCore's raw maps and image scores of the same
    images in the same order as ``experts.keys``.
    """
    scores = expert_scores_for(texture_scores, experts, rule.composition_k)
    fused_scores = rule.image_scores(scores).astype(np.float32)
    return rule.maps(scores, np.asarray(texture_maps), experts.cells), fused_scores
