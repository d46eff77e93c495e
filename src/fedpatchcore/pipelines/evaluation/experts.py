"""Evaluation with the logical experts: choose each category's fusion rule on validation, score
the test images with the experts, fuse with PatchCore, and judge every expert.

Thin calls of :mod:`fedpatchcore.core.tuning.fusion` (the choice) and
:mod:`fedpatchcore.core.scoring.experts` (scores and fusion). The choice reads only TRAINING
images held out as the validation split (``validation_split`` role ``validation``) and their
pseudo-anomalies; it never gets the test index.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import (
    TEST,
    TRAIN,
    category_info_from_dict,
    frame_to_samples,
    group_by_category,
)
from fedpatchcore.core.experts.fitting import experts_from_arrays
from fedpatchcore.core.experts.model import ExpertSettings
from fedpatchcore.core.features import tuned_settings as run_settings
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.scoring.experts import score_category_experts
from fedpatchcore.core.tuning.fusion import REPORTED, choose_category_fusion, expert_maps_and_scores
from fedpatchcore.pipelines.evaluation.nodes import compute_metrics, index_for_bank

logger = logging.getLogger(__name__)



class _Embedders:
    """One embedder per distinct network among the categories' settings."""

    def __init__(self, backbone, extraction, scoring, tuned, category_info):
        self.backbone, self.extraction, self.scoring, self.tuned = backbone, extraction, scoring, tuned
        self.category_info = category_info
        self._cache: dict[Any, Any] = {}

    def for_category(self, category: str, categories) -> tuple[Any, Any, dict[str, Any]]:
        """The category's info at its setting's input size, its embedder and its scoring block."""
        setting = run_settings.category_settings(categories, self.backbone, self.extraction, self.scoring, self.tuned)[category]
        key = None if setting is None else setting.embedding_key
        backbone, extraction, scoring = run_settings.blocks_for(setting, self.backbone, self.extraction, self.scoring)
        if key not in self._cache:
            self._cache[key] = make_embedder(backbone, extraction)
        info = run_settings.info_for(setting, category_info_from_dict(self.category_info[category]))
        return info, self._cache[key], scoring


