"""Evaluation: index the memory bank, score every test image, compute the benchmark metrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks, bank_fingerprint
from fedpatchcore.core.banks.knn import IndexSpec
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
from fedpatchcore.core.privacy.release import PrivacySettings, publish_budgets
from fedpatchcore.core.scoring.category import CategoryPlan, SearchBatches, score_test_set
from fedpatchcore.datasets.arrays import FaissIndexes

logger = logging.getLogger(__name__)


def build_faiss_index(memory_bank: dict[str, np.ndarray], scoring: dict[str, Any], seed: int) -> FaissIndexes:
    """One nearest-neighbour index per category, of the kind ``scoring.index`` names.

    The result records the fingerprint of ``memory_bank`` and the index's build settings
    (saved beside the index), so scoring can tell whether an index belongs to the bank it
    scores against.
    """
    spec = IndexSpec.from_params(scoring, seed)
    indexes = {}
    for category, bank in CategoryBanks.from_arrays(memory_bank).banks.items():
        indexes[category] = spec.build(bank)
        logger.info("%s: %s index over %d rows", category, spec.kind, len(bank))
    return FaissIndexes(indexes, bank_fingerprint=bank_fingerprint(memory_bank), build=spec.record())


def index_for_bank(
    faiss_index: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    scoring: dict[str, Any],
    seed: int,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """``faiss_index`` if it was built from ``memory_bank`` with these settings, else a rebuilt one.

    The saved index is unversioned while the bank is versioned: a run that stopped between
    the coreset and the index (or ``--to-nodes ...select_coreset``) leaves an index of an
    older bank behind. An index is a pure function of its bank and build settings, so
    rebuilding it here gives exactly what ``build_faiss_index`` would, and scores stay right;
    a warning says the saved one is stale. Search-time settings (``scoring.ivf.nprobe``,
    ``scoring.hnsw.ef_search``) are applied to a kept index: they need no rebuild.
    """
    spec = IndexSpec.from_params(scoring, seed)
    expected = fingerprint or bank_fingerprint(memory_bank)
    built_from = getattr(faiss_index, "bank_fingerprint", None)
    build = getattr(faiss_index, "build", {}) or {}
    if built_from == expected and build == spec.record() and all(map(spec.matches, faiss_index.values())):
        for index in faiss_index.values():
            spec.configure(index)
        return faiss_index
    if built_from is None:
        reason = "records no fingerprint of the bank it was built from"
    elif built_from != expected:
        reason = (
            f"was built from another memory bank (fingerprint {built_from[:12]}, this bank {expected[:12]})"
        )
    else:
        reason = f"was built with {build}, this run's scoring asks for {spec.record()}"
    logger.warning(
        "The saved FAISS index %s; rebuilding it in memory from the memory bank being scored. "
        "Re-run the build_faiss_index node to refresh the saved index.",
        reason,
    )
    return build_faiss_index(memory_bank, scoring, seed)


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
    Every category's setting is resolved here, once; ``core.scoring`` does the rest.
    """
    fingerprint = bank_fingerprint(memory_bank)
    indexes = index_for_bank(faiss_index, memory_bank, scoring, seed, fingerprint)
    by_category = group_by_category(s for s in frame_to_samples(evaluation_index) if s.split == TEST)
    settings = run_settings.category_settings(by_category, backbone, extraction, scoring, tuned)
    plans = {}
    for category, setting in settings.items():
        info = category_info_from_dict(category_info[category])
        blocks = run_settings.blocks_for(setting, backbone, extraction, scoring)
        plans[category] = CategoryPlan.from_blocks(info, *blocks, input_size=run_settings.info_for(setting, info).image_size)
    banks = CategoryBanks.from_arrays(memory_bank)
    scores = score_test_set(
        plans,
        by_category,
        indexes,
        banks.banks,
        PrivacySettings.from_parameters(privacy, seed),
        SearchBatches.from_params(scoring, extraction),
        radius=banks.radius,
        row_weights={c: banks.row_weights(c) for c in banks.banks} if scoring.get("soft_weights", False) else None,
    )
    maps = {
        category: {
            "keys": [s.key for s in result.samples],
            "maps": result.maps,
            "skipped": list(result.skipped),
            "bank_fingerprint": fingerprint,
        }
        for category, result in scores.items()
    }
    rows = [
        {"key": s.key, "category": s.category, "defect_type": s.defect_type, "label": s.label, "image_score": float(v)}
        for result in scores.values()
        for s, v in zip(result.samples, result.image_scores, strict=True)
    ]
    return maps, pd.DataFrame(rows, columns=["key", "category", "defect_type", "label", "image_score"])


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
