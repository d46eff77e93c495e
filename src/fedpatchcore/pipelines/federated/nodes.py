"""Federated variant: partition the training images, merge the clients' coresets on the server."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from fedpatchcore.core.aggregation import ClientUpload, aggregate, covering_radius_estimate, uncovered_rows
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import frame_to_samples
from fedpatchcore.core.partition import make_partition, partition_statistics

logger = logging.getLogger(__name__)

# Round r > 1 merges the previous global bank with the new uploads; it is not a client.
PREVIOUS_ROUND = "previous_round"


def federation_settings(federation: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """The variant's `federation` parameters: the shared ones with its overrides applied."""
    return {**federation, **(override or {})}


def partition_clients(
    dataset_index: pd.DataFrame,
    federation: dict[str, Any],
    seed: int,
    override: dict[str, Any] | None = None,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Decide which client holds which training image, and describe the split."""
    settings = federation_settings(federation, override)
    samples = frame_to_samples(dataset_index)
    assignment = make_partition(
        samples,
        settings["partition"],
        num_clients=settings.get("num_clients"),
        clients=settings.get("clients"),
        qc_sample_ratio=settings.get("qc_sample_ratio", 0.1),
        alpha=settings.get("alpha"),
        seed=seed,
    )
    statistics = partition_statistics(assignment, samples)
    statistics["partition"] = settings["partition"]
    sizes = ", ".join(f"{cid}: {len(keys)}" for cid, keys in assignment.items())
    logger.info("Partition '%s' -> training images per client {%s}", settings["partition"], sizes)
    return {cid: list(keys) for cid, keys in assignment.items()}, statistics


def _upload(client_id: str, arrays: dict[str, np.ndarray]) -> ClientUpload:
    banks = CategoryBanks.from_arrays(arrays)
    return ClientUpload(client_id=client_id, banks=banks.banks, n_images=banks.n_images)


def _round_report(round_number: int, uploads: list[ClientUpload], result, broadcast_bytes: int) -> dict:
    sent = {
        upload.client_id: {
            "rows": {c: int(len(b)) for c, b in upload.banks.items()},
            "bytes": int(sum(np.asarray(b).nbytes for b in upload.banks.values())),
        }
        for upload in uploads
        if upload.client_id != PREVIOUS_ROUND
    }
    return {
        "round": round_number,
        "uploaded": sent,
        "uploaded_bytes": int(sum(entry["bytes"] for entry in sent.values())),
        "broadcast_bytes": int(broadcast_bytes),
        **result.summary(),
    }


def aggregate_first_round(
    aggregation: dict[str, Any], coreset: dict[str, Any], seed: int, *local_coresets, client_ids: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round 1: every client uploads its local coreset; the server merges them per category."""
    uploads = [_upload(cid, arrays) for cid, arrays in zip(client_ids, local_coresets, strict=True)]
    result = aggregate(
        uploads,
        aggregation["strategy"],
        aggregation["global_bank_size"],
        min_clients=aggregation["min_clients"],
        seed=seed,
        projection_dim=coreset["projection_dim"],
    )
    n_images = {
        c: sum(u.n_images.get(c, 0) for u in uploads if u.client_id not in result.rejected)
        for c in result.banks
    }
    report = _round_report(1, uploads, result, broadcast_bytes=0)
    logger.info("Round 1: global bank rows per category %s", report["bank_rows"])
    return CategoryBanks(result.banks, n_images, result.origin).to_arrays(), report


def select_uncovered_upload(
    local_coreset: dict[str, np.ndarray], previous_bank: dict[str, np.ndarray], federation: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Round r > 1, on a client: keep only coreset rows the broadcast global bank does not cover."""
    local = CategoryBanks.from_arrays(local_coreset)
    broadcast = CategoryBanks.from_arrays(previous_bank)
    kept = {}
    for category, bank in local.banks.items():
        global_rows = broadcast.banks.get(category, np.zeros((0, bank.shape[1]), np.float32))
        if len(global_rows) >= 2:
            radius = covering_radius_estimate(global_rows, federation["coverage_quantile"])
            kept[category] = bank[uncovered_rows(bank, global_rows, radius)]
        else:
            kept[category] = bank
    return CategoryBanks(kept, local.n_images).to_arrays()


def aggregate_later_round(
    previous_bank: dict[str, np.ndarray],
    aggregation: dict[str, Any],
    coreset: dict[str, Any],
    seed: int,
    *uploads_arrays,
    client_ids: list[str],
    round_number: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round r > 1: the previous global bank plus what clients found uncovered, merged again.

    The previous bank joins as one more contributor, and the union is reduced with the
    configured strategy; with ``federated_coreset`` its quota follows the images behind it.
    """
    previous = CategoryBanks.from_arrays(previous_bank)
    uploads = [_upload(cid, arrays) for cid, arrays in zip(client_ids, uploads_arrays, strict=True)]
    # A client that found nothing uncovered sends no rows for that category.
    uploads = [
        ClientUpload(u.client_id, {c: b for c, b in u.banks.items() if len(b)}, u.n_images) for u in uploads
    ]
    uploads = [u for u in uploads if u.banks]
    contributors = [ClientUpload(PREVIOUS_ROUND, previous.banks, previous.n_images), *uploads]
    result = aggregate(
        contributors,
        aggregation["strategy"],
        aggregation["global_bank_size"],
        min_clients=1,
        seed=seed + round_number,
        projection_dim=coreset["projection_dim"],
    )
    broadcast_bytes = previous.nbytes * len(client_ids)
    report = _round_report(round_number, contributors, result, broadcast_bytes)
    logger.info("Round %d: global bank rows per category %s", round_number, report["bank_rows"])
    # Rows inherited from the previous round keep the client they originally came from.
    origin = {}
    for category, labels in result.origin.items():
        inherited = previous.origin.get(category)
        labels = labels.copy()
        if inherited is not None:
            from_previous = np.flatnonzero(labels == PREVIOUS_ROUND)
            previous_rows = _matching_rows(previous.banks[category], result.banks[category][from_previous])
            labels[from_previous] = inherited[previous_rows]
        origin[category] = labels
    return CategoryBanks(result.banks, previous.n_images, origin).to_arrays(), report


def _matching_rows(source: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in ``source`` of each of ``rows`` (which are exact copies of source rows)."""
    lookup = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(source))}
    return np.array([lookup[row.tobytes()] for row in np.ascontiguousarray(rows)], dtype=np.int64)


def summarise_federated_run(
    metrics: dict[str, Any],
    memory_bank: dict[str, np.ndarray],
    partition: dict[str, list[str]],
    partition_stats: dict[str, Any],
    dataset_index: pd.DataFrame,
    aggregation: dict[str, Any],
    *round_reports: dict[str, Any],
) -> dict[str, Any]:
    """The published metrics of a federated run: quality, clients and what crossed the network."""
    paths = dict(zip(dataset_index["key"], dataset_index["image_path"], strict=True))
    raw_bytes = {
        cid: int(sum(os.path.getsize(paths[key]) for key in keys)) for cid, keys in partition.items()
    }
    uploaded = sum(report["uploaded_bytes"] for report in round_reports)
    broadcast = sum(report["broadcast_bytes"] for report in round_reports)
    # After the last round every factory receives the global bank to inspect its own parts.
    model_broadcast = CategoryBanks.from_arrays(memory_bank).nbytes * len(partition)
    clients = {}
    for cid, stats in partition_stats["clients"].items():
        clients[cid] = {
            **stats,
            "raw_image_bytes": raw_bytes[cid],
            "uploaded_bytes": int(sum(r["uploaded"].get(cid, {}).get("bytes", 0) for r in round_reports)),
            "rejected": any(cid in r["rejected"] for r in round_reports),
        }
    summary = {
        **metrics,
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
