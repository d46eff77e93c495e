"""Federated variant: partition the training images, run the server rounds, publish the run.

Thin calls of :mod:`fedpatchcore.core.federation.partition` and :mod:`fedpatchcore.core.federation.server`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.data.types import TEST, category_info_from_dict, frame_to_samples, group_by_category
from fedpatchcore.core.evaluation.membership_audit import membership_audit
from fedpatchcore.core.evaluation.metrics import fairness_metrics
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.federation.heterogeneity import (
    apply_label_noise,
    label_noise_counts,
    label_noise_pool,
    parse_heterogeneity,
)
from fedpatchcore.core.federation.partition import make_partition, partition_statistics
from fedpatchcore.core.federation.server import ServerSettings, run_round
from fedpatchcore.core.privacy.release import PrivacySettings, with_public_transform
from fedpatchcore.pipelines.ingest.nodes import unused_training_keys

logger = logging.getLogger(__name__)


def _partition(samples, federation: dict[str, Any], seed: int) -> dict[str, list[str]]:
    return make_partition(
        samples,
        federation["partition"],
        num_clients=federation.get("num_clients"),
        clients=federation.get("clients"),
        qc_sample_ratio=federation.get("qc_sample_ratio", 0.1),
        alpha=federation.get("alpha"),
        seed=seed,
    )


def reserve_label_noise_images(
    dataset_index: pd.DataFrame, variants: dict[str, dict[str, Any]], seed: int
) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Set aside the defective test images label noise will put into training sets, in any variant.

    Returns the pool (category -> keys) and the evaluation index: the dataset without them, so
    no variant is ever scored on an image some client trained on, and all variants of a run
    are scored on the same images.
    """
    samples = frame_to_samples(dataset_index)
    category_of = {s.key: s.category for s in samples}
    needed: dict[str, int] = {}
    for name, parameters in variants.items():
        specs = parse_heterogeneity(parameters.get("heterogeneity"))
        if not any(spec.label_noise for spec in specs.values()):
            continue
        held_out = unused_training_keys(
            dataset_index, parameters.get("validation"), parameters.get("dataset"), parameters["seed"]
        )
        partitioned = [s for s in samples if s.key not in held_out]
        for client_id, keys in _partition(partitioned, parameters["federation"], parameters["seed"]).items():
            spec = specs.get(str(client_id))
            if spec is None or not spec.label_noise:
                continue
            per_category: dict[str, int] = {}
            for key in keys:
                per_category[category_of[key]] = per_category.get(category_of[key], 0) + 1
            for category, count in label_noise_counts(per_category, spec.label_noise).items():
                needed[category] = max(needed.get(category, 0), count)
        logger.info("Variant %s: label noise needs %s defective images per category", name, needed)
    defective = {}
    for s in samples:
        if s.split == TEST and s.label == 1:
            defective.setdefault(s.category, []).append(s.key)
    pool = label_noise_pool(defective, needed, seed)
    reserved = {key for keys in pool.values() for key in keys}
    if reserved:
        logger.info("Left out of evaluation (used as label noise): %d test images", len(reserved))
    return pool, dataset_index[~dataset_index["key"].isin(reserved)].reset_index(drop=True)


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
    With ``validation.enabled`` the validation split's training images go to no client, and with
    ``dataset.train_shots`` only that many images per category (a seeded subset) go to any.
    Returns the partition (client -> image keys), its statistics, then one training-image
    table per client in ``client_ids`` order.
    """
    held_out = unused_training_keys(dataset_index, validation, dataset, seed)
    samples = [s for s in frame_to_samples(dataset_index) if s.key not in held_out]
    assignment = _partition(samples, federation, seed)
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
    aggregation: dict[str, Any],
    coreset: dict[str, Any],
    trust: dict[str, Any],
    seed: int,
    fairness: dict[str, Any],
    *uploads_arrays,
    client_ids: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round 1: the server scores its trust in each client and merges their uploads per category
    (within fair category quotas when ``aggregation.total_bank_size`` is set)."""
    settings = ServerSettings.from_parameters(aggregation, coreset, seed, trust, fairness)
    result = run_round(_uploads(client_ids, uploads_arrays), settings)
    return result.bank.to_arrays(), result.report


