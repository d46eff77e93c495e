"""Evaluation: index the memory bank, score every test image, compute the benchmark metrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks, bank_fingerprint
from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.data.types import (
    TEST,
    category_info_from_dict,
    frame_to_samples,
    group_by_category,
)
from fedpatchcore.core.evaluation.ground_truth import ground_truth
from fedpatchcore.core.evaluation.metrics import (
    evaluate_category,
    fairness_metrics,
    mean_over_categories,
    metrics_table,
    skipped_test_images,
)
from fedpatchcore.core.features import tuned_settings as run_settings
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.privacy.release import PrivacySettings, publish_budgets, with_public_transform
from fedpatchcore.core.scoring.category import score_category
from fedpatchcore.core.scoring.summary import score_category_summary
from fedpatchcore.datasets.arrays import FaissIndexes

logger = logging.getLogger(__name__)


def build_faiss_index(memory_bank: dict[str, np.ndarray], scoring: dict[str, Any], seed: int) -> FaissIndexes:
    """One nearest-neighbour index per category; approximate (IVF) only for very large banks.

    The result records the fingerprint of ``memory_bank`` (saved beside the index), so
    scoring can tell whether an index belongs to the bank it scores against.
    """
    banks = CategoryBanks.from_arrays(memory_bank)
    threshold = scoring["approximate_index_above"]
    indexes = {}
    for category, bank in banks.banks.items():
        approximate = threshold is not None and len(bank) > threshold
        indexes[category] = build_index(bank, approximate=approximate, seed=seed)
        logger.info("%s: %s index over %d rows", category, "IVF" if approximate else "exact", len(bank))
    return FaissIndexes(
        indexes,
        bank_fingerprint=bank_fingerprint(memory_bank),
        build={"approximate_index_above": threshold, "seed": seed},
    )


def index_for_bank(
    faiss_index: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    scoring: dict[str, Any],
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """``faiss_index`` if it was built from ``memory_bank`` with these settings, else a rebuilt one.

    The saved index is unversioned while the bank is versioned: a run that stopped between
    the coreset and the index (or ``--to-nodes ...select_coreset``) leaves an index of an
    older bank behind. An index is a pure function of its bank and build settings, so
    rebuilding it here gives exactly what ``build_faiss_index`` would, and scores stay right;
    a warning says the saved one is stale.
    """
    expected = fingerprint or bank_fingerprint(memory_bank)
    built_from = getattr(faiss_index, "bank_fingerprint", None)
    build = getattr(faiss_index, "build", {}) or {}
    threshold = scoring["approximate_index_above"]
    if built_from == expected and build.get("approximate_index_above", threshold) == threshold:
        return faiss_index
    if built_from is None:
        reason = "records no fingerprint of the bank it was built from"
    elif built_from != expected:
        reason = (
            f"was built from another memory bank (fingerprint {built_from[:12]}, this bank {expected[:12]})"
        )
    else:
        reason = (
            f"was built with scoring.approximate_index_above={build.get('approximate_index_above')}, "
            f"this run uses {threshold}"
        )
    logger.warning(
        "The saved FAISS index %s; rebuilding it in memory from the memory bank being scored. "
        "Re-run the build_faiss_index node to refresh the saved index.",
        reason,
    )
    return build_faiss_index(memory_bank, scoring, int(build.get("seed") or 0))


def score_test_images(
    faiss_index: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    evaluation_index: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    tuned: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Raw anomaly maps (one scale per category, never per image) and image scores.

    Each category's maps entry also records ``skipped`` (test images that could not be read,
    ``{"path", "reason"}``) and the ``bank_fingerprint`` it was scored against.
    With ``privacy.enabled`` the bank holds released rows: test patches go through the same
    public map (projection, clipping) before they are compared with it. A summary bank (its
    arrays carry ``radius/``) scores a patch by its distance to a centre over that centre's radius.
    ``tuned``: a category with an entry is scored with its
    own setting, at its own input size; its maps are then resized to ``category_info``'s size,
    where the ground truth and the report read them (the image scores are taken before that).
    """
    fingerprint = bank_fingerprint(memory_bank)
    faiss_index = index_for_bank(faiss_index, memory_bank, scoring, fingerprint)
    banks = CategoryBanks.from_arrays(memory_bank)
    privacy_settings = PrivacySettings.from_parameters(privacy, seed)
    test_samples = [s for s in frame_to_samples(evaluation_index) if s.split == TEST]
    by_category = group_by_category(test_samples)
    per_category = run_settings.category_settings(by_category, backbone, extraction, scoring, tuned)
    embedders: dict[Any, Any] = {}
    maps, rows = {}, []
    for category, samples in by_category.items():
        if category not in faiss_index:
            raise KeyError(f"no memory bank for category '{category}': no client held its training images")
        setting = per_category[category]
        key = None if setting is None else setting.embedding_key
        cat_backbone, cat_extraction, cat_scoring = run_settings.blocks_for(setting, backbone, extraction, scoring)
        if key not in embedders:
            embedders[key] = with_public_transform(make_embedder(cat_backbone, cat_extraction), privacy_settings)
        info = category_info_from_dict(category_info[category])
        if category in banks.radius:  # a private summary bank: distance over the centre's radius
            scores = score_category_summary(
                samples,
                info,
                embedders[key],
                banks.banks[category],
                banks.radius[category],
                batch_size=scoring["batch_size"],
                sigma=scoring["sigma"],
                num_workers=extraction["num_workers"],
                image_score=cat_scoring.get("image_score", "max"),
                topk=int(cat_scoring.get("topk", 10)),
            )
        else:
            scores = score_category(
                samples,
                run_settings.info_for(setting, info),
                embedders[key],
                faiss_index[category],
                batch_size=scoring["batch_size"],
                sigma=scoring["sigma"],
                reweight=cat_scoring["reweight"],
                bank=banks.banks[category] if cat_scoring["reweight"] else None,
                reweight_neighbours=cat_scoring["reweight_neighbours"],
                num_workers=extraction["num_workers"],
                image_score=cat_scoring.get("image_score", "max"),
                topk=int(cat_scoring.get("topk", 10)),
            )
        if setting is not None:
            scores.maps = resize_maps(scores.maps, info.image_size)
        if scores.skipped:
            logger.warning(
                "%s: %d unreadable test image(s) left out of scoring and metrics (listed in the metrics "
                "under skipped_test_images)",
                category,
                len(scores.skipped),
            )
        maps[category] = {
            "keys": [s.key for s in scores.samples],
            "maps": scores.maps,
            "skipped": list(scores.skipped),
            "bank_fingerprint": fingerprint,
        }
        rows.extend(
            {
                "key": s.key,
                "category": s.category,
                "defect_type": s.defect_type,
                "label": s.label,
                "image_score": float(score),
            }
            for s, score in zip(scores.samples, scores.image_scores, strict=True)
        )
    return maps, pd.DataFrame(rows, columns=["key", "category", "defect_type", "label", "image_score"])


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw maps ``(n, H, W)`` bilinearly resized to ``size`` = (width, height) (values keep their scale)."""
    import torch
    import torch.nn.functional as F

    width, height = int(size[0]), int(size[1])
    if maps.shape[1:] == (height, width):
        return maps
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps))[:, None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[:, 0].numpy().astype(np.float32)


def compute_metrics(
    anomaly_maps: dict[str, dict[str, Any]],
    image_scores: pd.DataFrame,
    evaluation_index: pd.DataFrame,
    category_info: dict[str, Any],
    skipped_files: list[dict[str, str]],
) -> dict[str, Any]:
    """Image AUC-ROC, AUC-sPRO, pixel AUROC, PRO and F1 per category, their mean, the test images
    left out (unreadable at indexing, ``skipped_files``, or at scoring), and how evenly the
    categories are served (``fairness.category``)."""
    samples = {s.key: s for s in frame_to_samples(evaluation_index)}
    scores_by_key = image_scores.set_index("key")
    per_category = {}
    for category, entry in anomaly_maps.items():
        info = category_info_from_dict(category_info[category])
        scored = scores_by_key.loc[entry["keys"]]
        category_samples = [samples[key] for key in entry["keys"]]
        truths = [ground_truth(s, info) for s in category_samples] if info.has_pixel_ground_truth else None
        per_category[category] = evaluate_category(
            scored["image_score"].to_numpy(),
            scored["label"].to_numpy(),
            [s.defect_type for s in category_samples],
            anomaly_maps=entry["maps"],
            masks=None if truths is None else [mask for mask, _ in truths],
            regions_per_image=None if truths is None else [regions for _, regions in truths],
        )
    scoring_skipped = {category: entry.get("skipped", []) for category, entry in anomaly_maps.items()}
    metrics = {
        "categories": per_category,
        "mean": mean_over_categories(per_category),
        # Not scored, not counted in n_good / n_anomalous.
        "skipped_test_images": skipped_test_images(skipped_files or [], scoring_skipped, anomaly_maps),
        "fairness": fairness_metrics(per_category),
    }
    logger.info("Metrics:\n%s", metrics_table(metrics).to_string(float_format=lambda x: f"{x:.3f}"))
    return metrics


def summarise_centralized_run(
    metrics: dict[str, Any], memory_bank: dict[str, np.ndarray], tuned: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The published metrics of the centralized baseline (one client holding every image).

    With tuned settings, ``tuned`` says which setting each tuned category ran with and its
    validation AUROC (the why is in data/08_reporting/tune_report.md).
    """
    n_images = CategoryBanks.from_arrays(memory_bank).n_images
    summary = {
        **metrics,
        "fairness": fairness_metrics(metrics["categories"], {"all": sorted(n_images)}),
        "partition": "centralized",
        "clients": {"all": {"n_images": int(sum(n_images.values()))}},
    }
    if tuned:
        settings = run_settings.category_settings(metrics["categories"], {}, {}, {}, tuned)
        summary["tuned"] = run_settings.describe(settings, tuned)
    return summary


def publish_centralized_privacy(
    run_summary: dict[str, Any],
    training_images: pd.DataFrame,
    privacy_ledger_state: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    budget: dict[str, Any],
    *,
    client_id: str,
) -> dict[str, Any]:
    """The baseline's published metrics with its budget: the composed ε of its images in the ledger.

    ``privacy_ledger_state`` orders this after every release of the run.
    """
    holdings = {client_id: training_images["key"].astype(str).tolist()}
    settings = PrivacySettings.from_parameters(privacy, seed)
    return publish_budgets(run_summary, settings, [budget], [client_id], holdings=holdings)
