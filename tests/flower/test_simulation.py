"""``federation.engine: flower``: the Kedro pipeline runs its rounds through Flower's simulation
engine (Ray, one simulated SuperNode per client) and publishes what the in-process engine does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.flower import records
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

pytestmark = pytest.mark.flower


def _parameters(tmp_path, extra: dict[str, Any] | None = None, **federation: Any) -> dict[str, Any]:
    return project_parameters(
        merged(
            TINY_PARAMS,
            {
                "extraction": {"scratch_dir": str(tmp_path / "scratch")},
                "comparison": {"enabled": False},
                "federation": {"partition": "iid", "num_clients": 3, **federation},
                **(extra or {}),
            },
        )
    )


def test_flower_engine_publishes_the_same_bank_reports_and_metrics_as_in_process(tiny_dataset, tmp_path):
    published = {}
    for engine in ("inprocess", "flower"):
        # Trust-weighted quotas over a site with noisy images: the ClientApp degrades and measures
        # its images as the Kedro lane does, the server scores trust as the in-process node does.
        extra = {
            "aggregation": {"global_bank_size": 20, "strategy": "trust"},
            "heterogeneity": {"2": {"noise_sigma": 0.05}},
        }
        parameters = _parameters(tmp_path / engine, extra, engine=engine, rounds=2, coverage_quantile=1.0)
        (variant,) = structure.federated_variants(parameters)
        pipe = federated_training(variant) + federated_evaluation(variant)
        names = {n.name for n in pipe.nodes}
        if engine == "flower":
            assert "federated.run_flower_federation" in names and not any(".client_" in n for n in names)
        published[engine] = run_slice(pipe, memory_catalog(parameters, **tiny_dataset))

    inprocess, flower = published["inprocess"], published["flower"]
    assert flower["metrics_federated"] == inprocess["metrics_federated"]  # quality, clients, trust, bytes, rounds
    assert flower["metrics_federated"]["clients"]["2"]["trust"]["quality"] < 1.0  # the noisy site
    traffic = flower["federated.flower_traffic"]
    assert [r["replies"] for r in traffic["rounds"]] == [3, 3]
    # Round 2 sent the round-1 bank to every node: the broadcast dominates what the server sent.
    assert traffic["rounds"][1]["sent_bytes"] > inprocess["metrics_federated"]["communication"]["broadcast_bytes"]


def crash_client_3(message: Message, context, call_next) -> Message:
    """The ClientApp of the third site fails mid-round (Flower returns an error reply)."""
    if int(context.node_config["partition-id"]) == 2:
        raise RuntimeError("site 3 lost power")
    return call_next(message, context)


def poison_client_2(message: Message, context, call_next) -> Message:
    """The second site sends a bank with a NaN (a broken or malicious client)."""
    reply = call_next(message, context)
    if int(context.node_config["partition-id"]) == 1:
        arrays = records.record_to_arrays(reply.content[records.UPLOAD])
        name = next(k for k in arrays if k.startswith("bank/"))
        arrays[name] = arrays[name].copy()
        arrays[name][0, 0] = np.nan
        reply.content[records.UPLOAD] = records.arrays_to_record(arrays)
    return reply


def test_simulated_round_goes_on_without_a_crashed_site_and_rejects_a_poisoned_one(tiny_dataset, tmp_path):
    from fedpatchcore.flower.rounds import FederationPlan
    from fedpatchcore.flower.simulation import simulate
    from fedpatchcore.pipelines.federated import flower_pipeline, nodes

    parameters = _parameters(tmp_path, engine="flower")
    (variant,) = structure.federated_variants(parameters)
    _, _, *tables = nodes.partition_clients(
        tiny_dataset["dataset_index"],
        tiny_dataset["label_noise_pool"],
        parameters["federation"],
        parameters["heterogeneity"],
        parameters["seed"],
        client_ids=variant.client_ids,
    )
    sites = flower_pipeline._write_sites(tmp_path / "sites", variant.client_ids, tuple(tables), tiny_dataset["category_info"])
    result = simulate(FederationPlan.from_variant(variant), sites, mods=[crash_client_3, poison_client_2])

    report = result.reports[0]
    assert report["no_reply"] == ["3"]
    assert any("non-finite" in problem for problem in report["rejected"]["2"])
    bank = CategoryBanks.from_arrays(result.bank.to_arrays())
    assert {str(c) for origins in bank.origin.values() for c in origins} == {"1"}


def test_flower_carries_the_experts_and_fits_what_the_in_process_lanes_fit(tiny_dataset, tmp_path):
    """Statistics beside round 1's upload, the k-means rounds as Flower messages: the same experts."""
    from fedpatchcore.core.experts.fitting import experts_from_arrays
    from fedpatchcore.pipelines.ingest import nodes as ingest_nodes

    extra = {
        "experts": {"enabled": True, "composition": {"clusters": [2, 3], "lloyd_rounds": 1}},
        "validation": {"enabled": True, "fraction": 0.5},
    }
    outputs = {}
    for engine in ("inprocess", "flower"):
        parameters = _parameters(tmp_path / engine, extra, engine=engine, num_clients=2)
        (variant,) = structure.federated_variants(parameters)
        split = ingest_nodes.make_validation_split(tiny_dataset["dataset_index"], parameters["validation"], 0)
        pipe = federated_training(variant) + federated_evaluation(variant)
        keep = ("federated.expert_model",)
        catalog = memory_catalog(parameters, keep=keep, validation_split=split, **tiny_dataset)
        outputs[engine] = run_slice(pipe, catalog, keep=keep)
    inprocess, flower = (experts_from_arrays(outputs[e]["federated.expert_model"]) for e in ("inprocess", "flower"))
    assert set(flower) == set(inprocess) == set(tiny_dataset["category_info"])
    for category in inprocess:
        fed, local = flower[category].to_arrays("x"), inprocess[category].to_arrays("x")
        for key in local:
            np.testing.assert_allclose(fed[key], local[key], rtol=1e-5, atol=1e-8, err_msg=f"{category} {key}")
    published = {e: outputs[e]["metrics_federated"] for e in outputs}
    assert published["flower"]["experts"] == published["inprocess"]["experts"]
    traffic = published["flower"]["communication"]["experts"]
    assert traffic == published["inprocess"]["communication"]["experts"]
    assert len(traffic["kmeans_rounds"]) == 2 and set(traffic["sites"]) == {"client_1", "client_2"}


