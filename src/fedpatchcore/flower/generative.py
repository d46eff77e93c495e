"""DP-CVAE federation over Flower (``privacy.mechanism: dp_cvae``): model weights travel as Flower
``ArrayRecord``s and the server averages them with Flower's own strategy machinery.

* :class:`ReportingFedAvg` is Flower's ``FedAvg`` (weights ∝ ``num-examples``, the client's
  training images) that also keeps each round's report (who sent what, each client's share);
* :class:`TrustAwareFedAvg` is a custom strategy over it: before FedAvg's aggregation it writes
  each reply's weight, training images × trust T (:func:`core.federation.generative.averaging_weights`:
  the rule the in-process server uses), into the reply's ``MetricRecord`` under
  ``trust-weighted-examples`` and lets FedAvg average by that key.

Messages (Flower's strategy conventions)::

    server -> client  "arrays": ArrayRecord (global weights; round 1: the public initial model)
                      "config": ConfigRecord {"server-round", "parameters": JSON run configuration,
                                              "categories": JSON list of the run's categories}
    client -> server  "arrays": ArrayRecord (the locally trained weights)
                      "metrics": MetricRecord {"num-examples", "n_images/<category>", "number/<name>"}
                      "client": ConfigRecord {"id"}

A site extracts its features once per run and keeps its training set in the node's context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedpatchcore.core.banks import pack, unpack
from fedpatchcore.core.federation import generative as fed
from fedpatchcore.core.federation.trust import TrustSettings
from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.flower import records

logger = logging.getLogger(__name__)

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT = records.CLIENT
NUM_EXAMPLES = "num-examples"
TRUST_WEIGHT = "trust-weighted-examples"
_STATE_DATA = "fedpatchcore.generative_data"
_STATE_KEY = "fedpatchcore.generative_data_key"


def is_model_round(content: RecordDict) -> bool:
    """Whether an instruction is a round of model training (a strategy's message carries weights)."""
    return ARRAYS in content.array_records


def weights_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value, dtype=np.float32)) for name, value in weights.items()})


