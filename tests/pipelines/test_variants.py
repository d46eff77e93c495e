"""A variant's overrides reach every node of that variant, and variants share what they can.

Pipelines are built from parameters and run in memory with the SequentialRunner (Kedro
starters' style): no session, no files besides the tiny images and feature scratch.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.common.fingerprint import value_at
from fedpatchcore.core.coreset.kcenter import coreset_size
from fedpatchcore.core.federation import client
from fedpatchcore.pipeline_registry import create_pipelines
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

# Keys that shape the pipeline itself (lanes, rounds); a probe value there could not build one.
STRUCTURAL = {
    "federation.partition",
    "federation.num_clients",
    "federation.clients",
    "federation.rounds",
    "federation.engine",
    "experts.enabled",
    "experts.composition.lloyd_rounds",
}
# The probe variant turns the experts on (with one k-means round), so their settings are probed too.
PROBE_STRUCTURE = {"experts": {"enabled": True, "composition": {"lloyd_rounds": 1}}}


def _leaves(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in values.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            paths.extend(_leaves(value, path))
        else:
            paths.append(path)
    return paths


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def test_every_override_reaches_every_node_of_its_variant():
    base = project_parameters()
    overridable = [
        path
        for path in _leaves(base)
        if path[0] not in structure.NOT_OVERRIDABLE and ".".join(path) not in STRUCTURAL
    ]
    overrides: dict[str, Any] = {}
    for path in overridable:
        probe = f"probe:{'.'.join(path)}"
        # An empty mapping (e.g. aggregation.options) is overridden by one entry.
        value = {"probe_key": probe} if isinstance(value_at(base, path), dict) else probe
        overrides = structure.merge_parameters(overrides, _nested(path, value), replaced_whole=())
    overrides = structure.merge_parameters(overrides, PROBE_STRUCTURE, replaced_whole=())
    parameters = project_parameters({"comparison": {"enabled": True, "variants": {"probe": overrides}}})
    probe_parameters = parameters["variants"]["probe"]

    pipelines = create_pipelines(parameters)
    nodes = {n for pipe in pipelines.values() for n in pipe.nodes if n.name.startswith("probe.")}
    read: set[str] = set()
    for node in nodes:
        for name in node.inputs:
            if not name.startswith("params:"):
                continue
            # Every setting of a probe node is the probe variant's own resolved parameter ...
            assert name.startswith("params:variants.probe."), (node.name, name)
            read.add(name.removeprefix("params:variants.probe."))
    # ... and every overridable key is read by some node of the variant, with the probe's value.
    for path in overridable:
        dotted = ".".join(path)
        assert any(dotted == r or dotted.startswith(r + ".") for r in read), f"no probe node reads {dotted}"
        assert "probe:" in str(value_at(probe_parameters, path)), dotted
    # The structural keys: a variant with its own partition gets its own clients and rounds.
    parameters = project_parameters(
        {
            "comparison": {
                "enabled": True,
                "variants": {"probe": {"federation": {"partition": "iid", "num_clients": 2, "rounds": 2}}},
            }
        }
    )
    names = {n.name for n in create_pipelines(parameters)["federated"].nodes}
    assert {"probe.client_1.extract_features", "probe.client_2.extract_features", "probe.aggregate_round_2"} <= names
    assert not any(name.startswith("probe.client_metal") for name in names)


def test_client_lanes_read_only_their_own_images():
    pipelines = create_pipelines(project_parameters())
    extract = [n for n in pipelines["federated"].nodes if n.name.endswith(".extract_features")]
    assert extract
    for node in extract:
        namespace = node.name.removesuffix(".extract_features")
        data_inputs = [name for name in node.inputs if not name.startswith("params:")]
        if namespace == "centralized":
            assert data_inputs == ["centralized.training_images", "category_info"]
        else:
            assert data_inputs == [f"{namespace}.training_images", "category_info"], node.name
        assert "dataset_index" not in node.inputs


@pytest.fixture
def tiny_parameters(tmp_path) -> dict[str, Any]:
    runtime = merged(TINY_PARAMS, {"extraction": {"scratch_dir": str(tmp_path / "scratch")}})
    return runtime


def test_variant_overrides_of_coverage_quantile_and_client_coreset_ratios_take_effect(
    tiny_dataset, tiny_parameters, monkeypatch
):
    runtime = merged(
        tiny_parameters,
        {
            # Round 1 keeps a small global bank, so round 2 has rows left to find uncovered.
            "federation": {"rounds": 2, "coverage_quantile": 1.0},
            "aggregation": {"global_bank_size": 6},
            "comparison": {
                "enabled": True,
                "variants": {
                    "federated_iid": None,
                    "probe": {"federation": {"coverage_quantile": 0.0, "client_coreset_ratios": {"metal": 0.6}}},
                },
            },
        },
    )
    parameters = project_parameters(runtime)
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    extractions = []
    original = client.extract_features
    monkeypatch.setattr(
        client, "extract_features", lambda *a, **k: extractions.append(a[-1].client_id) or original(*a, **k)
    )
    pipe = federated_training(variants["federated"]) + federated_training(variants["probe"])
    reports = ("federated.round_1_report", "probe.round_1_report")
    outputs = run_slice(pipe, memory_catalog(parameters, keep=reports, **tiny_dataset), keep=reports)

    # The probe sees the same images with the same extraction settings: one extraction per client.
    assert sorted(extractions) == sorted(variants["federated"].client_ids)
    main_round_1, probe_round_1 = outputs["federated.round_1_report"], outputs["probe.round_1_report"]
    main_rows, probe_rows = main_round_1["uploaded"]["metal"]["rows"], probe_round_1["uploaded"]["metal"]["rows"]
    patches = main_round_1["uploaded"]["metal"]["n_images"]["metal_plate"] * 8 * 8  # 64 px images, stride 8
    assert main_rows["metal_plate"] == coreset_size(patches, 0.2)
    assert probe_rows["metal_plate"] == coreset_size(patches, 0.6)
    assert probe_round_1["uploaded"]["textile"] == main_round_1["uploaded"]["textile"]  # only metal's ratio changed

    # Quantile 0: a row is covered only if nearer than the closest pair of bank rows -> more is sent.
    main_round_2, probe_round_2 = outputs["federated.round_2_report"], outputs["probe.round_2_report"]
    assert probe_round_2["uploaded_bytes"] > main_round_2["uploaded_bytes"]
    for name in ("federated", "probe"):
        bank = CategoryBanks.from_arrays(outputs[f"{name}.memory_bank"])
        assert set(bank.banks) == set(tiny_dataset["category_info"])  # every category has its bank


def test_iid_run_uploads_less_than_the_raw_images_and_publishes_what_each_client_used(
    tiny_dataset, tiny_parameters
):
    parameters = project_parameters(
        merged(
            tiny_parameters,
            {
                "comparison": {"enabled": False},
                # Tiny images hold few pixels per patch vector: a small coreset keeps uploads below the PNGs.
                "coreset": {"ratio": 0.05},
                "federation": {"partition": "iid", "num_clients": 2},
            },
        )
    )
    (variant,) = structure.federated_variants(parameters)
    pipe = federated_training(variant) + federated_evaluation(variant)
    metrics = run_slice(pipe, memory_catalog(parameters, **tiny_dataset))["metrics_federated"]

    assert metrics["partition"] == "iid"
    communication = metrics["communication"]
    assert 0 < communication["uploaded_bytes"] < communication["raw_image_bytes"]
    assert len(communication["rounds"]) == 1
    index = tiny_dataset["dataset_index"]
    n_train = int((index["split"] == "train").sum())
    assert set(metrics["clients"]) == {"1", "2"}
    assert sum(c["n_images"] for c in metrics["clients"].values()) == n_train
    assert all(c["n_images"] == c["n_images_assigned"] and c["n_images_skipped"] == 0 for c in metrics["clients"].values())
    assert sum(c["uploaded_bytes"] for c in metrics["clients"].values()) == communication["uploaded_bytes"]
