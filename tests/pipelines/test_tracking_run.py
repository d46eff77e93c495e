"""MLflow tracking through real Kedro sessions: the store read back against the published metrics.

Every run happens in the throwaway project of conftest.py; its store is that project's own
``mlruns/mlflow.db`` (conf/base/mlflow.yml), never the repo's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("kedro_mlflow")

TRACKED = {"mlflow": {"enabled": True}}


@pytest.fixture(autouse=True)
def _project_store(monkeypatch):
    # The store under test is the project's own: a tracking server named by the environment would win.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(project):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}")


def _runs(client, experiment="fedpatchcore"):
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def tracked_run(kedro_project):
    import os

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        _, catalog = kedro_project.run(TRACKED, pipeline_names=["federated"])
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    client = _client(kedro_project.path)
    runs = _runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    return catalog, client, parents[0], children


@pytest.mark.slow
def test_a_run_is_one_mlflow_run_with_a_nested_run_per_variant(tracked_run):
    catalog, client, parent, children = tracked_run
    assert parent.info.status == "FINISHED" and parent.info.run_name == "kedro run --pipeline federated"
    assert sorted(children) == ["centralized", "federated", "federated_iid"]
    assert all(child.info.status == "FINISHED" for child in children.values())
    # The run's parameters flattened, as this run resolved them (TINY_PARAMS set coreset.ratio 0.2).
    assert parent.data.params["coreset.ratio"] == "0.2"
    assert parent.data.params["federation.partition"] == "category"
    # Each variant's resolved parameters, its own override visible as a tag.
    iid = children["federated_iid"]
    assert iid.data.params["federation.partition"] == "iid"
    assert iid.data.tags["overrides"] == "federation.partition=iid"
    assert children["federated"].data.params["federation.partition"] == "category"
    assert children["federated"].data.tags["overrides"] == "(none)"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "comparison.csv", "comparison.png"} <= artifacts


def _numbers(value, key: str = "") -> dict[str, float]:
    """Every number of a JSON document by its dotted path (written out here, not tracking.py's)."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _numbers(item, f"{key}.{name}" if key else name).items()}
    if isinstance(value, int | float) and value == value:  # NaN: not a number to compare
        return {key: float(value)}
    return {}


@pytest.mark.slow
def test_the_store_holds_the_numbers_metrics_federated_json_publishes(tracked_run, tmp_path):
    catalog, client, _, children = tracked_run
    for variant in ("federated", "centralized", "federated_iid"):
        published = catalog.load(f"metrics_{variant}")
        metrics = children[variant].data.metrics
        assert metrics["mean.image_auroc"] == published["mean"]["image_auroc"]
        for category, values in published["categories"].items():
            assert metrics[f"categories.{category}.image_auroc"] == values["image_auroc"]
            for limit, value in values["aucspro"].items():  # AUC-sPRO at every integration limit
                assert metrics[f"categories.{category}.aucspro.{limit}"] == value
        # Every number of the file is there, and no other.
        assert metrics == _numbers(published)
        copy = client.download_artifacts(children[variant].info.run_id, f"metrics_{variant}.json", str(tmp_path))
        assert json.loads(Path(copy).read_text()) == published
    federated = children["federated"].data.metrics
    assert federated["communication.uploaded_bytes"] > 0
    assert all(f"clients.{cid}.n_images" in federated for cid in ("metal", "textile", "electronics", "qc"))


@pytest.mark.slow
def test_tracking_switched_off_opens_no_run(kedro_project, tracked_run):
    client = tracked_run[1]
    before = len(_runs(client))
    kedro_project.run({"mlflow": {"enabled": False}}, pipeline_names=["ingest"])
    assert len(_runs(client)) == before


@pytest.mark.slow
def test_an_unusable_store_warns_and_the_run_completes(kedro_project, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.tracking"):
        outputs, catalog = kedro_project.run(TRACKED, pipeline_names=["ingest"])
    assert "MLflow tracking is off for the rest of this run (opening the MLflow store failed" in caplog.text
    assert len(catalog.load("dataset_index")) > 0


@pytest.mark.slow
def test_a_read_only_store_warns_and_the_run_completes(kedro_project, tracked_run, monkeypatch, caplog):
    client = tracked_run[1]
    before = len(_runs(client))
    database = (kedro_project.path / "mlruns" / "mlflow.db").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{database}?mode=ro&uri=true")
    with caplog.at_level(logging.WARNING, logger="fedpatchcore.tracking"):
        _, catalog = kedro_project.run(TRACKED, pipeline_names=["ingest"])
    assert "MLflow tracking is off for the rest of this run" in caplog.text
    assert "readonly" in caplog.text.replace("read-only", "readonly").replace(" ", "")
    assert len(catalog.load("dataset_index")) > 0
    assert len(_runs(client)) == before


@pytest.mark.slow
def test_a_context_that_runs_nothing_never_opens_the_store(kedro_project, tmp_path, monkeypatch):
    # kedro viz, notebooks and the Flower apps create a context to read the catalog: no store for them.
    store = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with kedro_project.session(TRACKED) as session:
        context = session.load_context()
        assert not store.parent.exists()
        # What `kedro mlflow ui` reads: the plugin's configuration, with this store.
        assert context.mlflow.server.mlflow_tracking_uri == f"sqlite:///{store}"
        assert (context.mlflow.ui.host, context.mlflow.ui.port) == ("127.0.0.1", "5000")
    assert not store.parent.exists()
