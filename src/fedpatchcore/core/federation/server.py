"""One server round: validate uploads, weigh clients, select rows per category, report.

    uploads ──validate──► accepted uploads (a malformed one is rejected whole and logged;
                          the global bank is built only from accepted ones)
            ──client weights──► quota weights: aggregation.client_weights (default 1) times,
                          for the ``trust`` strategy, each client's trust score (trust.py;
                          computed and reported for every strategy, 0 under trust.min_trust)
            ──category quotas (aggregation.total_bank_size split by fairness, when set)──►
            ──strategy per category (aggregation.strategy, aggregation.options)──►
    global bank: rows + for every row the client it came from and its row in that client's
    local coreset, carried through later rounds; and a JSON-ready round report.

Round r > 1 merges the previous global bank (as one more contributor) with what clients
found uncovered. The Kedro server nodes and the Flower ServerApp both call :func:`run_round`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.federation.aggregation import (
    STRATEGIES,
    AggregationError,
    aggregate,
    split_valid_uploads,
)
from fedpatchcore.core.federation.fairness import FairnessSettings
from fedpatchcore.core.federation.trust import TrustSettings, trust_scores

logger = logging.getLogger(__name__)

# Round r > 1: the previous global bank joins the selection under this name; it is not a client.
PREVIOUS_ROUND = "previous_round"


@dataclass(frozen=True)
class ServerSettings:
    """How the server merges uploads (the ``aggregation`` block, plus the run's seed)."""

    strategy: str
    global_bank_size: int | None
    min_clients: int
    projection_dim: int
    seed: int
    options: dict = field(default_factory=dict)
    client_weights: dict = field(default_factory=dict)  # fixed per-client weights (missing: 1)
    trust: TrustSettings = field(default_factory=TrustSettings)
    total_bank_size: int | None = None  # rows over all categories, split by fairness (None: no such budget)
    fairness: FairnessSettings = field(default_factory=FairnessSettings)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"aggregation.strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")

    @classmethod
    def from_run(cls, parameters: Mapping[str, Any]) -> ServerSettings:
        """The server's settings from the run's parameters: the one place that turns parameters
        into them (``parameters``: a variant's resolved blocks; only :data:`SERVER_BLOCKS` are read)."""
        run = {name: parameters.get(name) for name in SERVER_BLOCKS}
        aggregation, coreset, seed = run["aggregation"], run["coreset"] or {}, int(run["seed"])
        return cls(
            strategy=str(aggregation["strategy"]),
            global_bank_size=aggregation.get("global_bank_size"),
            min_clients=int(aggregation.get("min_clients", 1)),
            projection_dim=int(coreset.get("projection_dim") or 128),
            seed=seed,
            options=dict(aggregation.get("options") or {}),
            client_weights={str(k): float(v) for k, v in (aggregation.get("client_weights") or {}).items()},
            trust=TrustSettings.from_parameters(run["trust"], seed),
            total_bank_size=aggregation.get("total_bank_size"),
            fairness=FairnessSettings.from_parameters(run["fairness"]),
        )


#: The parameter blocks the server reads, and the only ones: :meth:`ServerSettings.from_run`
#: reads its settings from them and the Kedro server nodes receive exactly these
#: (``pipelines/federated``); a Flower server's resume check covers them (``flower/rounds.py``).
#: A new server parameter: its YAML line and schema field in one of these blocks, and one line
#: of ``from_run``.
SERVER_BLOCKS = ("seed", "aggregation", "coreset", "trust", "fairness")


@dataclass
class RoundResult:
    bank: CategoryBanks  # the global bank after this round, with row origins
    report: dict  # JSON-ready: what was sent, kept, rejected


def _client_entry(upload: ClientUpload) -> dict:
    return {
        "rows": {c: int(len(b)) for c, b in upload.banks.items()},
        "bytes": upload.nbytes,
        "n_images": {c: int(n) for c, n in upload.n_images.items()},
        "numbers": dict(upload.numbers),
    }


