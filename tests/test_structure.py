"""The pipeline shape taken from parameters: variants, their resolved parameters, clients, rounds, sharing."""

from __future__ import annotations

import copy

import pytest

from fedpatchcore import structure


def _parameters(**comparison) -> dict:
    return {
        "seed": 0,
        "backbone": {"name": "efficientnet_lite0"},
        "extraction": {"batch_size": 8},
        "coreset": {"ratio": 0.1, "projection_dim": 128},
        "dataset": {"format": "synthetic"},
        "federation": {
            "partition": "category",
            "num_clients": 3,
            "clients": {"metal": ["metal_plate"], "textile": "woven_fabric", "qc": "all"},
            "rounds": 1,
            "client_coreset_ratios": {"qc": 0.2},
        },
        "aggregation": {"strategy": "federated_coreset", "global_bank_size": None},
        "comparison": comparison or {"enabled": False},
    }


def test_merge_is_deep_except_for_name_keyed_dicts():
    base = _parameters()
    merged = structure.merge_parameters(
        base,
        {
            "federation": {"rounds": 2, "clients": {"solo": "all"}, "client_coreset_ratios": {"solo": 0.5}},
            "coreset": {"ratio": 0.2},
        },
    )
    assert merged["federation"]["rounds"] == 2
    assert merged["federation"]["partition"] == "category"  # untouched keys stay
    assert merged["federation"]["clients"] == {"solo": "all"}  # replaced whole, not added to
    assert merged["federation"]["client_coreset_ratios"] == {"solo": 0.5}
    assert merged["coreset"] == {"ratio": 0.2, "projection_dim": 128}
    assert base == _parameters()  # inputs are not modified


def test_main_variant_only_when_comparison_disabled():
    parameters = _parameters(enabled=False, variants={"federated_iid": {"federation": {"partition": "iid"}}})
    assert set(structure.resolve_variants(parameters)) == {"centralized", "federated"}
    (main,) = structure.federated_variants(parameters)
    assert main.name == structure.MAIN_VARIANT
    assert main.federation == parameters["federation"]
    assert main.client_ids == ["metal", "textile", "qc"]
    assert main.rounds == 1
    assert main.owns_partition and all(main.owns_features(c) for c in main.client_ids)
    assert not structure.comparison_enabled(parameters)


def test_comparison_variants_override_any_block():
    parameters = _parameters(
        enabled=True,
        variants={
            "federated_iid": {"federation": {"partition": "iid", "num_clients": 2}},
            "diverse": {"aggregation": {"strategy": "diversity", "global_bank_size": 50}, "coreset": {"ratio": 0.3}},
            "federated_same": None,  # no overrides: the main settings under another name
        },
    )
    original = copy.deepcopy(parameters)
    resolved = structure.resolve_variants(parameters)
    assert list(resolved) == ["centralized", "federated", "federated_iid", "diverse", "federated_same"]
    assert "comparison" not in resolved["federated"] and "variants" not in resolved["federated"]
    assert resolved["federated_iid"]["federation"]["partition"] == "iid"
    assert resolved["federated_iid"]["federation"]["clients"] == parameters["federation"]["clients"]  # kept
    assert resolved["diverse"]["aggregation"] == {"strategy": "diversity", "global_bank_size": 50}
    assert resolved["diverse"]["coreset"] == {"ratio": 0.3, "projection_dim": 128}
    assert resolved["federated_same"] == resolved["federated"]
    assert parameters == original

    variants = {v.name: v for v in structure.federated_variants(parameters)}
    assert list(variants) == ["federated", "federated_iid", "diverse", "federated_same"]
    assert variants["federated_iid"].client_ids == ["1", "2"]


