"""The logical experts wired into the pipelines: centralized and federated runs, the fusion rule
chosen on validation images only, few shots, and federated statistics that merge into the
centralized ones. Slices run in memory on the tiny dataset (tests/pipelines/conftest.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpatchcore import structure
from fedpatchcore.core.experts.fitting import merge_statistics
from fedpatchcore.core.experts.fusion import RULES
from fedpatchcore.core.tuning.fusion import REPORTED
from fedpatchcore.pipelines.evaluation import experts as expert_nodes
from fedpatchcore.pipelines.evaluation.pipeline import centralized_evaluation
from fedpatchcore.pipelines.experts.pipeline import centralized_experts
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from fedpatchcore.pipelines.ingest import nodes as ingest_nodes
from fedpatchcore.pipelines.training.pipeline import centralized_training
from tests.core.tuning.test_tuner import _forbid_test_files
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

pytestmark = pytest.mark.slow

EXPERTS_ON = {
    "experts": {"enabled": True, "composition": {"clusters": [2, 4], "lloyd_rounds": 2}},
    "validation": {"enabled": True, "fraction": 0.5},
    "comparison": {"enabled": False},
}


def _parameters(tmp_path, **override):
    runtime = merged(merged(TINY_PARAMS, EXPERTS_ON), {"extraction": {"scratch_dir": str(tmp_path / "scratch")}, **override})
    return project_parameters(runtime)


def _data(parameters, tiny_dataset):
    split = ingest_nodes.make_validation_split(tiny_dataset["dataset_index"], parameters["validation"], parameters["seed"])
    return {**tiny_dataset, "validation_split": split}


def _centralized(parameters, data, keep=()):
    pipe = centralized_training() + centralized_experts(parameters) + centralized_evaluation(True)
    return run_slice(pipe, memory_catalog(parameters, keep=keep, **data), keep=keep)


def _finite(value) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value))


@pytest.fixture(scope="module")
def centralized_run(tiny_dataset, tmp_path_factory):
    parameters = _parameters(tmp_path_factory.mktemp("experts"))
    keep = ("centralized.expert_model", "centralized.faiss_index", "centralized.memory_bank", "centralized.fusion_rules")
    return parameters, _centralized(parameters, _data(parameters, tiny_dataset), keep)


def test_centralized_run_publishes_every_expert_and_the_rule_of_every_category(centralized_run, tiny_dataset):
    _, out = centralized_run
    metrics = out["metrics_centralized"]
    experts = metrics["experts"]
    categories = set(tiny_dataset["category_info"])
    assert set(experts["rules"]) == categories
    assert all(rule["rule"] in RULES for rule in experts["rules"].values())
    for name in REPORTED:
        assert set(experts[name]["categories"]) == categories
        for category, values in experts[name]["categories"].items():
            per_defect = values["image_auroc_per_defect"]
            assert per_defect and all(_finite(v) for v in per_defect.values()), (name, category)
            assert _finite(values["aucspro"]["0.05"])
    # the variant's own metrics are those of the chosen rules
    for category in categories:
        assert metrics["categories"][category]["image_auroc"] == experts["selected"]["categories"][category]["image_auroc"]


def test_fusion_rules_are_chosen_without_opening_a_test_image(centralized_run, tiny_dataset, monkeypatch):
    parameters, out = centralized_run
    data = _data(parameters, tiny_dataset)
    opened = _forbid_test_files(monkeypatch)
    again = expert_nodes.choose_fusion_rules(
        out["centralized.faiss_index"],
        out["centralized.memory_bank"],
        out["centralized.expert_model"],
        data["dataset_index"],
        data["validation_split"],
        data["category_info"],
        parameters["backbone"],
        parameters["extraction"],
        parameters["scoring"],
        parameters["experts"],
        parameters["seed"],
    )
    assert opened and all("/train/" in path for path in opened if path.endswith(".png"))
    assert again == out["centralized.fusion_rules"]


def test_without_a_validation_split_the_choice_says_what_to_turn_on(centralized_run, tiny_dataset):
    parameters, out = centralized_run
    empty = ingest_nodes.make_validation_split(tiny_dataset["dataset_index"], {"enabled": False, "fraction": 0.5}, 0)
    with pytest.raises(ValueError, match="validation.enabled"):
        expert_nodes.choose_fusion_rules(
            out["centralized.faiss_index"], out["centralized.memory_bank"], out["centralized.expert_model"],
            tiny_dataset["dataset_index"], empty, tiny_dataset["category_info"], parameters["backbone"],
            parameters["extraction"], parameters["scoring"], parameters["experts"], parameters["seed"],
        )


def test_one_shot_runs_and_gives_no_nan(tiny_dataset, tmp_path):
    parameters = _parameters(tmp_path, dataset={"train_shots": 1})
    out = _centralized(parameters, _data(parameters, tiny_dataset), keep=("centralized.training_images",))
    assert out["centralized.training_images"].groupby("category").size().eq(1).all()
    experts = out["metrics_centralized"]["experts"]
    for name in REPORTED:
        for values in experts[name]["categories"].values():
            assert _finite(values["image_auroc"]) and all(_finite(v) for v in values["image_auroc_per_defect"].values())


def test_federated_statistics_merge_into_the_centralized_ones(tiny_dataset, tmp_path):
    parameters = _parameters(tmp_path, federation={"partition": "iid", "num_clients": 2})
    (variant,) = structure.federated_variants(parameters)
    keep = ("federated.client_1.expert_statistics", "federated.client_2.expert_statistics", "centralized.expert_statistics")
    pipe = federated_training(variant) + federated_evaluation(variant) + centralized_training() + centralized_experts(parameters)
    out = run_slice(pipe, memory_catalog(parameters, keep=keep, **_data(parameters, tiny_dataset)), keep=keep)
    federated = merge_statistics([out[keep[0]], out[keep[1]]])
    central = merge_statistics([out[keep[2]]])
    assert set(federated) == set(central)
    for category, stats in central.items():
        for part in ("global_", "position"):
            for name in ("n", "s1", "s2", "s3", "s4"):
                np.testing.assert_allclose(
                    getattr(getattr(federated[category], part), name), getattr(getattr(stats, part), name), rtol=1e-4
                )
    published = out["metrics_federated"]
    traffic = published["communication"]["experts"]
    assert traffic["uploaded_bytes"] > traffic["statistics_bytes"] > 0
    assert len(traffic["kmeans_rounds"]) == 3  # lloyd_rounds 2, then the histograms
    assert published["communication"]["uploaded_bytes"] > traffic["uploaded_bytes"]
    assert set(published["experts"]["rules"]) == set(tiny_dataset["category_info"])
