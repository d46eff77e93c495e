"""The deployment end to end on loopback: a SuperLink and 3 SuperNodes as separate processes,
TLS and SuperNode authentication on, each site reading only its own data folder.

One round on tiny data gives the global bank the in-process pipeline gives for the same
partition and seed; a SuperNode killed mid-round leaves the round to the two others after
``federation.round_timeout_s``. Both write through the project's catalog, where
``kedro run --pipeline evaluate`` reads.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.flower.site import make_site_folder
from scripts.flower_loopback import LoopbackFederation
from tests.pipelines.conftest import TINY_PARAMS, merged

pytestmark = pytest.mark.flower

RUN = merged(
    TINY_PARAMS,
    {
        "comparison": {"enabled": False},
        "federation": {"partition": "iid", "num_clients": 3, "round_timeout_s": 240},
        "aggregation": {"min_clients": 2},
    },
)
# conf/dropout (an environment replaces conf/local): the same run, a dead site waited for 60 s
# (a live site's round takes ~20 s on an idle 2-core machine, three times that under load).
DROPOUT = merged(RUN, {"federation": {"round_timeout_s": 60}})


def _fresh_catalog(kedro_project):
    """A new catalog: a versioned dataset remembers the version it loaded first."""
    with kedro_project.session(RUN) as session:
        return session.load_context().catalog


@pytest.fixture(scope="module")
def reference(kedro_project, tmp_path_factory):
    """The in-process reference bank and report, and one data folder per site (made once)."""
    project = kedro_project.path
    conf = project / "conf"
    (conf / "local" / "parameters.yml").write_text(yaml.safe_dump(RUN))
    (conf / "dropout").mkdir()
    (conf / "dropout" / "parameters.yml").write_text(yaml.safe_dump(DROPOUT))

    # In-process reference: partition, client lanes, server round (same parameters, same seed).
    _, catalog = kedro_project.run(RUN, pipeline_name="federated", to_nodes=["federated.aggregate_round_1"])
    bank = CategoryBanks.from_arrays(catalog.load("federated.memory_bank"))
    report = catalog.load("federated.round_1_report")
    sites_root = tmp_path_factory.mktemp("sites")
    dataset_root = project / "data" / "01_raw" / "synthetic"
    sites = {
        cid: make_site_folder(catalog.load(f"federated.client_{cid}.training_images"), sites_root / cid, dataset_root)
        for cid in ("1", "2", "3")
    }
    return bank, report, sites


@pytest.fixture
def deployment(kedro_project, reference, tmp_path_factory):
    """A running loopback federation of its own for each test (a test may kill a SuperNode), the
    catalog reader, and the in-process reference bank and report."""
    bank, report, sites = reference
    federation = LoopbackFederation(tmp_path_factory.mktemp("loopback"), kedro_project.path, sites, count_bytes=True)
    try:
        federation.start()
        yield federation, lambda: _fresh_catalog(kedro_project), bank, report
    finally:
        federation.stop()


def test_one_round_over_tls_with_node_authentication_gives_the_in_process_bank(deployment):
    federation, fresh_catalog, reference, reference_report = deployment
    versions_before = len(list((federation.project / "data/06_models/federated/memory_bank.npz").iterdir()))
    result = federation.run(timeout_s=400)
    assert "Successfully started run" in result.stdout

    link = federation.log("superlink")
    assert "https://127.0.0.1" in link and "SuperNode authentication is disabled" not in link
    for cid in ("1", "2", "3"):
        assert "Received successfully" in federation.log(f"supernode_{cid}")
    assert len(list((federation.project / "data/06_models/federated/memory_bank.npz").iterdir())) == versions_before + 1
    catalog = fresh_catalog()
    bank = CategoryBanks.from_arrays(catalog.load("federated.memory_bank"))  # the newest version
    assert set(bank.banks) == set(reference.banks)
    for category, rows in reference.banks.items():
        np.testing.assert_array_equal(bank.banks[category], rows)
        np.testing.assert_array_equal(bank.origin[category], reference.origin[category])
    assert catalog.load("federated.round_1_report") == reference_report
    traffic = catalog.load("federated.flower_traffic")
    assert traffic["rounds"][0]["replies"] == 3
    # Through the relay: at least the uploads went up, and the sites received their instructions.
    assert federation.relay.upstream > reference_report["uploaded_bytes"]
    assert federation.relay.downstream > traffic["sent_bytes"]


def test_a_supernode_killed_mid_round_leaves_the_round_to_the_others(deployment):
    federation, fresh_catalog, reference, _ = deployment
    log_before = federation.log("supernode_3")
    run = federation.run_in_background(env="dropout")
    # Site 3 dies once it has its instruction (its log says "Received successfully" once more).
    started = time.monotonic()
    while federation.log("supernode_3").count("Received successfully") <= log_before.count("Received successfully"):
        assert time.monotonic() - started < 300, federation.log("flwr_run")[-3000:]
        time.sleep(0.2)
    federation.kill("supernode_3")
    run.wait(timeout=400)  # `flwr run --stream` returns when the run ends (exit code 0 either way)
    assert "AggregationError" not in federation.log("flwr_run"), federation.log("flwr_run")[-3000:]

    catalog = fresh_catalog()
    report = catalog.load("federated.round_1_report")
    assert report["no_reply"] == ["3"]
    bank = CategoryBanks.from_arrays(catalog.load("federated.memory_bank"))
    assert {str(c) for origins in bank.origin.values() for c in origins} == {"1", "2"}
    assert sum(bank.n_images.values()) < sum(reference.n_images.values())
