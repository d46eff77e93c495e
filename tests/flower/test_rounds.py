"""The Flower server's rounds on an in-memory grid: same bank as in-process, and the faults.

Faults: a SuperNode that never replies (left out when the round times out), malformed,
oversized, unknown and duplicated replies (rejected and logged, the bank built from the
others), too few usable replies (the round fails, the persisted bank stays), and a server
restarted between rounds (resumes from the last persisted global bank).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from flwr.app import Message, RecordDict

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.federation.aggregation import AggregationError
from fedpatchcore.core.federation.client import LocalCoreset
from fedpatchcore.flower import records, site
from fedpatchcore.flower.client_app import make_client_app
from fedpatchcore.flower.rounds import CatalogRoundStore, FederationPlan, serve
from fedpatchcore.pipelines.federated.pipeline import federated_training
from tests.flower.fakes import FakeGrid, app_node
from tests.pipelines.conftest import (
    REPO_ROOT,
    TINY_PARAMS,
    memory_catalog,
    merged,
    project_parameters,
    run_slice,
)

CLIENTS = ("a", "b", "c")


def _parameters(**overrides: Any) -> dict[str, Any]:
    base = project_parameters(
        merged(
            TINY_PARAMS,
            {"comparison": {"enabled": False}, "federation": {"partition": "iid", "num_clients": 3, "round_timeout_s": 7}},
        )
    )
    return structure.merge_parameters(base, overrides)


def _plan(rounds: int = 1, clients=CLIENTS, **overrides: Any) -> FederationPlan:
    return FederationPlan("federated", tuple(clients), rounds, _parameters(**overrides))


def _local(offset: float, rows: int = 8, dim: int = 4) -> LocalCoreset:
    """A hand-made local coreset: rows spread around ``offset`` in two categories."""
    rng = np.random.default_rng(int(offset * 10) + 1)
    banks = {c: (offset + rng.normal(size=(rows, dim))).astype(np.float32) for c in ("plate", "tray")}
    return LocalCoreset(banks, {c: ["k1", "k2"] for c in banks}, {c: np.zeros((rows, 3), np.int64) for c in banks})


def _site_node(client_id: str, local: LocalCoreset):
    """A node whose site answers every round from ``local`` with the real client functions."""

    def node(message: Message, context) -> Message:
        _, parameters, broadcast = records.read_instruction(message.content)
        upload = site.round_upload(local, client_id, parameters, broadcast)
        return Message(records.upload_reply(upload), reply_to=message)

    return node


def _sites(*clients: str) -> dict[int, Any]:
    return {i: _site_node(cid, _local(3.0 * i)) for i, cid in enumerate(clients)}


def _rows_by_client(bank: CategoryBanks) -> set[str]:
    return {str(c) for origins in bank.origin.values() for c in origins}


# --------------------------------------------------------------------------- same as in-process


def test_flower_round_builds_the_in_process_global_bank(tiny_dataset, tmp_path):
    """Real ClientApps, each reading only its own table, give the in-process pipeline's bank."""
    parameters = _parameters(extraction={"scratch_dir": str(tmp_path / "scratch")})
    (variant,) = structure.federated_variants(parameters)
    outputs = run_slice(federated_training(variant), memory_catalog(parameters, **tiny_dataset))
    expected = CategoryBanks.from_arrays(outputs["federated.memory_bank"])

    from fedpatchcore.pipelines.federated import nodes

    _, _, *tables = nodes.partition_clients(
        tiny_dataset["dataset_index"],
        tiny_dataset["label_noise_pool"],
        parameters["federation"],
        parameters["heterogeneity"],
        parameters["seed"],
        client_ids=variant.client_ids,
    )
    configs = {}
    for node_id, (client_id, table) in enumerate(zip(variant.client_ids, tables, strict=True)):
        table.to_csv(tmp_path / f"{client_id}.csv", index=False)
        (tmp_path / "infos.json").write_text(json.dumps(tiny_dataset["category_info"]))
        configs[node_id] = {"client-id": client_id, "training-images": str(tmp_path / f"{client_id}.csv"),
                            "category-info": str(tmp_path / "infos.json"), "scratch-dir": str(tmp_path / "site")}
    # Nodes connect in any order: the server still merges in the partition's client order.
    order = list(reversed(configs))
    grid = FakeGrid({n: app_node(make_client_app()) for n in order}, configs)
    result = serve(grid, FederationPlan.from_variant(variant))

    assert set(result.bank.banks) == set(expected.banks)
    for category, bank in expected.banks.items():
        np.testing.assert_array_equal(result.bank.banks[category], bank)
        np.testing.assert_array_equal(result.bank.origin[category], expected.origin[category])
        np.testing.assert_array_equal(result.bank.origin_row[category], expected.origin_row[category])
    assert result.reports[0] == outputs["federated.round_1_report"]
    assert grid.timeouts == [7.0]  # federation.round_timeout_s
    assert result.traffic[0].replies == 3 and result.traffic[0].received_bytes > result.reports[0]["uploaded_bytes"]


