"""The pipeline shape taken from parameters: federated variants, their clients and rounds."""

from __future__ import annotations

import copy

import pytest

from fedpatchcore import structure


def _parameters(**comparison) -> dict:
    return {
        "federation": {
            "partition": "category",
            "num_clients": 3,
            "clients": {"metal": ["metal_plate"], "textile": "woven_fabric", "qc": "all"},
            "rounds": 1,
        },
        "comparison": comparison or {"enabled": False},
    }


def test_main_variant_only_when_comparison_disabled():
    parameters = _parameters(enabled=False, variants={"federated_iid": {"partition": "iid"}})
    variants = structure.federated_variants(parameters)
    assert [v.name for v in variants] == [structure.MAIN_VARIANT]
    main = variants[0]
    assert main.override_parameter is None
    assert main.federation == parameters["federation"]
    assert main.client_ids == ["metal", "textile", "qc"]
    assert main.rounds == 1
    assert not structure.comparison_enabled(parameters)


def test_missing_comparison_section_means_main_variant_only():
    parameters = _parameters()
    del parameters["comparison"]
    assert [v.name for v in structure.federated_variants(parameters)] == ["federated"]
    assert not structure.comparison_enabled(parameters)


def test_comparison_variants_merge_their_overrides():
    parameters = _parameters(
        enabled=True,
        variants={
            "federated_iid": {"partition": "iid", "num_clients": 2},
            "federated_rounds": {"rounds": 3},
            "federated_same": None,  # no overrides: the main settings under another name
        },
    )
    original = copy.deepcopy(parameters)
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    assert list(variants) == ["federated", "federated_iid", "federated_rounds", "federated_same"]
    assert structure.comparison_enabled(parameters)

    iid = variants["federated_iid"]
    assert iid.override_parameter == "comparison.variants.federated_iid"
    assert iid.federation["partition"] == "iid" and iid.federation["num_clients"] == 2
    assert iid.federation["clients"] == parameters["federation"]["clients"]  # other keys kept
    assert iid.client_ids == ["1", "2"]

    assert variants["federated_rounds"].rounds == 3
    assert variants["federated_rounds"].client_ids == ["metal", "textile", "qc"]
    assert variants["federated_same"].federation == parameters["federation"]
    # The main variant is untouched by the overrides, and so are the parameters passed in.
    assert variants["federated"].federation == parameters["federation"]
    assert variants["federated"].rounds == 1
    assert parameters == original


@pytest.mark.parametrize(
    ("partition", "extra", "expected"),
    [
        ("iid", {"num_clients": 4}, ["1", "2", "3", "4"]),
        ("dirichlet", {"num_clients": 2, "alpha": 0.5}, ["1", "2"]),
        ("category", {}, ["metal", "textile", "qc"]),
    ],
)
def test_client_ids_follow_the_layout(partition, extra, expected):
    parameters = _parameters()
    parameters["federation"] = {**parameters["federation"], "partition": partition, **extra}
    assert structure.federated_variants(parameters)[0].client_ids == expected


def test_client_ids_errors():
    parameters = _parameters()
    parameters["federation"] = {"partition": "iid", "num_clients": 0}
    with pytest.raises(ValueError, match="num_clients"):
        structure.federated_variants(parameters)[0].client_ids  # noqa: B018
    parameters["federation"] = {"partition": "category"}
    with pytest.raises(ValueError, match="clients"):
        structure.federated_variants(parameters)[0].client_ids  # noqa: B018
    parameters["federation"] = {"partition": "by_colour", "num_clients": 2}
    with pytest.raises(ValueError):
        structure.federated_variants(parameters)[0].client_ids  # noqa: B018


def test_rounds_default_and_validation():
    parameters = _parameters()
    del parameters["federation"]["rounds"]
    assert structure.federated_variants(parameters)[0].rounds == 1
    parameters["federation"]["rounds"] = "2"  # e.g. from `--params federation.rounds=2`
    assert structure.federated_variants(parameters)[0].rounds == 2
    parameters["federation"]["rounds"] = 0
    with pytest.raises(ValueError, match="at least 1"):
        structure.federated_variants(parameters)[0].rounds  # noqa: B018

    bad_variant = _parameters(enabled=True, variants={"federated_bad": {"rounds": -1}})
    variants = structure.federated_variants(bad_variant)
    assert variants[0].rounds == 1
    with pytest.raises(ValueError, match="federated_bad"):
        variants[1].rounds  # noqa: B018


@pytest.mark.parametrize("reserved", ["federated", "centralized"])
def test_reserved_variant_names_are_rejected(reserved):
    parameters = _parameters(enabled=True, variants={reserved: {"partition": "iid"}})
    with pytest.raises(ValueError, match="reserved"):
        structure.federated_variants(parameters)


def test_reserved_names_are_fine_while_comparison_is_disabled():
    parameters = _parameters(enabled=False, variants={"federated": {"partition": "iid"}})
    assert [v.name for v in structure.federated_variants(parameters)] == ["federated"]


def test_run_parameters_shape_the_next_build(monkeypatch):
    """``use_parameters`` (the hook's entry point) is what ``current_parameters`` returns."""
    monkeypatch.setattr(structure, "_run_parameters", None)
    configured = []
    from kedro.framework import project

    monkeypatch.setattr(project.pipelines, "configure", lambda module: configured.append(module))
    parameters = _parameters(enabled=True, variants={"federated_iid": {"partition": "iid", "num_clients": 2}})
    structure.use_parameters(parameters)
    assert configured == ["fedpatchcore.pipeline_registry"]
    assert structure.current_parameters() == parameters
    assert [v.name for v in structure.federated_variants()] == ["federated", "federated_iid"]
    structure.use_parameters(copy.deepcopy(parameters))  # same parameters: no rebuild
    assert configured == ["fedpatchcore.pipeline_registry"]