def record_weights(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


# --------------------------------------------------------------------------- client side


def update_reply(update: fed.ModelUpdate) -> RecordDict:
    metrics: dict[str, int | float] = {NUM_EXAMPLES: int(update.n_examples)}
    metrics.update(pack(n_images={c: int(n) for c, n in update.n_images.items()}))
    metrics.update(pack(number={k: float(v) for k, v in update.numbers.items()}))
    return RecordDict(
        {
            ARRAYS: weights_record(update.weights),
            METRICS: MetricRecord(
                {
                    k: (int(v) if k.startswith("n_images/") or k == NUM_EXAMPLES else float(v))
                    for k, v in metrics.items()
                }
            ),
            CLIENT: ConfigRecord({"id": str(update.client_id)}),
        }
    )


def read_update(content: RecordDict) -> fed.ModelUpdate:
    """The client's update from its reply; :class:`records.MalformedReply` when it cannot be read."""
    client_id = records.reply_client_id(content)
    try:
        scalars = {
            k: v for k, v in content.metric_records[METRICS].items() if k not in (NUM_EXAMPLES, TRUST_WEIGHT)
        }
        parts = unpack(scalars, ("n_images", "number"), f"the model update of client '{client_id}'")
        return fed.ModelUpdate(
            client_id,
            record_weights(content.array_records[ARRAYS]),
            {c: int(n) for c, n in parts["n_images"].items()},
            {k: float(v) for k, v in parts["number"].items()},
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise records.MalformedReply(f"unreadable model update of client '{client_id}': {exc}") from exc


def site_data(
    site: Any, parameters: Mapping[str, Any], categories: Sequence[str], context: Context
) -> tuple[gen.GenerativeData, gen.ModelShape]:
    """The site's DP-CVAE training set (built on its first round, then kept in the node's context)."""
    from fedpatchcore.flower import site as sites

    cvae = gen.CVAESettings.from_parameters((parameters.get("privacy") or {}).get("dp_cvae"))
    key = sites.local_coreset_key(site, parameters) + json.dumps(sorted(categories))
    state = context.state
    if _STATE_KEY in state.config_records and state.config_records[_STATE_KEY].get("key") == key:
        data = gen.GenerativeData.from_arrays(records.record_to_arrays(state.array_records[_STATE_DATA]))
    else:
        data = sites.build_generative_data(site, parameters, categories)
        state[_STATE_DATA] = records.arrays_to_record(data.to_arrays())
        state[_STATE_KEY] = ConfigRecord({"key": key})
    return data, fed.model_shape(int(data.x.shape[-1]), categories, cvae)


def round_parameters(content: RecordDict) -> dict[str, Any]:
    """The run configuration a model round carries (what the site opens its data with)."""
    return json.loads(str(content.config_records[CONFIG]["parameters"]))


def answer(message: Message, context: Context, site: Any) -> Message:
    """One round at ``site`` (this node's, ``client_app.node_site``): train locally from the
    broadcast weights, reply with the update."""
    config = message.content.config_records[CONFIG]
    round_number = int(config["server-round"])
    parameters = round_parameters(message.content)
    categories = json.loads(str(config["categories"]))
    data, shape = site_data(site, parameters, categories, context)
    settings = fed.GenerativeSettings.from_parameters(
        site.client_id,
        privacy=parameters.get("privacy"),
        seed=parameters["seed"],
        heterogeneity=parameters.get("heterogeneity"),
    )
    weights = record_weights(message.content.array_records[ARRAYS])
    update = fed.client_round(data, shape, weights, settings, round_number)
    return Message(update_reply(update), reply_to=message)


# --------------------------------------------------------------------------- server side


class ReportingFedAvg(FedAvg):
    """Flower's FedAvg over every connected site (no evaluation round) that keeps each round's report."""

    averaging = "fedavg"

    def __init__(self, n_clients: int, trust: TrustSettings, weighted_by_key: str = NUM_EXAMPLES) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n_clients,
            min_available_nodes=n_clients,
            weighted_by_key=weighted_by_key,
        )
        self.trust = trust
        self.reports: list[dict[str, Any]] = []
        self.updates: list[dict[str, fed.ModelUpdate]] = []

    def _readable(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[list[Message], list[fed.ModelUpdate]]:
        kept, updates = [], []
        for reply in replies:
            if reply.has_error():
                logger.warning(
                    "Round %d: node %s replied with an error: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            try:
                updates.append(read_update(reply.content))
            except records.MalformedReply as exc:
                logger.warning(
                    "Round %d: rejecting the reply of node %s: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    exc,
                )
                continue
            kept.append(reply)
        return kept, updates

    def _weigh(
        self, server_round: int, replies: list[Message], updates: list[fed.ModelUpdate]
    ) -> tuple[dict[str, float], dict]:
        """Each client's weight (FedAvg: its num-examples, already in the reply)."""
        return fed.averaging_weights(updates, self.averaging, self.trust, server_round)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies, updates = self._readable(server_round, replies)
        if not replies:
            return None, None
        weights, scores = self._weigh(server_round, replies, updates)
        arrays, metrics = super().aggregate_train(server_round, replies)
        report = fed.round_report(updates, weights, scores, self.averaging, server_round)
        self.reports.append(report)
        self.updates.append({u.client_id: u for u in updates})
        return arrays, metrics


class TrustAwareFedAvg(ReportingFedAvg):
    """FedAvg weighted by training images × trust T = α·Q + β·R + γ·C (from the clients' noised reports)."""

    averaging = "trust"

    def __init__(self, n_clients: int, trust: TrustSettings) -> None:
        super().__init__(n_clients, trust, weighted_by_key=TRUST_WEIGHT)

    def _weigh(
        self, server_round: int, replies: list[Message], updates: list[fed.ModelUpdate]
    ) -> tuple[dict[str, float], dict]:
        weights, scores = super()._weigh(server_round, replies, updates)
        for reply, update in zip(replies, updates, strict=True):
            reply.content.metric_records[METRICS][TRUST_WEIGHT] = float(weights[update.client_id])
        return weights, scores


@dataclass
class GenerativeResult:
    weights: dict[str, np.ndarray]  # the global model after the last round
    reports: list[dict[str, Any]]  # one per round
    updates: list[dict[str, fed.ModelUpdate]]  # per round: what each client sent


def serve_generative(grid: Grid, plan: Any, categories: Sequence[str], dim: int) -> GenerativeResult:
    """Every round of the plan's DP-CVAE training on ``grid`` with Flower's strategy loop."""
    parameters = plan.parameters
    cvae = gen.CVAESettings.from_parameters((parameters.get("privacy") or {}).get("dp_cvae"))
    trust = TrustSettings.from_parameters(parameters.get("trust"), parameters["seed"])
    n_clients = len(plan.client_ids)
    strategy = (
        TrustAwareFedAvg(n_clients, trust) if cvae.averaging == "trust" else ReportingFedAvg(n_clients, trust)
    )
    shape = fed.model_shape(dim, categories, cvae)
    config = ConfigRecord(
        {
            "parameters": json.dumps(plan.client_parameters(), sort_keys=True),
            "categories": json.dumps(sorted(categories)),
        }
    )
    result = strategy.start(
        grid,
        weights_record(gen.initial_weights(shape, parameters["seed"])),
        num_rounds=cvae.rounds,
        timeout=plan.round_timeout_s,
        train_config=config,
    )
    if len(strategy.reports) != cvae.rounds:
        raise RuntimeError(
            f"DP-CVAE training over Flower completed {len(strategy.reports)} of {cvae.rounds} rounds"
        )
    return GenerativeResult(record_weights(result.arrays), strategy.reports, strategy.updates)
