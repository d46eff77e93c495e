"""The published metrics of a run: quality, fairness, its clients, what crossed the network, privacy.

:func:`summarise_federated_run` joins a federated variant's metrics with what the federation
did: per client what it was assigned, read, sent and how far the server trusted it, fairness
over categories and over clients, and the bytes of every round against the raw training images.
:func:`add_privacy_budgets` and :func:`publish_privacy` add what each client's DP release spent
and the membership audit's result (the centralized baseline's single client too).

Why the evaluation stage: a run's summary needs the evaluation's metrics (and fairness over
them) next to the federation's partition and round reports; evaluation is the first stage that
may read both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.evaluation.metrics import fairness_metrics
from fedpatchcore.core.privacy.release import PrivacySettings, publish_budgets

logger = logging.getLogger(__name__)


def _client_entry(
    client_id: str,
    stats: Mapping[str, Any],
    swaps: Mapping[str, Mapping[str, list]],
    raw_bytes: int,
    round_reports: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """What one client was assigned, read and sent, and how far the server trusted it."""
    sent = round_reports[0]["uploaded"].get(client_id, {})
    entry = {
        **stats,
        # What the client could read and used; the partition assigned n_images_assigned.
        "n_images": int(sum(sent.get("n_images", {}).values())),
        "n_images_assigned": stats["n_images"],
        "n_images_skipped": int(sent.get("numbers", {}).get("images.skipped", 0)),
        "raw_image_bytes": raw_bytes,
        "uploaded_bytes": int(sum(r["uploaded"].get(client_id, {}).get("bytes", 0) for r in round_reports)),
        "rejected": any(client_id in r["rejected"] for r in round_reports),
        "label_noise_images": int(sum(len(swap["added"]) for swap in swaps.values())),
    }
    trust = round_reports[0].get("trust", {})
    if client_id in trust:
        entry["trust"] = trust[client_id]
    return entry


def summarise_federated_run(
    metrics: Mapping[str, Any],
    bank: CategoryBanks,
    partition: Mapping[str, Sequence[str]],
    partition_stats: Mapping[str, Any],
    image_paths: Mapping[str, str],
    aggregation: Mapping[str, Any],
    round_reports: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The published metrics of a federated run (``metrics`` plus ``fairness``, ``clients``, ``communication``).

    ``bank``: the final global bank (every factory receives it after the last round);
    ``image_paths``: image key -> file, for the bytes of each client's raw training images;
    ``round_reports``: the server's report of every round, in order.
    """
    raw_bytes = {cid: int(sum(os.path.getsize(image_paths[key]) for key in keys)) for cid, keys in partition.items()}
    uploaded = sum(report["uploaded_bytes"] for report in round_reports)
    broadcast = sum(report["broadcast_bytes"] for report in round_reports)
    # After the last round every factory receives the global bank to inspect its own parts.
    model_broadcast = bank.nbytes * len(partition)
    swaps = partition_stats.get("label_noise", {})
    clients = {
        cid: _client_entry(cid, stats, swaps.get(cid, {}), raw_bytes[cid], round_reports)
        for cid, stats in partition_stats["clients"].items()
    }
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


def add_privacy_budgets(
    run_summary: Mapping[str, Any], privacy: Mapping[str, Any], seed: int, *budgets: Mapping[str, Any], client_ids: Sequence[str]
) -> dict[str, Any]:
    """``clients.<id>.privacy``: what each client's release spent; ``experiment.sigma`` when private.

    ``budgets``: each client's spent budget, in ``client_ids`` order; ``privacy``, ``seed``: the
    run's privacy block and seed.
    """
    return publish_budgets(run_summary, PrivacySettings.from_parameters(privacy, seed), budgets, client_ids)


def publish_privacy(
    run_summary: Mapping[str, Any],
    privacy_audit: Mapping[str, Any],
    canary_audit: Mapping[str, Any],
    privacy_ledger_state: Mapping[str, Any],
    partition: Mapping[str, Sequence[str]],
    privacy: Mapping[str, Any],
    seed: int,
    *budgets: Mapping[str, Any],
    client_ids: Sequence[str],
) -> dict[str, Any]:
    """The run's metrics with each client's privacy budget and, when audited, the attacks' results.

    Budgets carry the composed ε of the sites' ledgers (read after every release of the run:
    ``privacy_ledger_state`` only orders this node after them). An audited run also publishes
    ``experiment.sigma``, ``experiment.attack_auc`` and, with the canary audit,
    ``experiment.empirical_epsilon_lb`` (columns of the experiment's table).
    """
    settings = PrivacySettings.from_parameters(privacy, seed)
    summary = publish_budgets(run_summary, settings, budgets, client_ids, holdings=partition)
    experiment = dict(summary.get("experiment", {}))
    if privacy_audit.get("enabled") or canary_audit.get("enabled"):
        experiment.setdefault("sigma", max(float(b["sigma"]) for b in budgets))
    if privacy_audit.get("enabled"):
        summary["privacy"] = {"audit": dict(privacy_audit)}
        experiment["attack_auc"] = privacy_audit["attack_auc"]
    if canary_audit.get("enabled"):
        summary["privacy"] = {**summary.get("privacy", {}), "canary_audit": dict(canary_audit)}
        experiment["empirical_epsilon_lb"] = canary_audit["empirical_epsilon_lb"]
    if experiment:
        summary["experiment"] = experiment
    return summary


def add_expert_communication(run_summary: dict[str, Any], expert_traffic: dict[str, Any]) -> dict[str, Any]:
    """The run's summary with what the experts' fitting sent: ``communication.experts``, added to
    ``communication.uploaded_bytes`` (and to each client's ``uploaded_bytes``)."""
    communication = dict(run_summary.get("communication") or {})
    communication["experts"] = dict(expert_traffic)
    communication["uploaded_bytes"] = int(communication.get("uploaded_bytes", 0)) + int(expert_traffic["uploaded_bytes"])
    communication["broadcast_bytes"] = int(communication.get("broadcast_bytes", 0)) + int(expert_traffic["broadcast_bytes"])
    if communication.get("raw_image_bytes"):
        communication["upload_to_raw_ratio"] = float(communication["uploaded_bytes"] / communication["raw_image_bytes"])
    clients = {cid: dict(values) for cid, values in (run_summary.get("clients") or {}).items()}
    for site, values in expert_traffic["sites"].items():
        cid = site.removeprefix("client_")
        if cid in clients:
            clients[cid]["uploaded_bytes"] = int(clients[cid].get("uploaded_bytes", 0)) + int(values["uploaded_bytes"])
            clients[cid]["expert_uploaded_bytes"] = int(values["uploaded_bytes"])
    return {**run_summary, "communication": communication, "clients": clients}