def choose_fusion_rules(
    faiss_index: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    expert_model: dict[str, np.ndarray],
    dataset_index: pd.DataFrame,
    validation_split: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    experts: dict[str, Any],
    seed: int,
    tuned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per category: the fusion rule chosen on its validation images and pseudo-anomalies
    (``<variant>.fusion_rules``: the rule, the best combination, every expert's statistics and
    validation AUROC, the table of candidates)."""
    held_out = set(validation_split.loc[validation_split["role"] == "validation", "key"]) if len(validation_split) else set()
    if not held_out:
        raise ValueError(
            "experts.enabled needs a validation split (validation.enabled: true): each category's fusion rule "
            "and the experts' z-normalisation are chosen on validation images, never on test images"
        )
    validation = [s for s in frame_to_samples(dataset_index) if s.split == TRAIN and s.key in held_out]
    fusion = (experts.get("fusion") or {})
    index = index_for_bank(faiss_index, memory_bank, scoring, seed)
    banks = CategoryBanks.from_arrays(memory_bank).banks
    models = experts_from_arrays(expert_model)
    embedders = _Embedders(backbone, extraction, scoring, tuned, category_info)
    by_category = group_by_category(validation)
    rules = {}
    for category, model in models.items():
        if category not in by_category:
            raise ValueError(f"no validation image of category '{category}' to choose its fusion rule on")
        info, embedder, cat_scoring = embedders.for_category(category, models)
        choice = choose_category_fusion(
            by_category[category],
            info,
            embedder,
            index[category],
            model,
            texture={
                "sigma": scoring["sigma"],
                "reweight": cat_scoring["reweight"],
                "bank": banks[category] if cat_scoring["reweight"] else None,
                "num_neighbours": cat_scoring["reweight_neighbours"],
                "image_score": cat_scoring.get("image_score", "max"),
                "topk": int(cat_scoring.get("topk", 10)),
            },
            kinds=list(fusion["pseudo_anomaly_kinds"]),
            per_image=int(fusion["pseudo_anomalies_per_image"]),
            seed=seed,
            candidates=list(fusion["candidates"]),
            min_gain=float(fusion["min_gain"]),
            batch_size=int(scoring["batch_size"]),
        )
        logger.info(
            "%s: fusion rule %s (validation AUROC %s)",
            category,
            choice.rule.name,
            {name: None if v is None else round(v, 3) for name, v in choice.rule.details["val_auroc"].items()},
        )
        rules[category] = choice.to_dict()
    return rules


def score_test_images_with_experts(
    expert_model: dict[str, np.ndarray],
    evaluation_index: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    experts: dict[str, Any],
    seed: int,
    tuned: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every test image's raw score by each expert and the position expert's cell map
    (``<variant>.expert_scores``)."""
    ExpertSettings.from_parameters(experts, seed)  # the block is valid
    models = experts_from_arrays(expert_model)
    embedders = _Embedders(backbone, extraction, scoring, tuned, category_info)
    test = group_by_category([s for s in frame_to_samples(evaluation_index) if s.split == TEST])
    out: dict[str, np.ndarray] = {}
    for category, samples in test.items():
        if category not in models:
            raise KeyError(f"no experts for category '{category}': no client held its training images")
        info, embedder, _ = embedders.for_category(category, models)
        scores = score_category_experts(
            samples,
            info,
            embedder,
            models[category],
            batch_size=int(scoring["batch_size"]),
            num_workers=int(extraction["num_workers"]),
        )
        out.update(scores.to_arrays(category))
    return out


def fuse_with_experts(
    texture_anomaly_maps: dict[str, dict[str, Any]],
    texture_image_scores: pd.DataFrame,
    expert_scores: dict[str, np.ndarray],
    fusion_rules: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """The variant's anomaly maps and image scores: each category's chosen rule applied."""
    return expert_maps_and_scores("selected", texture_anomaly_maps, texture_image_scores, expert_scores, fusion_rules)


def compute_expert_metrics(
    texture_anomaly_maps: dict[str, dict[str, Any]],
    texture_image_scores: pd.DataFrame,
    expert_scores: dict[str, np.ndarray],
    fusion_rules: dict[str, Any],
    evaluation_index: pd.DataFrame,
    category_info: dict[str, Any],
) -> dict[str, Any]:
    """The metrics of every expert alone, the best combination and the chosen rule."""
    out = {}
    for name in REPORTED:
        maps, scores = expert_maps_and_scores(name, texture_anomaly_maps, texture_image_scores, expert_scores, fusion_rules)
        # Only the per-category numbers are kept: the skipped files are the variant metrics' own.
        metrics = compute_metrics(maps, scores, evaluation_index, category_info, skipped_files=[])
        out[name] = {"categories": metrics["categories"], "mean": metrics["mean"]}
    return out


def publish_expert_metrics(
    selected_metrics: dict[str, Any], expert_metrics: dict[str, Any], fusion_rules: dict[str, Any]
) -> dict[str, Any]:
    """The variant's metrics (of the chosen rules) with ``experts``: per expert its metrics, per
    category the rule chosen and why (validation AUROCs)."""
    rules = {
        category: {
            "rule": choice["selected"]["rule"],
            "composition_k": choice["selected"].get("composition_k"),
            "fused_rule": (choice.get("fused") or {}).get("rule"),
            "val_auroc": choice["val_auroc"] | (choice["selected"].get("details") or {}).get("val_auroc", {}),
        }
        for category, choice in sorted(fusion_rules.items())
    }
    return {**selected_metrics, "experts": {"rules": rules, **expert_metrics}}


__all__ = [
    "choose_fusion_rules",
    "compute_expert_metrics",
    "fuse_with_experts",
    "publish_expert_metrics",
    "score_test_images_with_experts",
]