# --------------------------------------------------------------------------- faults


def test_a_node_that_never_replies_is_left_out_when_the_round_times_out(caplog):
    nodes = _sites(*CLIENTS)
    nodes[2] = lambda message, context: None  # died after receiving the instruction
    plan = _plan(aggregation={"min_clients": 2})
    with caplog.at_level(logging.WARNING):
        result = serve(FakeGrid(nodes), plan)
    assert _rows_by_client(result.bank) == {"a", "b"}
    assert result.reports[0]["no_reply"] == ["c"]
    assert result.bank.n_images == {"plate": 4, "tray": 4}  # two sites of 2 images each
    assert "no reply from client(s) ['c']" in caplog.text


def test_malformed_oversized_unknown_and_duplicate_replies_are_rejected_and_logged(caplog):
    good = _sites("a")[0]

    def tampered(client_id: str, tamper):
        def node(message, context):
            reply = _site_node(client_id, _local(5.0))(message, context)
            tamper(reply.content)
            return reply

        return node

    def nan_rows(content):  # a well-formed record holding a poisoned bank
        bank = content["upload"]["bank/plate"].numpy().copy()
        bank[0, 0] = np.nan
        content["upload"]["bank/plate"] = records.arrays_to_record({"x": bank})["x"]

    def garbage(content):
        content["upload"]["bank/tray"].data = b"\x93NUMPY garbage"

    def oversized(content):
        content["upload"]["bank/huge"] = records.arrays_to_record({"x": np.zeros((4096, 4), np.float32)})["x"]

    def impostor(content):
        content["client"]["id"] = "mallory"

    nodes = {
        0: good,
        1: tampered("b", nan_rows),
        2: tampered("c", garbage),
        3: tampered("d", oversized),
        4: tampered("e", impostor),
        5: tampered("a", lambda content: None),  # a second node claiming to be client a
        6: lambda message, context: Message(RecordDict({}), reply_to=message),  # no client id at all
    }
    plan = _plan(clients=("a", "b", "c", "d", "e"), federation={"flower": {"max_upload_bytes": 20_000}})
    with caplog.at_level(logging.WARNING):
        result = serve(FakeGrid(nodes), plan)
    rejected = result.reports[0]["rejected"]
    assert _rows_by_client(result.bank) == {"a"}
    assert any("non-finite" in problem for problem in rejected["b"])  # run_round's validation
    assert any("unreadable upload" in problem for problem in rejected["c"])
    assert any("max_upload_bytes=20000" in problem for problem in rejected["d"])
    assert any("'mallory' is not one of this federation's clients" in p for p in rejected["mallory"])
    assert any("second reply claims client id 'a'" in p for p in rejected["a@node_5"])
    assert any("does not say which client" in p for p in rejected["node_6"])
    assert result.reports[0]["no_reply"] == ["e"]
    # What was received is accounted for, rejected or not.
    assert result.reports[0]["uploaded"]["d"]["bytes"] > 20_000
    assert caplog.text.count("rejecting") >= 6


def _catalog(root: Path):
    """The project's catalog (conf/base/catalog.yml) with every file under ``root``."""
    from kedro.io import DataCatalog

    config = yaml.safe_load((REPO_ROOT / "conf" / "base" / "catalog.yml").read_text())
    for entry in config.values():
        if isinstance(entry, dict) and "filepath" in entry:
            entry["filepath"] = str(root / entry["filepath"])
    return DataCatalog.from_config(config)


class Crash(RuntimeError):
    pass