def aggregate_later_round(
    previous_bank: dict[str, np.ndarray],
    previous_report: dict[str, Any],
    aggregation: dict[str, Any],
    coreset: dict[str, Any],
    trust: dict[str, Any],
    seed: int,
    fairness: dict[str, Any],
    *uploads_arrays,
    client_ids: list[str],
    round_number: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round r > 1: the previous global bank plus what clients found uncovered, merged again
    (with the trust scored in round 1)."""
    result = run_round(
        _uploads(client_ids, uploads_arrays),
        ServerSettings.from_parameters(aggregation, coreset, seed, trust, fairness),
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
    clients, and what crossed the network."""
    paths = dict(zip(dataset_index["key"], dataset_index["image_path"], strict=True))
    raw_bytes = {cid: int(sum(os.path.getsize(paths[key]) for key in keys)) for cid, keys in partition.items()}
    uploaded = sum(report["uploaded_bytes"] for report in round_reports)
    broadcast = sum(report["broadcast_bytes"] for report in round_reports)
    # After the last round every factory receives the global bank to inspect its own parts.
    model_broadcast = CategoryBanks.from_arrays(memory_bank).nbytes * len(partition)
    first = round_reports[0]["uploaded"]
    clients = {}
    for cid, stats in partition_stats["clients"].items():
        sent = first.get(cid, {})
        numbers = sent.get("numbers", {})
        clients[cid] = {
            **stats,
            # What the client could read and used; the partition assigned n_images_assigned.
            "n_images": int(sum(sent.get("n_images", {}).values())),
            "n_images_assigned": stats["n_images"],
            "n_images_skipped": int(numbers.get("images.skipped", 0)),
            "raw_image_bytes": raw_bytes[cid],
            "uploaded_bytes": int(sum(r["uploaded"].get(cid, {}).get("bytes", 0) for r in round_reports)),
            "rejected": any(cid in r["rejected"] for r in round_reports),
            "label_noise_images": int(
                sum(len(swap["added"]) for swap in partition_stats.get("label_noise", {}).get(cid, {}).values())
            ),
        }
        if cid in round_reports[0].get("trust", {}):
            clients[cid]["trust"] = round_reports[0]["trust"][cid]
    # Each client is judged on the categories it holds (the mean of their metrics).
    members = {cid: list(stats.get("categories", {})) for cid, stats in partition_stats["clients"].items()}
    summary = {
        **metrics,
        "fairness": fairness_metrics(metrics["categories"], members),
        "partition": partition_stats["partition"],
        "aggregation": dict(aggregation),
        "clients": clients,
        "communication": {
            "uploaded_bytes": int(uploaded),
            "broadcast_bytes": int(broadcast),
            "model_broadcast_bytes": int(model_broadcast),
            "raw_image_bytes": int(sum(raw_bytes.values())),
            "upload_to_raw_ratio": float(uploaded / max(1, sum(raw_bytes.values()))),
            "rounds": list(round_reports),
        },
    }
    logger.info(
        "Federated run (%s): uploaded %.2f MB vs %.2f MB of raw training images",
        partition_stats["partition"],
        uploaded / 1e6,
        sum(raw_bytes.values()) / 1e6,
    )
    return summary


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
    same categories that are evaluated. Returns ``{"enabled": false}`` when the audit is off.
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
    )


def add_privacy_budgets(
    run_summary: dict[str, Any], privacy: dict[str, Any], seed: int, *budgets: dict[str, Any], client_ids: list[str]
) -> dict[str, Any]:
    """``clients.<id>.privacy``: what each client's release spent; ``experiment.sigma`` when private."""
    summary = {**run_summary, "clients": {cid: dict(values) for cid, values in run_summary["clients"].items()}}
    for client_id, budget in zip(client_ids, budgets, strict=True):
        summary["clients"].setdefault(client_id, {})["privacy"] = dict(budget)
    if PrivacySettings.from_parameters(privacy, seed).enabled:
        summary["experiment"] = {**summary.get("experiment", {}), "sigma": max(float(b["sigma"]) for b in budgets)}
    return summary


def publish_privacy(
    run_summary: dict[str, Any],
    privacy_audit: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    *budgets: dict[str, Any],
    client_ids: list[str],
) -> dict[str, Any]:
    """The run's metrics with each client's privacy budget and, when audited, the attack's results.

    An audited run also publishes ``experiment.sigma`` and ``experiment.attack_auc`` (columns of
    the experiment's table).
    """
    summary = add_privacy_budgets(run_summary, privacy, seed, *budgets, client_ids=client_ids)
    if privacy_audit.get("enabled"):
        summary["privacy"] = {"audit": dict(privacy_audit)}
        summary["experiment"] = {
            **summary.get("experiment", {}),
            "sigma": max(float(b["sigma"]) for b in budgets),
            "attack_auc": privacy_audit["attack_auc"],
        }
    return summary
