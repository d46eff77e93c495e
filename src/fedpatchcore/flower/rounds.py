"""The rounds of a federation over Flower: send the run configuration, collect, validate, merge.

:func:`serve` runs on whatever Flower ``Grid`` it is given: the simulation engine's (Kedro node
of ``federation.engine: flower``) or a SuperLink's (the deployed ServerApp). Each round:

1. wait until the expected clients' SuperNodes are connected (at most
   ``federation.flower.connect_timeout_s``; then go on with those present; later rounds go
   on with the SuperNodes still connected);
2. send every node the run configuration (and, from round 2, the global bank);
3. collect replies for at most ``federation.round_timeout_s``: a node that died or hangs is
   left out, and the round goes on with the others;
4. read each reply as a :class:`ClientUpload`; an oversized one (``federation.flower.
   max_upload_bytes``), an undecodable one, one from an unknown or repeated client id is
   rejected and logged before aggregation;
5. merge with :func:`fedpatchcore.core.federation.server.run_round`, uploads in the
   partition's client order, exactly as the in-process server node does; it rejects
   malformed banks (NaN, wrong shape ...) and raises if fewer than ``aggregation.min_clients``
   usable uploads remain, leaving the last persisted global bank untouched;
6. persist the round's bank and report (a :class:`RoundStore`), so a restarted server
   resumes after the last persisted round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import Message
from flwr.serverapp import Grid

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.core.common.fingerprint import fingerprint
from fedpatchcore.core.federation.client import CLIENT_BLOCKS
from fedpatchcore.core.federation.server import SERVER_BLOCKS, ServerSettings, run_round
from fedpatchcore.flower import records
from fedpatchcore.flower.site import DATASET_KEYS
from fedpatchcore.structure import round_bank

logger = logging.getLogger(__name__)

# Defaults of the federation.flower block (conf/base/parameters_federated.yml documents them).
DEFAULT_ROUND_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 120.0
POLL_S = 0.2
# Keys of the federation block that say how rounds travel, not what they compute: a restarted
# server resumes a run whose only change is one of these.
TRANSPORT_KEYS = ("engine", "round_timeout_s", "flower")


@dataclass(frozen=True)
class FederationPlan:
    """Everything the server needs to run a variant's rounds (its resolved parameters)."""

    variant: str
    client_ids: tuple[str, ...]  # the partition's clients, in the order the server merges them
    rounds: int
    parameters: Mapping[str, Any] = field(repr=False)  # blocks: aggregation, coreset, federation, ...

    @classmethod
    def from_variant(cls, variant) -> FederationPlan:
        return cls(variant.name, tuple(variant.client_ids), variant.rounds, variant.parameters)

    @property
    def flower(self) -> Mapping[str, Any]:
        return self.parameters["federation"].get("flower") or {}

    @property
    def round_timeout_s(self) -> float:
        return float(self.parameters["federation"].get("round_timeout_s") or DEFAULT_ROUND_TIMEOUT_S)

    @property
    def connect_timeout_s(self) -> float:
        return float(self.flower.get("connect_timeout_s") or DEFAULT_CONNECT_TIMEOUT_S)

    @property
    def max_upload_bytes(self) -> int | None:
        value = self.flower.get("max_upload_bytes")
        return None if value is None else int(value)

    def server_settings(self) -> ServerSettings:
        return ServerSettings.from_run(self.parameters)

    def client_parameters(self) -> dict[str, Any]:
        """The run configuration every site receives: the client's blocks, and of the dataset
        only how to read a folder (never the dataset's location)."""
        blocks = {name: self.parameters.get(name) for name in CLIENT_BLOCKS}
        dataset = self.parameters.get("dataset") or {}
        blocks["dataset"] = {key: dataset.get(key) for key in DATASET_KEYS}
        return blocks

    def fingerprint(self) -> str:
        """What a persisted round depends on: a restarted server resumes only the same run.

        The clients, the rounds, every block the server and the sites read, less how the
        rounds travel (:data:`TRANSPORT_KEYS`).
        """
        run = {**self.client_parameters(), **{name: self.parameters.get(name) for name in SERVER_BLOCKS}}
        run["federation"] = {k: v for k, v in (run["federation"] or {}).items() if k not in TRANSPORT_KEYS}
        return fingerprint(list(self.client_ids), self.rounds, run)


@dataclass
class RoundTraffic:
    """What one round moved through Flower (serialized messages, as pushed to the SuperLink)."""

    round: int
    nodes: int  # instructions sent
    replies: int  # replies received before the timeout (errors included)
    sent_bytes: int  # instructions, serialized
    received_bytes: int  # replies, serialized
    seconds: float  # from sending to the last reply (or the timeout)