def test_variants_with_the_same_images_share_partition_and_extraction():
    parameters = _parameters(
        enabled=True,
        variants={
            "concat": {"aggregation": {"strategy": "concatenate"}},  # same clients, same images
            "bigger_coreset": {"coreset": {"ratio": 0.5}},  # same features, another coreset
            "other_backbone": {"backbone": {"name": "wide_resnet50_2"}},  # same images, new features
            "iid": {"federation": {"partition": "iid", "num_clients": 2}},  # other images
        },
    )
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    for name in ("concat", "bigger_coreset", "other_backbone"):
        assert variants[name].partition_owner == "federated", name
    assert variants["concat"].feature_owner == {c: "federated" for c in ("metal", "textile", "qc")}
    assert variants["bigger_coreset"].feature_owner == {c: "federated" for c in ("metal", "textile", "qc")}
    assert set(variants["other_backbone"].feature_owner.values()) == {"other_backbone"}
    assert variants["iid"].owns_partition and set(variants["iid"].feature_owner.values()) == {"iid"}
    # A different server-side setting reuses whole client lanes; another coreset only the features.
    assert set(variants["concat"].lane_owner.values()) == {"federated"}
    assert set(variants["bigger_coreset"].lane_owner.values()) == {"bigger_coreset"}


def test_one_clients_heterogeneity_or_coreset_ratio_only_repeats_that_clients_work():
    parameters = _parameters(
        enabled=True,
        variants={
            "noisy_qc": {"heterogeneity": {"qc": {"noise_sigma": 0.1}}},
            "label_noise_qc": {"heterogeneity": {"qc": {"label_noise": 0.1}}},
            "bigger_qc": {"federation": {"client_coreset_ratios": {"qc": 0.5}}},
        },
    )
    parameters["heterogeneity"] = {}
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    for name in ("noisy_qc", "label_noise_qc"):
        # Its own partition (label noise may swap images) but the other clients' features are shared.
        assert variants[name].owns_partition
        assert variants[name].feature_owner == {"metal": "federated", "textile": "federated", "qc": name}
    assert variants["bigger_qc"].partition_owner == "federated"
    assert variants["bigger_qc"].feature_owner == {c: "federated" for c in ("metal", "textile", "qc")}
    assert variants["bigger_qc"].lane_owner == {"metal": "federated", "textile": "federated", "qc": "bigger_qc"}


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
        structure.federated_variants(parameters)
    parameters["federation"] = {"partition": "category"}
    with pytest.raises(ValueError, match="clients"):
        structure.federated_variants(parameters)
    parameters["federation"] = {"partition": "by_colour", "num_clients": 2}
    with pytest.raises(ValueError):
        structure.federated_variants(parameters)


def test_rounds_default_and_validation():
    parameters = _parameters()
    del parameters["federation"]["rounds"]
    assert structure.federated_variants(parameters)[0].rounds == 1
    parameters["federation"]["rounds"] = 0
    with pytest.raises(ValueError, match="at least 1"):
        structure.federated_variants(parameters)[0].rounds  # noqa: B018

    bad_variant = _parameters(enabled=True, variants={"federated_bad": {"federation": {"rounds": -1}}})
    variants = structure.federated_variants(bad_variant)
    assert variants[0].rounds == 1
    with pytest.raises(ValueError, match="federated_bad"):
        variants[1].rounds  # noqa: B018


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"federated": {}}, "reserved"),
        ({"centralized": {}}, "reserved"),
        ({"a.b": {}}, "letters, digits"),
        ({"v": {"dataset": {"format": "mvtec"}}}, "shared by every variant"),
        ({"v": {"partition": "iid"}}, "unknown parameter block"),  # a federation key, not a block
        ({"v": {"federation": "iid"}}, "must be a mapping"),
        ({"v": ["federation"]}, "must map parameter blocks"),
    ],
)
def test_bad_variants_are_clear_errors(variants, message):
    with pytest.raises(ValueError, match=message):
        structure.resolve_variants(_parameters(enabled=True, variants=variants))


def test_reserved_names_are_fine_while_comparison_is_disabled():
    parameters = _parameters(enabled=False, variants={"federated": {"federation": {"partition": "iid"}}})
    assert [v.name for v in structure.federated_variants(parameters)] == ["federated"]


