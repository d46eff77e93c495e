"""The registered pipelines, run end to end through a real KedroSession on tiny synthetic images.

Every run happens in a throwaway project (see conftest.py); the tiny dataset is generated once
per module and reused (the generator caches by manifest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.synthetic import SYNTHETIC_CATEGORIES
from tests.pipelines.conftest import REPO_ROOT

SPRO_LIMITS = {"0.01", "0.05", "0.1", "0.3", "1.0"}
FEDERATED_ONLY = {"comparison": {"enabled": False}}
# Tiny images hold few pixels per patch vector: keep coresets small so uploads stay below
# the raw PNG bytes they summarise.
SMALL_CORESET = {"coreset": {"ratio": 0.05}}


def _latest_json(folder: Path) -> dict:
    versions = sorted(folder.iterdir())
    return json.loads((versions[-1] / folder.name).read_text())


def _in_unit_interval(value) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


@pytest.fixture(scope="module")
def centralized_run(kedro_project):
    outputs, catalog = kedro_project.run(pipeline_names=["centralized"])
    # The versions this run left: tests run in a shuffled order, and one of them re-runs scoring.
    return outputs, catalog, kedro_project.versions("data/08_reporting/metrics_centralized.json")


@pytest.mark.slow
def test_catalog_paths_resolve_inside_the_throwaway_project(kedro_project, centralized_run):
    _, catalog, _ = centralized_run
    for name in ("dataset_index", "centralized.anomaly_maps", "metrics_centralized"):
        filepath = Path(str(catalog.get(name)._describe()["filepath"]))
        assert filepath.is_absolute() and kedro_project.path in filepath.parents, (name, filepath)
    assert (kedro_project.path / "data" / "01_raw" / "synthetic" / "synthetic_manifest.json").is_file()
    assert (kedro_project.path / "data" / "02_intermediate" / "dataset_index.csv").is_file()


@pytest.mark.slow
def test_centralized_run_publishes_versioned_metrics(kedro_project, centralized_run):
    _, _, versions = centralized_run
    assert len(versions) == 1
    folder = kedro_project.path / "data/08_reporting/metrics_centralized.json"
    metrics = json.loads((folder / versions[0] / folder.name).read_text())  # what this run published

    assert set(metrics["categories"]) == set(SYNTHETIC_CATEGORIES)
    for category, values in {**metrics["categories"], "mean": metrics["mean"]}.items():
        assert isinstance(values["image_auroc"], float) and 0.0 <= values["image_auroc"] <= 1.0, category
        assert _in_unit_interval(values["pixel_auroc"]), category
        assert _in_unit_interval(values["f1"]), category
        if values["aucspro"] is not None:
            assert set(values["aucspro"]) == SPRO_LIMITS, category
            assert all(_in_unit_interval(v) for v in values["aucspro"].values()), category
    # The synthetic dataset has pixel ground truth: those metrics are computed, not left out.
    assert all(v["pixel_auroc"] is not None for v in metrics["categories"].values())
    assert metrics["partition"] == "centralized"
    assert metrics["clients"]["all"]["n_images"] == 4 * len(SYNTHETIC_CATEGORIES)
    assert metrics["clients"]["all"]["privacy"]["enabled"] is False  # privacy is off by default


@pytest.mark.slow
def test_centralized_maps_are_raw_and_scores_are_their_maxima(centralized_run):
    _, catalog, _ = centralized_run
    maps = catalog.load("centralized.anomaly_maps")
    scores = catalog.load("centralized.image_scores").set_index("key")
    index = catalog.load("dataset_index")
    info = catalog.load("category_info")

    test_keys = index.loc[index["split"] == "test"].groupby("category")["key"].apply(set).to_dict()
    assert set(maps) == set(test_keys)
    for category, entry in maps.items():
        width, height = info[category]["image_size"]
        assert set(entry["keys"]) == test_keys[category] and len(entry["keys"]) == len(test_keys[category])
        assert entry["maps"].shape == (len(entry["keys"]), height, width)
        maxima = np.asarray(entry["maps"]).reshape(len(entry["keys"]), -1).max(axis=1)
        np.testing.assert_allclose(scores.loc[entry["keys"], "image_score"], maxima, rtol=1e-5)
        # Normalising per image would give every map the same maximum (AUC-ROC collapses).
        assert np.ptp(maxima) > 1e-3 * maxima.max(), category
        assert entry["maps"].min() >= 0.0
    assert len(scores) == sum(len(k) for k in test_keys.values())


@pytest.mark.slow
def test_scoring_reruns_alone_from_the_persisted_bank(kedro_project, centralized_run):
    first = _latest_json(kedro_project.path / "data/08_reporting/metrics_centralized.json")
    bank_versions = kedro_project.versions("data/06_models/centralized/memory_bank.npz")
    features = kedro_project.path / "data/04_feature/centralized/patch_features/features.json"
    features_mtime = features.stat().st_mtime_ns

    from kedro.framework.project import pipelines

    assert "centralized.score_test_images" in {n.name for n in pipelines["centralized"].nodes}
    metrics_versions = kedro_project.versions("data/08_reporting/metrics_centralized.json")
    map_versions = kedro_project.versions("data/07_model_output/centralized/anomaly_maps")
    kedro_project.run(pipeline_names=["centralized"], from_nodes=["centralized.score_test_images"])

    assert len(kedro_project.versions("data/08_reporting/metrics_centralized.json")) == len(metrics_versions) + 1
    assert len(kedro_project.versions("data/07_model_output/centralized/anomaly_maps")) == len(map_versions) + 1
    # Nothing upstream of scoring ran again.
    assert kedro_project.versions("data/06_models/centralized/memory_bank.npz") == bank_versions
    assert features.stat().st_mtime_ns == features_mtime

    second = _latest_json(kedro_project.path / "data/08_reporting/metrics_centralized.json")
    assert second.keys() == first.keys()
    for category, values in first["categories"].items():
        assert second["categories"][category]["image_auroc"] == pytest.approx(values["image_auroc"])
        assert second["categories"][category]["pixel_auroc"] == pytest.approx(values["pixel_auroc"])
        assert second["categories"][category]["aucspro"] == pytest.approx(values["aucspro"])


@pytest.mark.slow
def test_category_layout_with_two_rounds(kedro_project):
    # A global bank smaller than the uploads leaves rows uncovered, so round 2 has uploads to merge.
    params = {
        **FEDERATED_ONLY,
        **SMALL_CORESET,
        "federation": {"partition": "category", "rounds": 2, "coverage_quantile": 0.0},
        "aggregation": {"global_bank_size": 8},
    }
    outputs, catalog = kedro_project.run(params, pipeline_names=["federated"])
    client_ids = set(structure.federated_variants(catalog.load("parameters"))[0].client_ids)
    assert client_ids == {"metal", "textile", "electronics", "qc"}

    report = catalog.load("federated.round_2_report")
    assert report["round"] == 2
    assert set(report["uploaded"]) <= client_ids  # the previous bank is not counted as an upload
    assert report["uploaded_bytes"] > 0  # clients did send rows the round-1 bank missed
    assert (kedro_project.path / "data/06_models/federated/global_bank_round_1.npz").is_file()

    metrics = catalog.load("metrics_federated")
    assert [r["round"] for r in metrics["communication"]["rounds"]] == [1, 2]
    assert metrics["communication"]["broadcast_bytes"] > 0

    bank = CategoryBanks.from_arrays(catalog.load("federated.memory_bank"))
    assert set(bank.banks) == set(SYNTHETIC_CATEGORIES)
    for category, rows in bank.banks.items():
        labels = set(bank.origin[category].tolist())
        assert len(bank.origin[category]) == len(rows) == 8
        assert labels <= client_ids, (category, labels)  # never "previous_round"
    # The category layout: metal_plate rows come only from its specialist and the QC client.
    assert set(bank.origin["metal_plate"].tolist()) <= {"metal", "qc"}


def test_default_client_lanes_are_namespaced():
    from fedpatchcore.config_loader import project_parameters
    from fedpatchcore.pipeline_registry import create_pipelines

    configured = yaml.safe_load((REPO_ROOT / "conf/base/parameters_federated.yml").read_text())
    client_ids = list(configured["federation"]["clients"])
    assert client_ids

    federated = create_pipelines(project_parameters(REPO_ROOT / "conf"))["federated"]
    names = {n.name for n in federated.nodes}
    for cid in client_ids:
        assert f"federated.client_{cid}.extract_features" in names
        assert f"federated.client_{cid}.select_coreset" in names

    qc = federated.only_nodes_with_namespaces(["federated.client_qc"])
    assert sorted(n.name for n in qc.nodes) == [
        "federated.client_qc.extract_features",
        "federated.client_qc.prepare_upload_round_1",
        "federated.client_qc.select_coreset",
    ]
    # The lane reads its own images and shared facts only; its datasets carry its namespace.
    data_inputs = {name for name in qc.inputs() if not name.startswith("params:")}
    assert data_inputs == {"category_info", "federated.client_qc.training_images"}
    assert qc.outputs() == {
        "federated.client_qc.upload_round_1",
        "federated.client_qc.heterogeneity_manifest",
        "federated.client_qc.privacy_budget",
    }
    assert "params:variants.federated.backbone" in qc.inputs()
    assert "params:variants.federated.coreset" in qc.inputs()