@dataclass
class FederationResult:
    banks: list[CategoryBanks]  # global bank after each round (index 0: round 1)
    reports: list[dict]  # round reports, as the in-process server nodes write them
    uploads: list[dict[str, ClientUpload]]  # per round: the uploads received, by client id
    traffic: list[RoundTraffic]
    resumed_after: int = 0  # rounds taken from the store instead of being run

    @property
    def bank(self) -> CategoryBanks:
        return self.banks[-1]

    def traffic_summary(self) -> dict[str, Any]:
        rounds = [vars(t) for t in self.traffic]
        return {
            "sent_bytes": int(sum(t.sent_bytes for t in self.traffic)),
            "received_bytes": int(sum(t.received_bytes for t in self.traffic)),
            "resumed_after_round": self.resumed_after,
            "rounds": rounds,
        }


class RoundStore(Protocol):
    """Where a server persists each round, and finds them again after a restart."""

    def resume(self, plan: FederationPlan) -> tuple[list[CategoryBanks], list[dict]]:
        """Banks and reports of the rounds already completed for this plan (empty: start afresh)."""

    def save(self, plan: FederationPlan, round_number: int, bank: CategoryBanks, report: dict) -> None: ...


# --------------------------------------------------------------------------- one round


def wait_for_nodes(grid: Grid, expected: int, minimum: int, timeout_s: float) -> list[int]:
    """Connected nodes, once ``expected`` are there or after ``timeout_s`` (then at least ``minimum``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if len(nodes) < minimum:
        raise TimeoutError(
            f"{len(nodes)} SuperNode(s) connected after {timeout_s:.0f} s "
            f"(federation.flower.connect_timeout_s); aggregation.min_clients={minimum}"
        )
    if len(nodes) < expected:
        logger.warning("Only %d of %d SuperNodes connected; going on without the others", len(nodes), expected)
    return nodes


def _instructions(nodes: Sequence[int], plan: FederationPlan, round_number: int, previous) -> list[Message]:
    parameters = plan.client_parameters()
    return [
        Message(
            records.instruction(round_number, parameters, previous),
            dst_node_id=node,
            message_type=records.TRAIN,
            group_id=str(round_number),
            ttl=plan.round_timeout_s,
        )
        for node in nodes
    ]


def _collect(
    replies: Iterable[Message], plan: FederationPlan, round_number: int
) -> tuple[list[ClientUpload], dict[str, dict], dict[str, list[str]], list[str], int]:
    """Uploads in the partition's client order; what was rejected before aggregation and why."""
    by_client: dict[str, ClientUpload] = {}
    entries: dict[str, dict] = {}  # report entries of pre-rejected replies
    rejected: dict[str, list[str]] = {}
    errors: list[str] = []
    received = 0
    for reply in replies:
        size = records.message_nbytes(reply)
        received += size
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors.append(f"node {node}: {reply.error.reason}")
            logger.warning("Round %d: node %s replied with an error: %s", round_number, node, reply.error.reason)
            continue
        try:
            client_id = records.reply_client_id(reply.content)
        except records.MalformedReply as exc:
            client_id = f"node_{node}"
            rejected[client_id] = [str(exc)]
            entries[client_id] = {"rows": {}, "bytes": records.reply_nbytes(reply.content), "n_images": {}, "numbers": {}}
            logger.warning("Round %d: rejecting the reply of node %s: %s", round_number, node, exc)
            continue
        problem = None
        if client_id not in plan.client_ids:
            problem = f"client id '{client_id}' is not one of this federation's clients {list(plan.client_ids)}"
        elif client_id in by_client or client_id in rejected:
            problem = f"a second reply claims client id '{client_id}' (node {node})"
        if problem is None:
            try:
                by_client[client_id] = records.read_upload(reply.content, client_id, plan.max_upload_bytes)
                continue
            except records.MalformedReply as exc:
                problem = str(exc)
        key = client_id if client_id not in by_client else f"{client_id}@node_{node}"
        rejected.setdefault(key, []).append(problem)
        entries[key] = {"rows": {}, "bytes": records.reply_nbytes(reply.content), "n_images": {}, "numbers": {}}
        logger.warning("Round %d: rejecting the reply of client %s (node %s): %s", round_number, client_id, node, problem)
    missing = [cid for cid in plan.client_ids if cid not in by_client and cid not in rejected]
    if missing:
        logger.warning(
            "Round %d: no reply from client(s) %s within %.0f s (federation.round_timeout_s)%s",
            round_number,
            missing,
            plan.round_timeout_s,
            f"; errors: {errors}" if errors else "",
        )
    uploads = [by_client[cid] for cid in plan.client_ids if cid in by_client]
    return uploads, entries, rejected, missing, received


