"""DP-CVAE rounds over Flower's strategy loop (in-memory grid): FedAvg and the trust-aware strategy
average exactly what the in-process server averages; a malformed reply is left out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedpatchcore.core.federation import generative as fed
from fedpatchcore.core.federation.trust import TrustSettings
from fedpatchcore.core.privacy import generative as gen
from fedpatchcore.flower import generative as flower_gen
from fedpatchcore.flower.rounds import FederationPlan
from tests.core.privacy.test_generative import CATEGORIES, DIM, tiny_data
from tests.flower.fakes import FakeGrid
from tests.pipelines.conftest import TINY_PARAMS, merged, project_parameters

CLIENTS = ("1", "2", "3")
CVAE = {
    "latent_dim": 3,
    "hidden_dim": 16,
    "patches_per_image": 4,
    "position_grid": 0,
    "feature_scale": 1.0,
    "local_epochs": 3,
    "batch_images": 8,
    "learning_rate": 0.01,
    "holdout_fraction": 0.25,
    "report_clip": 50.0,
    "samples_per_category": 64,
    "bank_size": 8,
}


def _plan(averaging: str, drift: float = 0.0, rounds: int = 2) -> FederationPlan:
    parameters = project_parameters(
        merged(
            TINY_PARAMS,
            {
                "comparison": {"enabled": False},
                "federation": {"partition": "iid", "num_clients": 3},
                # Not private, fixed batch order: the two engines must agree to the last bits.
                "privacy": {
                    "mechanism": "dp_cvae",
                    "noise_seed": 0,
                    "reproducible_not_private": True,
                    "dp_cvae": {**CVAE, "averaging": averaging, "rounds": rounds},
                },
                "heterogeneity": {"3": {"encoder_drift": drift}} if drift else {},
            },
        )
    )
    return FederationPlan("federated", CLIENTS, rounds, parameters)


def _settings(plan: FederationPlan, client_id: str) -> fed.GenerativeSettings:
    p = plan.parameters
    return fed.GenerativeSettings.from_parameters(
        client_id,
        privacy=p["privacy"],
        seed=p["seed"],
        heterogeneity=p["heterogeneity"],
    )


def _data(plan: FederationPlan):
    cvae = _settings(plan, "1").cvae
    return {cid: tiny_data(cvae, n_images=40, seed=int(cid)) for cid in CLIENTS}, fed.model_shape(
        DIM, CATEGORIES, cvae
    )


def _node(plan: FederationPlan, client_id: str, data, shape):
    """A site answering with the real client round (its data given, not extracted)."""

    def node(message: Message, context) -> Message:
        round_number = int(message.content.config_records["config"]["server-round"])
        weights = flower_gen.record_weights(message.content.array_records["arrays"])
        update = fed.client_round(data, shape, weights, _settings(plan, client_id), round_number)
        return Message(flower_gen.update_reply(update), reply_to=message)

    return node


def _in_process(plan: FederationPlan, data, shape) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    weights, reports = None, []
    cvae = _settings(plan, "1").cvae
    trust = TrustSettings.from_parameters(plan.parameters["trust"], plan.parameters["seed"])
    for round_number in range(1, cvae.rounds + 1):
        updates = [
            fed.client_round(data[cid], shape, weights, _settings(plan, cid), round_number) for cid in CLIENTS
        ]
        weights, report = fed.average_round(updates, cvae, trust, round_number)
        reports.append(report)
    return weights, reports


@pytest.mark.parametrize(("averaging", "drift"), [("fedavg", 0.0), ("trust", 4.0)])
def test_flower_strategy_averages_what_the_in_process_server_averages(averaging, drift):
    plan = _plan(averaging, drift)
    data, shape = _data(plan)
    grid = FakeGrid({i: _node(plan, cid, data[cid], shape) for i, cid in enumerate(CLIENTS)})
    result = flower_gen.serve_generative(grid, plan, CATEGORIES, DIM)
    expected, reports = _in_process(plan, data, shape)
    for name, value in expected.items():
        np.testing.assert_allclose(result.weights[name], value, rtol=1e-5, atol=1e-6)
    assert len(result.reports) == 2
    for got, want in zip(result.reports, reports, strict=True):
        assert got["client_weights"] == pytest.approx(want["client_weights"])
        assert got["averaging"] == averaging
    if averaging == "trust":
        weights = result.reports[0]["client_weights"]
        assert weights["3"] < min(weights["1"], weights["2"])  # the drifted site counts less
        assert result.reports[0]["trust"]["3"]["consistency"] < 1.0
    # Round 1 sent every node the public initial model, round 2 the average of round 1.
    sent = [
        flower_gen.record_weights(m.content.array_records["arrays"])
        for m in grid.sent
        if m.content.array_records
    ]
    initial = gen.initial_weights(shape, plan.parameters["seed"])
    assert len(sent) == 6
    for name in initial:
        assert all(np.array_equal(s[name], initial[name]) for s in sent[:3])
        assert not any(np.array_equal(s[name], initial[name]) for s in sent[3:])


def test_a_malformed_reply_is_left_out_of_the_average():
    plan = _plan("fedavg", rounds=1)
    data, shape = _data(plan)
    nodes = {i: _node(plan, cid, data[cid], shape) for i, cid in enumerate(CLIENTS[:2])}

    def broken(message: Message, context) -> Message:
        content = RecordDict(
            {
                "client": ConfigRecord({"id": "3"}),
                "metrics": flower_gen.update_reply(fed.ModelUpdate("3", {}, {"a": 1})).metric_records[
                    "metrics"
                ],
            }
        )
        return Message(content, reply_to=message)

    nodes[2] = broken
    result = flower_gen.serve_generative(FakeGrid(nodes), plan, CATEGORIES, DIM)
    assert sorted(result.reports[0]["client_weights"]) == ["1", "2"]
    assert sorted(result.updates[0]) == ["1", "2"]


def test_client_app_dispatches_model_rounds():
    from fedpatchcore.flower import records

    assert flower_gen.is_model_round(RecordDict({"arrays": flower_gen.weights_record({"w": np.zeros(2)})}))
    assert not flower_gen.is_model_round(records.instruction(1, {"seed": 0}, None))
