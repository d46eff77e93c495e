"""Federated variant: partition the training images, run the server rounds, publish the run.

Thin calls of :mod:`fedpatchcore.core.federation.partition` and :mod:`fedpatchcore.core.federation.server`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.data.types import TEST, category_info_from_dict, frame_to_samples, group_by_category
from fedpatchcore.core.evaluation import run_summary
from fedpatchcore.core.evaluation.membership_audit import membership_audit
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.federation.heterogeneity import apply_label_noise, parse_heterogeneity
from fedpatchcore.core.federation.partition import (
    partition_from_parameters,
    partition_statistics,
    subsample_per_category,
)
from fedpatchcore.core.federation.server import ServerSettings, run_round
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    audit_release,
    choose_positions,
    with_public_transform,
)
from fedpatchcore.core.tuning.split import unused_training_keys

logger = logging.getLogger(__name__)


def partition_clients(
    dataset_index: pd.DataFrame,
    label_noise_pool: dict[str, list[str]],
    federation: dict[str, Any],
    heterogeneity: dict[str, Any],
    seed: int,
    validation: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    *,
    client_ids: list[str],
) -> tuple:
    """Decide which client holds which training image; each client gets a table of only its own.

    With ``heterogeneity.<client>.label_noise``, a share of that client's images is swapped for
    defective ones from the label-noise pool (its "good" folder holds defective parts).
    With ``validation.enabled`` the validation split's training images go to no client; with
    ``dataset.train_shots`` only that many images per category (a seeded subset) go to any, and
    with ``federation.train_per_category`` only a seeded choice of that many per category is dealt.
    Returns the partition (client -> image keys), its statistics, then one training-image
    table per client in ``client_ids`` order.
    """
    samples = frame_to_samples(dataset_index)
    held_out = unused_training_keys(samples, validation, (dataset or {}).get("train_shots", "all"), seed)
    samples = [s for s in samples if s.key not in held_out]
    # federation.train_per_category: the variant trains on a seeded share of each category.
    samples = subsample_per_category(samples, federation.get("train_per_category"), seed)
    assignment = partition_from_parameters(samples, federation, seed)
    if list(assignment) != list(client_ids):
        raise RuntimeError(f"partition made clients {list(assignment)}, the pipeline was built for {client_ids}")
    statistics = partition_statistics(assignment, samples)
    statistics["partition"] = federation["partition"]
    assignment, swaps = apply_label_noise(assignment, samples, parse_heterogeneity(heterogeneity), label_noise_pool, seed)
    statistics["label_noise"] = swaps
    sizes = ", ".join(f"{cid}: {len(keys)}" for cid, keys in assignment.items())
    logger.info("Partition '%s' -> training images per client {%s}", federation["partition"], sizes)
    tables = []
    for keys in assignment.values():
        held = dataset_index[dataset_index["key"].isin(set(keys))]
        tables.append(held.sort_values("key").reset_index(drop=True))
    return ({cid: list(keys) for cid, keys in assignment.items()}, statistics, *tables)


def _uploads(client_ids: list[str], uploads_arrays) -> list[ClientUpload]:
    return [ClientUpload.from_arrays(cid, arrays) for cid, arrays in zip(client_ids, uploads_arrays, strict=True)]


def aggregate_first_round(
    *uploads_arrays: dict[str, np.ndarray], parameters: dict[str, Any], client_ids: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round 1: the server scores its trust in each client and merges their uploads per category
    (within fair category quotas when ``aggregation.total_bank_size`` is set).

    ``parameters``: the run's :data:`~fedpatchcore.core.federation.server.SERVER_BLOCKS`.
    """
    result = run_round(_uploads(client_ids, uploads_arrays), ServerSettings.from_run(parameters))
    return result.bank.to_arrays(), result.report