def run_flower_round(
    grid: Grid,
    plan: FederationPlan,
    round_number: int,
    previous: CategoryBanks | None,
    trust: Mapping[str, dict] | None = None,
) -> tuple[CategoryBanks, dict, dict[str, ClientUpload], RoundTraffic]:
    """One round; ``trust``: the trust scored in round 1, reused from round 2 on (as in-process)."""
    settings = plan.server_settings()
    # Round 1 waits for every site; later rounds go on with the sites still connected.
    expected = len(plan.client_ids) if previous is None else settings.min_clients
    nodes = wait_for_nodes(grid, expected, settings.min_clients, plan.connect_timeout_s)
    messages = _instructions(nodes, plan, round_number, previous)
    sent = sum(records.message_nbytes(m) for m in messages)
    logger.info("Round %d: sent the run configuration to %d SuperNodes (%d bytes)", round_number, len(nodes), sent)
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=plan.round_timeout_s))
    seconds = time.monotonic() - started
    uploads, entries, pre_rejected, missing, received = _collect(replies, plan, round_number)
    result = run_round(
        uploads, settings, round_number=round_number, previous=previous, n_receivers=len(nodes), trust=trust
    )
    report = result.report
    if entries:
        report["uploaded"].update(entries)
        report["uploaded_bytes"] += int(sum(entry["bytes"] for entry in entries.values()))
        report["rejected"] = {**pre_rejected, **report["rejected"]}
    if missing:
        report["no_reply"] = missing
    traffic = RoundTraffic(round_number, len(nodes), len(replies), sent, received, round(seconds, 3))
    logger.info(
        "Round %d: %d replies in %.1f s, %d bytes received; global bank rows %s",
        round_number,
        len(replies),
        seconds,
        received,
        report["bank_rows"],
    )
    return result.bank, report, {u.client_id: u for u in uploads}, traffic


def serve(grid: Grid, plan: FederationPlan, store: RoundStore | None = None) -> FederationResult:
    """Run the plan's rounds on ``grid``; resume after the rounds ``store`` already holds."""
    banks, reports = store.resume(plan) if store is not None else ([], [])
    if banks:
        logger.info("Resuming %s after round %d (persisted global bank)", plan.variant, len(banks))
    result = FederationResult(list(banks), list(reports), [{} for _ in banks], [], resumed_after=len(banks))
    for round_number in range(len(banks) + 1, plan.rounds + 1):
        previous = result.banks[-1] if result.banks else None
        trust = result.reports[-1].get("trust") if result.reports else None
        bank, report, uploads, traffic = run_flower_round(grid, plan, round_number, previous, trust)
        if store is not None:
            store.save(plan, round_number, bank, report)
        result.banks.append(bank)
        result.reports.append(report)
        result.uploads.append(uploads)
        result.traffic.append(traffic)
    return result


# --------------------------------------------------------------------------- persistence


class CatalogRoundStore:
    """Rounds persisted through the Kedro catalog, where the in-process pipeline puts them.

    Round r < R: ``<variant>.global_bank_round_<r>``; round R: ``<variant>.memory_bank``; each
    round's report: ``<variant>.round_<r>_report``; and ``<variant>.flower_checkpoint`` (the
    plan's fingerprint and the last completed round), which a restarted server reads.
    """

    def __init__(self, catalog) -> None:
        self.catalog = catalog

    def _checkpoint(self, plan: FederationPlan) -> str:
        return f"{plan.variant}.flower_checkpoint"

    def resume(self, plan: FederationPlan) -> tuple[list[CategoryBanks], list[dict]]:
        name = self._checkpoint(plan)
        if not self.catalog.exists(name):
            return [], []
        checkpoint = self.catalog.load(name)
        done = int(checkpoint.get("round", 0))
        if checkpoint.get("fingerprint") != plan.fingerprint() or not 0 < done < plan.rounds:
            return [], []
        banks = [
            CategoryBanks.from_arrays(self.catalog.load(f"{plan.variant}.{round_bank(r, plan.rounds)}"))
            for r in range(1, done + 1)
        ]
        reports = [self.catalog.load(f"{plan.variant}.round_{r}_report") for r in range(1, done + 1)]
        return banks, reports

    def save(self, plan: FederationPlan, round_number: int, bank: CategoryBanks, report: dict) -> None:
        self.catalog.save(f"{plan.variant}.{round_bank(round_number, plan.rounds)}", bank.to_arrays())
        self.catalog.save(f"{plan.variant}.round_{round_number}_report", report)
        self.catalog.save(self._checkpoint(plan), {"fingerprint": plan.fingerprint(), "round": round_number})