def _trace_origins(
    result, contributors: Sequence[ClientUpload], previous: CategoryBanks | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Client id and local-coreset row of every result row; inherited rows keep their first origin."""
    by_id = {u.client_id: u for u in contributors}
    origin, origin_row = {}, {}
    for category, labels in result.origin.items():
        rows = result.source_row[category]
        clients = np.asarray(labels, dtype=object).copy()
        local_rows = np.empty(len(rows), dtype=np.int64)
        for client_id in np.unique(labels):
            mine = labels == client_id
            if client_id == PREVIOUS_ROUND:
                clients[mine] = previous.origin[category][rows[mine]]
                local_rows[mine] = previous.origin_row[category][rows[mine]]
            else:
                local_rows[mine] = by_id[client_id].row_ids[category][rows[mine]]
        origin[category] = clients.astype(str)
        origin_row[category] = local_rows
    return origin, origin_row


def run_round(
    uploads: Sequence[ClientUpload],
    settings: ServerSettings,
    *,
    round_number: int = 1,
    previous: CategoryBanks | None = None,
    n_receivers: int | None = None,
    trust: Mapping[str, dict] | None = None,
) -> RoundResult:
    """Merge one round's uploads (and the previous global bank from round 2 on).

    ``n_receivers`` is how many clients the previous bank was broadcast to (for the byte
    count; default: the number of uploads). ``trust`` (per-client trust of an earlier round)
    is reused instead of scoring this round's uploads: from round 2 on they hold only rows the
    global bank does not cover, which no peer confirms by construction. Raises
    :class:`AggregationError` when fewer than ``settings.min_clients`` uploads are usable; the
    previous bank is then untouched.
    """
    if round_number > 1 and previous is None:
        raise ValueError(f"round {round_number} needs the previous round's global bank")
    sent = {u.client_id: _client_entry(u) for u in uploads}
    if trust is None:
        valid, _ = split_valid_uploads(uploads)  # malformed uploads are rejected (and logged) below
        trust = trust_scores(valid, settings.trust) if len(valid) >= 2 else {}
    client_weights = dict(settings.client_weights)
    if settings.strategy == "trust":
        for client_id, score in trust.items():
            client_weights[client_id] = client_weights.get(client_id, 1.0) * score["weight"]
    if previous is None:
        contributors = list(uploads)
        min_contributors = settings.min_clients
    else:
        # A client that found nothing uncovered in a category sends no rows for it: a valid reply.
        replies = [
            ClientUpload(u.client_id, {c: b for c, b in u.banks.items() if len(b)}, u.n_images, u.row_ids, u.numbers)
            for u in uploads
        ]
        contributors = [
            ClientUpload(PREVIOUS_ROUND, previous.banks, previous.n_images),
            *(u for u in replies if u.banks),
        ]
        min_contributors = 1
    result = aggregate(
        contributors,
        settings.strategy,
        settings.global_bank_size,
        min_clients=min_contributors,
        # Later rounds draw fresh k-center starts (as they always have: seed + round number).
        seed=settings.seed if previous is None else settings.seed + round_number,
        projection_dim=settings.projection_dim,
        client_weights=client_weights,
        options=settings.options,
        total_bank_size=settings.total_bank_size,
        fairness=settings.fairness,
    )
    accepted = [u for u in uploads if u.client_id not in result.rejected]
    if len(accepted) < settings.min_clients:
        raise AggregationError(
            f"round {round_number}: only {len(accepted)} usable client upload(s), fewer than "
            f"aggregation.min_clients={settings.min_clients}; rejected: {result.rejected or 'none'}"
        )
    if previous is None:
        n_images = {c: sum(int(u.n_images.get(c, 0)) for u in accepted) for c in result.banks}
    else:
        n_images = dict(previous.n_images)
    origin, origin_row = _trace_origins(result, contributors, previous)
    bank = CategoryBanks(result.banks, n_images, origin, origin_row)
    receivers = len(uploads) if n_receivers is None else int(n_receivers)
    report = {
        "round": int(round_number),
        "uploaded": sent,
        "uploaded_bytes": int(sum(entry["bytes"] for entry in sent.values())),
        "broadcast_bytes": int(previous.nbytes * receivers) if previous is not None else 0,
        "client_weights": {str(k): float(v) for k, v in client_weights.items()},
        "trust": {str(k): dict(v) for k, v in trust.items()},
        "fairness": settings.fairness.describe(),
        **result.summary(),
    }
    logger.info("Round %d: global bank rows per category %s", round_number, report["bank_rows"])
    return RoundResult(bank, report)