def test_a_private_variant_shares_the_extraction_but_not_the_client_lane():
    parameters = _parameters(
        enabled=True,
        variants={
            "private": {"privacy": {"enabled": True, "epsilon": 1.0}},
            "more_private": {"privacy": {"enabled": True, "epsilon": 0.5}},
            # Disabled releases are one thing whatever their other keys; the audit changes no release.
            "off_patch": {"privacy": {"unit": "patch", "epsilon": 8.0}},
            "audited": {"privacy": {"audit": {"enabled": True}}},
        },
    )
    parameters["privacy"] = {"enabled": False, "epsilon": 1.0, "unit": "image", "audit": {"enabled": False}}
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    clients = ("metal", "textile", "qc")
    for name in ("private", "more_private", "off_patch", "audited"):
        assert variants[name].feature_owner == dict.fromkeys(clients, "federated"), name
    assert variants["private"].lane_owner == dict.fromkeys(clients, "private")
    assert variants["more_private"].lane_owner == dict.fromkeys(clients, "more_private")
    assert variants["off_patch"].lane_owner == dict.fromkeys(clients, "federated")
    assert variants["audited"].lane_owner == dict.fromkeys(clients, "federated")


def test_a_variant_may_change_only_the_training_shots_of_the_dataset():
    parameters = _parameters(enabled=True, variants={"shots_1": {"dataset": {"train_shots": 1}}})
    resolved = structure.resolve_variants(parameters)
    assert resolved["shots_1"]["dataset"]["train_shots"] == 1
    assert resolved["shots_1"]["dataset"]["format"] == resolved["federated"]["dataset"]["format"] == "synthetic"
    # fewer images: the variant needs its own partition and extraction
    shots, main = structure.federated_variants(parameters)[1], structure.federated_variants(parameters)[0]
    assert shots.partition_owner == "shots_1" and main.partition_owner == "federated"
    with pytest.raises(ValueError, match=r"cannot be overridden \(but for \['train_shots'\]\)"):
        structure.resolve_variants(
            _parameters(enabled=True, variants={"v": {"dataset": {"train_shots": 1, "root": "elsewhere"}}})
        )


def test_unknown_block_message_lists_only_blocks_a_variant_may_override():
    parameters = _parameters(enabled=True, variants={"v": {"partition": "iid"}})
    with pytest.raises(ValueError, match="unknown parameter block") as error:
        structure.resolve_variants(parameters)
    listed = str(error.value).split("one of ")[1]
    assert "'federation'" in listed and "'coreset'" in listed and "'seed'" in listed
    assert "'dataset'" not in listed and "'comparison'" not in listed  # shared by every variant


def test_round_bank_names_the_last_rounds_bank_the_memory_bank():
    assert [structure.round_bank(r, 3) for r in (1, 2, 3)] == ["global_bank_round_1", "global_bank_round_2", "memory_bank"]
    assert structure.round_bank(1, 1) == "memory_bank"


def test_fairness_shapes_a_lane_only_when_it_shapes_the_clients_coreset():
    parameters = _parameters(
        enabled=True,
        variants={
            "client_groups": {"fairness": {"mode": "equal", "group_by": "client"}},  # server-side only
            "category_groups": {"fairness": {"mode": "equal", "group_by": "category"}},  # splits a client's budget
            "one_budget": {"coreset": {"total_size": 40}},  # one budget over a client's categories
        },
    )
    parameters["fairness"] = {"mode": "none", "group_by": "category", "min_share": 0.1}
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    clients = ("metal", "textile", "qc")
    assert variants["client_groups"].lane_owner == dict.fromkeys(clients, "federated")
    assert variants["category_groups"].lane_owner == dict.fromkeys(clients, "category_groups")
    assert variants["one_budget"].lane_owner == dict.fromkeys(clients, "one_budget")
    for name in variants:
        assert variants[name].feature_owner == dict.fromkeys(clients, "federated"), name
