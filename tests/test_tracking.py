"""The pieces of MLflow tracking that need no store: flattening, names, the store path."""

from __future__ import annotations

from fedpatchcore import tracking


def test_parameters_flatten_to_one_string_per_leaf():
    params = {"coreset": {"ratio": 0.1, "max_size": None}, "federation": {"clients": {"qc": "all"}}, "seed": 0}
    assert tracking.param_values(params) == {
        "coreset.ratio": "0.1",
        "coreset.max_size": "None",
        "federation.clients.qc": "all",
        "seed": "0",
    }
    assert tracking.param_values({"heterogeneity": {}}) == {"heterogeneity": "{}"}  # an empty block stays visible


def test_long_parameter_values_are_cut_to_mlflows_limit():
    values = tracking.param_values({"long": "x" * (tracking.MAX_PARAM_LENGTH + 5)})
    assert len(values["long"]) == tracking.MAX_PARAM_LENGTH


def test_every_published_number_becomes_a_metric_and_nothing_else():
    published = {
        "mean": {"image_auroc": 0.75, "aucspro": {"0.05": 0.5, "1.0": 0.9}, "pixel_auroc": None},
        "communication": {"uploaded_bytes": 1024},
        "clients": {"1": {"privacy": {"epsilon": 2.0, "enabled": True}}},
        "skipped_test_images": [{"path": "a.png"}],
        "fairness": {"worst_group": "metal_plate"},
    }
    assert tracking.numeric_leaves(published) == {
        "mean.image_auroc": 0.75,
        "mean.aucspro.0.05": 0.5,
        "mean.aucspro.1.0": 0.9,
        "communication.uploaded_bytes": 1024.0,
        "clients.1.privacy.epsilon": 2.0,
        "clients.1.privacy.enabled": 1.0,
    }


def test_an_environment_is_an_experiment_of_its_own():
    assert tracking.experiment_name(None) == "fedpatchcore"
    assert tracking.experiment_name("local") == "fedpatchcore"
    assert tracking.experiment_name("robustness") == "fedpatchcore/robustness"
    assert tracking.experiment_name("robustness", configured="sweeps") == "sweeps"


def test_a_relative_sqlite_store_lives_in_the_project_folder(tmp_path):
    uri = tracking.store_uri("sqlite:///mlruns/mlflow.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert not (tmp_path / "mlruns").exists()  # resolving a URI opens nothing
    tracking.make_store_folder(uri)
    assert (tmp_path / "mlruns").is_dir()
    absolute = f"sqlite:///{tmp_path}/elsewhere.db"  # sqlite:////abs/path: left as it is
    assert tracking.store_uri(absolute, "/nowhere") == absolute
    read_only = f"sqlite:///file:{tmp_path}/mlflow.db?mode=ro&uri=true"  # an SQLite URI: left as it is
    assert tracking.store_uri(read_only, "/nowhere") == read_only
    assert tracking.store_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_a_variants_own_overrides_and_labels_are_told_apart():
    parameters = {
        "comparison": {
            "labels": {"federated": {"strategy": "federated_coreset"}},
            "variants": {"iid": {"labels": {"partition": "iid"}, "federation": {"partition": "iid", "num_clients": 5}}},
        }
    }
    assert tracking.variant_overrides(parameters, "iid") == (
        {"federation.partition": "iid", "federation.num_clients": "5"},
        {"partition": "iid"},
    )
    assert tracking.variant_overrides(parameters, "federated") == ({}, {"strategy": "federated_coreset"})
