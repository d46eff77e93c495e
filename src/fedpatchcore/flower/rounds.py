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

With ``experts.enabled`` every site sends its experts' statistics beside its first upload, and
the experts' k-means rounds follow the last coreset round (:func:`fit_experts`: centroids out,
Lloyd and histogram sums back, :mod:`fedpatchcore.core.experts.fitting` on both sides).
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
from fedpatchcore.core.experts import fitting
from fedpatchcore.core.experts.model import EXPERTS_BLOCK, ExpertSettings
from fedpatchcore.core.federation.client import CLIENT_BLOCKS
from fedpatchcore.core.federation.server import SERVER_BLOCKS, ServerSettings, run_round
from fedpatchcore.flower import records
from fedpatchcore.flower.site import DATASET_KEYS, TUNED_BLOCK
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
    def experts(self) -> ExpertSettings:
        return ExpertSettings.from_parameters(self.parameters.get(EXPERTS_BLOCK), self.parameters["seed"])

    @property
    def max_upload_bytes(self) -> int | None:
        value = self.flower.get("max_upload_bytes")
        return None if value is None else int(value)

    def server_settings(self) -> ServerSettings:
        return ServerSettings.from_run(self.parameters)

    def client_parameters(self) -> dict[str, Any]:
        """The run configuration every site receives: the client's blocks, and of the dataset
        only how to read a folder (never the dataset's location)."""
        blocks = {name: self.parameters.get(name) for name in (*CLIENT_BLOCKS, EXPERTS_BLOCK, TUNED_BLOCK)}
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
    expert_statistics: dict[str, dict] = field(default_factory=dict)  # round 1: client id -> experts' sums
    expert_model: dict | None = None  # the fitted experts (experts.enabled), flat arrays
    expert_traffic: dict | None = None  # what the experts' fitting sent (arrays' bytes)

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
    replies: Iterable[Message], plan: FederationPlan, round_number: int, experts: dict[str, dict] | None = None
) -> tuple[list[ClientUpload], dict[str, dict], dict[str, list[str]], list[str], int]:
    """Uploads in the partition's client order; what was rejected before aggregation and why.

    ``experts`` (round 1 with ``experts.enabled``) receives each accepted client's experts'
    statistics; a reply without them is rejected.
    """
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
                upload = records.read_upload(reply.content, client_id, plan.max_upload_bytes)
                if experts is not None:
                    statistics = records.read_experts(reply.content, plan.max_upload_bytes)
                    if statistics is None:
                        raise records.MalformedReply("the reply holds no experts' statistics (experts.enabled)")
                    experts[client_id] = statistics
                by_client[client_id] = upload
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
    experts: dict[str, dict] | None = None,
) -> tuple[CategoryBanks, dict, dict[str, ClientUpload], RoundTraffic]:
    """One round; ``trust``: the trust scored in round 1, reused from round 2 on (as in-process);
    ``experts``: receives each client's experts' statistics (round 1, experts.enabled)."""
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
    uploads, entries, pre_rejected, missing, received = _collect(replies, plan, round_number, experts)
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
    """Run the plan's rounds on ``grid``; resume after the rounds ``store`` already holds.

    With ``experts.enabled`` the experts are fitted after the last round (:func:`fit_experts`);
    a resumed run has lost round 1's statistics and runs every round again.
    """
    experts = plan.experts.enabled
    banks, reports = store.resume(plan) if store is not None and not experts else ([], [])
    if banks:
        logger.info("Resuming %s after round %d (persisted global bank)", plan.variant, len(banks))
    result = FederationResult(list(banks), list(reports), [{} for _ in banks], [], resumed_after=len(banks))
    for round_number in range(len(banks) + 1, plan.rounds + 1):
        previous = result.banks[-1] if result.banks else None
        trust = result.reports[-1].get("trust") if result.reports else None
        statistics = result.expert_statistics if experts and round_number == 1 else None
        bank, report, uploads, traffic = run_flower_round(grid, plan, round_number, previous, trust, statistics)
        if store is not None:
            store.save(plan, round_number, bank, report)
        result.banks.append(bank)
        result.reports.append(report)
        result.uploads.append(uploads)
        result.traffic.append(traffic)
    if experts:
        result.expert_model, result.expert_traffic = fit_experts(grid, plan, result.bank, result.expert_statistics)
    return result


def fit_experts(
    grid: Grid, plan: FederationPlan, bank: CategoryBanks, statistics: Mapping[str, Mapping]
) -> tuple[dict, dict]:
    """The experts' k-means rounds over the sites whose statistics were accepted; the fitted
    experts (flat arrays, as ``<variant>.expert_model``) and what the fitting sent.

    Every round needs a reply of every such site (the merged sums must be those of the same
    images throughout): a site that drops out fails the fit.
    """
    settings = plan.experts
    clients = [cid for cid in plan.client_ids if cid in statistics]
    fit = fitting.start_fit([statistics[cid] for cid in clients], bank.banks, settings)
    sent, received = [], []
    parameters = plan.client_parameters()
    for expert_round in range(1, settings.lloyd_rounds + 2):
        message = fit.broadcast()
        nodes = wait_for_nodes(grid, len(clients), len(clients), plan.connect_timeout_s)
        instructions = [
            Message(
                records.expert_instruction(expert_round, parameters, message),
                dst_node_id=node,
                message_type=records.TRAIN,
                group_id=f"experts_{expert_round}",
                ttl=plan.round_timeout_s,
            )
            for node in nodes
        ]
        sent.append(message)
        replies: dict[str, dict] = {}
        for reply in grid.send_and_receive(instructions, timeout=plan.round_timeout_s):
            if reply.has_error():
                raise RuntimeError(f"experts' round {expert_round}: node {reply.metadata.src_node_id} failed: {reply.error.reason}")
            client_id = records.reply_client_id(reply.content)
            arrays = records.read_experts(reply.content, plan.max_upload_bytes)
            if client_id in clients and arrays is not None and client_id not in replies:
                replies[client_id] = arrays
        missing = [cid for cid in clients if cid not in replies]
        if missing:
            raise RuntimeError(f"experts' round {expert_round}: no usable reply from client(s) {missing}")
        ordered = [replies[cid] for cid in clients]
        received.append({f"client_{cid}": replies[cid] for cid in clients})
        if fit.rounds_left > 1:
            fit = fitting.server_round(fit, ordered)
        else:
            experts = fitting.finish(fit, ordered)
    logger.info("Experts fitted for %s from %d sites' statistics", sorted(experts), len(clients))
    sites = {f"client_{cid}": statistics[cid] for cid in clients}
    return fitting.experts_to_arrays(experts), fitting.traffic(sites, received, sent)


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