def test_the_offline_environment_lasts_as_long_as_the_simulation(monkeypatch):
    import os

    from fedpatchcore.flower.simulation import offline_environment

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")  # the user's own choice is kept
    with offline_environment():
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["FLWR_TELEMETRY_ENABLED"] == "1"
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ and os.environ["FLWR_TELEMETRY_ENABLED"] == "1"


def test_flower_sites_extract_each_category_with_its_tuned_network(tiny_dataset, tmp_path):
    """The tuned settings travel to the sites: one category on EfficientNet-Lite2 at 48 px, the
    others on the run's Lite0; the server merges each category at its own dimension, as in-process."""
    from fedpatchcore.core.features.setting import Setting

    tuned = {"parts_tray": Setting("efficientnet_lite2", image_size=(48, 48)).to_params()}
    banks = {}
    for engine in ("inprocess", "flower"):
        parameters = _parameters(tmp_path / engine, {"tuned": tuned}, engine=engine, num_clients=2)
        (variant,) = structure.federated_variants(parameters)
        keep = ("federated.memory_bank", "federated.round_1_report")
        out = run_slice(federated_training(variant), memory_catalog(parameters, keep=keep, **tiny_dataset), keep=keep)
        assert out["federated.round_1_report"]["dim"]["parts_tray"] == 168
        banks[engine] = CategoryBanks.from_arrays(out["federated.memory_bank"]).banks
    flower, inprocess = banks["flower"], banks["inprocess"]
    assert flower["parts_tray"].shape[1] == 168  # lite2: 48 + 120 channels
    assert {b.shape[1] for c, b in flower.items() if c != "parts_tray"} == {152}  # lite0: 40 + 112
    for category, bank in inprocess.items():
        np.testing.assert_array_equal(flower[category], bank, err_msg=category)