def test_restarted_server_resumes_from_the_last_persisted_global_bank(tmp_path):
    plan = _plan(rounds=2, aggregation={"global_bank_size": 6})
    uninterrupted = serve(FakeGrid(_sites(*CLIENTS)), plan)

    catalog = _catalog(tmp_path)
    store = CatalogRoundStore(catalog)
    crashing = FakeGrid(_sites(*CLIENTS))
    crashing.send_and_receive = _crash_on_round(crashing.send_and_receive, 2)
    with pytest.raises(Crash):
        serve(crashing, plan, store)
    assert catalog.load("federated.flower_checkpoint")["round"] == 1
    assert catalog.exists("federated.global_bank_round_1") and not catalog.exists("federated.memory_bank")

    restarted = FakeGrid(_sites(*CLIENTS))
    result = serve(restarted, plan, CatalogRoundStore(_catalog(tmp_path)))
    assert result.resumed_after == 1
    assert {m.metadata.group_id for m in restarted.sent} == {"2"}  # round 1 was not run again
    final = CategoryBanks.from_arrays(catalog.load("federated.memory_bank"))
    for category, bank in uninterrupted.bank.banks.items():
        np.testing.assert_array_equal(final.banks[category], bank)
    assert catalog.load("federated.round_2_report") == uninterrupted.reports[1]
    assert catalog.load("federated.flower_checkpoint")["round"] == 2

    # Other settings: the persisted rounds belong to another run, so the server starts afresh.
    other = _plan(rounds=2, aggregation={"global_bank_size": 4})
    fresh = FakeGrid(_sites(*CLIENTS))
    assert serve(fresh, other, CatalogRoundStore(catalog)).resumed_after == 0
    assert {m.metadata.group_id for m in fresh.sent} == {"1", "2"}


def _crash_on_round(send_and_receive, round_number: int):
    def wrapped(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == str(round_number):
            raise Crash("server killed between rounds")
        return send_and_receive(messages, timeout=timeout)

    return wrapped


def test_too_few_usable_replies_fail_the_round_and_leave_the_persisted_bank(tmp_path):
    plan = _plan(rounds=2, aggregation={"min_clients": 3, "global_bank_size": 6})
    catalog = _catalog(tmp_path)
    nodes = _sites(*CLIENTS)
    grid = FakeGrid(nodes)
    silent_in_round_2 = nodes[2]
    grid.nodes[2] = lambda m, c: None if m.metadata.group_id == "2" else silent_in_round_2(m, c)
    with pytest.raises(AggregationError, match="min_clients=3"):
        serve(grid, plan, CatalogRoundStore(catalog))
    assert catalog.load("federated.flower_checkpoint")["round"] == 1
    assert not catalog.exists("federated.memory_bank")


# --------------------------------------------------------------------------- fingerprints


def test_a_persisted_round_is_resumed_only_for_the_same_run_whatever_the_transport():
    plan = _plan()
    same_run = _plan(federation={"round_timeout_s": 99, "engine": "flower", "flower": {"connect_timeout_s": 5}})
    assert same_run.fingerprint() == plan.fingerprint()  # how rounds travel changes no result
    for other in (
        _plan(aggregation={"strategy": "concatenate"}),  # the server's blocks
        _plan(coreset={"ratio": 0.5}),  # a client's
        _plan(federation={"coverage_quantile": 0.9}),
        _plan(rounds=2),
        _plan(clients=("a", "b")),
    ):
        assert other.fingerprint() != plan.fingerprint()


def test_a_site_keeps_its_local_coreset_while_what_it_depends_on_is_unchanged():
    samples = [Sample("plate", "train", "good", f"{i:03d}", f"/d/{i}.png") for i in range(3)]
    own = site.Site("a", samples, {"plate": None}, Path("/tmp"))
    parameters = _parameters()
    key = site.local_coreset_key(own, parameters)
    # Later rounds' coverage and the server's settings do not change the local coreset ...
    for unchanged in ({"federation": {"coverage_quantile": 0.9}}, {"aggregation": {"strategy": "concatenate"}}):
        assert site.local_coreset_key(own, structure.merge_parameters(parameters, unchanged)) == key
    # ... its coreset settings, its features' settings and its images do.
    for changed in ({"coreset": {"ratio": 0.5}}, {"backbone": {"name": "efficientnet_lite1"}}, {"heterogeneity": {"a": {"noise_sigma": 0.1}}}):
        assert site.local_coreset_key(own, structure.merge_parameters(parameters, changed)) != key
    fewer = site.Site("a", samples[:2], {"plate": None}, Path("/tmp"))
    assert site.local_coreset_key(fewer, parameters) != key