def aggregate_later_round(
    previous_bank: dict[str, np.ndarray],
    previous_report: dict[str, Any],
    *uploads_arrays: dict[str, np.ndarray],
    parameters: dict[str, Any],
    client_ids: list[str],
    round_number: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round r > 1: the previous global bank plus what clients found uncovered, merged again
    (with the trust scored in round 1)."""
    result = run_round(
        _uploads(client_ids, uploads_arrays),
        ServerSettings.from_run(parameters),
        round_number=round_number,
        previous=CategoryBanks.from_arrays(previous_bank),
        trust=previous_report.get("trust"),
    )
    return result.bank.to_arrays(), result.report


def summarise_federated_run(
    metrics: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    partition: dict[str, list[str]],
    partition_stats: dict[str, Any],
    dataset_index: pd.DataFrame,
    aggregation: dict[str, Any],
    *round_reports: dict[str, Any],
) -> dict[str, Any]:
    """The published metrics of a federated run: quality, clients, fairness over categories and
    clients, and what crossed the network (:func:`core.evaluation.run_summary.summarise_federated_run`)."""
    image_paths = dict(zip(dataset_index["key"], dataset_index["image_path"], strict=True))
    bank = CategoryBanks.from_arrays(memory_bank)
    return run_summary.summarise_federated_run(
        metrics, bank, partition, partition_stats, image_paths, aggregation, round_reports
    )


def audit_membership(
    memory_bank: dict[str, np.ndarray],
    partition: dict[str, list[str]],
    dataset_index: pd.DataFrame,
    evaluation_index: pd.DataFrame,
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Play the attacker holding the global bank: which images trained it? (``privacy.audit``)

    Members: every client's training images; non-members: the defect-free test images of the
    same categories that are evaluated. A private rows release takes only the public positions
    of each image, so the attacker looks there only (a member's client's positions; a
    non-member's as the first client of its category would have drawn them). Returns
    ``{"enabled": false}`` when the audit is off.
    """
    settings = PrivacySettings.from_parameters(privacy, seed)
    if not settings.audit.enabled:
        return {"enabled": False}
    banks = CategoryBanks.from_arrays(memory_bank).banks
    samples = {s.key: s for s in frame_to_samples(dataset_index)}
    trained = {key for keys in partition.values() for key in keys}
    members = group_by_category([samples[key] for key in sorted(trained)])
    held_out = [s for s in frame_to_samples(evaluation_index) if s.split == TEST and s.label == 0 and s.key not in trained]
    non_members = group_by_category(held_out)
    budget = settings.budget() if settings.enabled else {"epsilon": None, "delta": None}
    return membership_audit(
        members,
        non_members,
        {name: category_info_from_dict(info) for name, info in category_info.items()},
        with_public_transform(make_embedder(backbone, extraction), settings),
        banks,
        statistic=settings.audit.statistic,
        batch_size=int(extraction["batch_size"]),
        num_workers=int(extraction.get("num_workers", 0)),
        max_images_per_category=settings.audit.max_images_per_category,
        seed=seed,
        epsilon=budget["epsilon"],
        delta=budget["delta"],
        positions=_release_positions(settings, partition, samples),
    )


def _release_positions(settings: PrivacySettings, partition: dict[str, list[str]], samples: dict[str, Any]):
    """The public positions of a rows release, per image (None: every patch reached the bank)."""
    if not (settings.enabled and settings.mechanism == "rows"):
        return None
    holder = {key: cid for cid, keys in partition.items() for key in keys}
    first_holder: dict[str, str] = {}
    for cid, keys in partition.items():
        for key in keys:
            first_holder.setdefault(samples[key].category, cid)

    def positions(sample, grid):
        client_id = holder.get(sample.key, first_holder.get(sample.category, ""))
        return choose_positions(grid, settings.patches_per_image, settings.seed, client_id, sample.key)

    return positions


def audit_canary(privacy: dict[str, Any], coreset: dict[str, Any], seed: int) -> dict[str, Any]:
    """The canary audit of the variant's release mechanism (``privacy.canary_audit``; small public inputs)."""
    settings = PrivacySettings.from_parameters(privacy, seed)
    if not settings.canary_audit.enabled:
        return {"enabled": False}
    result = audit_release(settings, float(coreset["ratio"]), seed, privacy.get("dp_cvae"))
    logger.info(
        "Canary audit (%s): empirical ε lower bound %.3f (claimed %s, at most %.2f with %d trials)",
        settings.mechanism,
        result["empirical_epsilon_lb"],
        result["claimed_epsilon"],
        result["epsilon_ceiling"],
        result["trials"],
    )
    return result


def close_privacy_ledger(*budgets: dict[str, Any]) -> dict[str, Any]:
    """After every release of the run: what was released (the published budgets read the ledger next)."""
    return {"releases": sum(1 for budget in budgets if budget.get("enabled")), "budgets": len(budgets)}

