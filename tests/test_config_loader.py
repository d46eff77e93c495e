"""Parameters merge the way a user expects: environment over base key by key, --params over both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedpatchcore.config_loader import ProjectConfigLoader

BASE = {
    "seed": 0,
    "dataset": {"format": "synthetic", "root": "data/01_raw/synthetic", "categories": "all"},
    "federation": {
        "partition": "category",
        "num_clients": 4,
        "clients": {"metal": ["metal_plate"], "qc": "all"},
    },
    "comparison": {"enabled": True, "variants": {"federated_iid": {"federation": {"partition": "iid"}}}},
}


def _conf(tmp_path: Path, **environments: dict) -> Path:
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "base" / "parameters.yml").write_text(yaml.safe_dump(BASE))
    (conf / "local").mkdir()
    for env, parameters in environments.items():
        (conf / env).mkdir(exist_ok=True)
        (conf / env / "parameters.yml").write_text(yaml.safe_dump(parameters))
    return conf


def _parameters(conf: Path, env: str | None = None, runtime: dict | None = None) -> dict:
    loader = ProjectConfigLoader(str(conf), base_env="base", default_run_env="local", env=env, runtime_params=runtime)
    return loader["parameters"]


@pytest.mark.parametrize("with_local_file", [False, True])
def test_params_mean_the_same_with_or_without_a_local_file(tmp_path, with_local_file):
    # The reported case: `seed: 0` in conf/local made `--params dataset.format=...` drop dataset.categories.
    conf = _conf(tmp_path, **({"local": {"seed": 0}} if with_local_file else {}))
    parameters = _parameters(conf, runtime={"dataset": {"format": "mvtec", "root": "/data/x"}, "federation": {"partition": "iid"}})
    assert parameters["dataset"] == {"format": "mvtec", "root": "/data/x", "categories": "all"}
    assert parameters["federation"]["partition"] == "iid"
    assert parameters["federation"]["num_clients"] == 4  # still there for the iid partition


def test_environment_merges_into_base_key_by_key(tmp_path):
    conf = _conf(tmp_path, experiment={"federation": {"num_clients": 5}, "seed": 3})
    parameters = _parameters(conf, env="experiment")
    assert parameters["seed"] == 3
    assert parameters["federation"]["num_clients"] == 5
    assert parameters["federation"]["partition"] == "category"  # not set by the environment: kept
    assert parameters["dataset"] == BASE["dataset"]


def test_environment_replaces_name_keyed_dicts_whole(tmp_path):
    conf = _conf(
        tmp_path,
        experiment={
            "federation": {"clients": {"engine": ["engine_wiring"], "qc": "all"}},
            "comparison": {"variants": {}},
        },
    )
    parameters = _parameters(conf, env="experiment")
    assert parameters["federation"]["clients"] == {"engine": ["engine_wiring"], "qc": "all"}  # no 'metal' left over
    assert parameters["comparison"] == {"enabled": True, "variants": {}}
    assert set(parameters["variants"]) == {"centralized", "federated"}


def test_params_add_to_name_keyed_dicts_the_environment_does_not_set(tmp_path):
    conf = _conf(tmp_path, experiment={"seed": 1})
    runtime = {"comparison": {"variants": {"two_rounds": {"federation": {"rounds": 2}}}}}
    parameters = _parameters(conf, env="experiment", runtime=runtime)
    assert set(parameters["comparison"]["variants"]) == {"federated_iid", "two_rounds"}


def test_every_variant_gets_its_resolved_parameters(tmp_path):
    parameters = _parameters(_conf(tmp_path), runtime={"federation": {"rounds": 2}})
    variants = parameters["variants"]
    assert set(variants) == {"centralized", "federated", "federated_iid"}
    assert variants["federated_iid"]["federation"]["partition"] == "iid"
    assert variants["federated_iid"]["federation"]["rounds"] == 2  # --params reach every variant
    assert variants["federated"]["federation"]["partition"] == "category"


def test_variants_is_a_reserved_parameter(tmp_path):
    conf = _conf(tmp_path, local={"variants": {"x": {}}})
    with pytest.raises(ValueError, match="reserved"):
        _parameters(conf)


def test_project_parameters_read_the_environment_kedro_run_would(tmp_path, monkeypatch):
    from fedpatchcore.config_loader import project_parameters

    conf = _conf(tmp_path, local={"seed": 4}, experiment={"seed": 7})
    assert project_parameters(conf)["seed"] == 4  # conf/local by default
    monkeypatch.setenv("KEDRO_ENV", "experiment")
    assert project_parameters(conf)["seed"] == 7  # KEDRO_ENV, as `kedro run` reads it
    assert project_parameters(conf, env="local", runtime_params={"seed": 9})["seed"] == 9  # --params win
    monkeypatch.chdir(tmp_path)
    assert project_parameters()["seed"] == 7  # ./conf


def test_the_run_parameters_are_the_sessions_once_it_hands_them_over(tmp_path, monkeypatch):
    from fedpatchcore import config_loader

    monkeypatch.setattr(config_loader, "_run_parameters", None)
    monkeypatch.chdir(_conf(tmp_path, local={"seed": 4}).parent)
    assert config_loader.run_parameters()["seed"] == 4  # no run yet: the project's own conf
    session = {**BASE, "seed": 11}
    assert config_loader.use_run_parameters(session) is True  # new parameters: pipelines are rebuilt
    session["seed"] = 12  # the session's dict changing afterwards changes nothing here
    assert config_loader.run_parameters()["seed"] == 11
    assert config_loader.use_run_parameters({**BASE, "seed": 11}) is False  # the same again: no rebuild
