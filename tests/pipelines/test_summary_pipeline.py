"""Summary variants beside a rows variant, in memory on the tiny dataset: banks, ledger, composed budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kedro.pipeline import Pipeline

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks, unpack
from fedpatchcore.core.privacy.secure_sum import pooled_sum
from fedpatchcore.core.privacy.summary import SummaryCategory, SummarySettings, centres_from_release
from fedpatchcore.pipeline_registry import privacy_ledger_state
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

SUMMARY = {"centres": 8, "rounds": 2, "public_images": 1}
CLIENTS = ("metal", "textile", "electronics", "qc")


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("ledger")
    runtime = merged(
        TINY_PARAMS,
        {
            "extraction": {"scratch_dir": str(tmp_path_factory.mktemp("scratch"))},
            "privacy": {"ledger_dir": str(ledger)},
            "comparison": {
                "enabled": True,
                "centralized": False,
                "variants": {
                    "summary_plain": {"privacy": {"mechanism": "summary", "summary": SUMMARY}},
                    "summary_private": {
                        "privacy": {"mechanism": "summary", "enabled": True, "epsilon": 4.0, "summary": SUMMARY}
                    },
                    "rows_private": {"privacy": {"enabled": True, "epsilon": 1.0}},
                },
            },
        },
    )
    parameters = project_parameters(runtime)
    variants = list(structure.federated_variants(parameters))
    pipe = sum((federated_training(v) + federated_evaluation(v) for v in variants), Pipeline([]))
    pipe += privacy_ledger_state(variants, with_centralized=False)
    keep = [
        *(f"{v}.memory_bank" for v in ("summary_plain", "summary_private")),
        *(f"summary_private.summary_centres_round_{r}" for r in (1, 2)),
        "summary_plain.summary_centres_round_1",
        *(f"summary_private.client_{c}.summary_share_round_{r}" for c in CLIENTS for r in (1, 2)),
        "summary_private.round_1_report",
    ]
    outputs = run_slice(pipe, memory_catalog(parameters, keep=tuple(keep), **tiny_dataset), keep=tuple(keep))
    return outputs, parameters, ledger


def test_a_summary_bank_holds_public_centres_moved_by_the_rounds_with_their_radii(run):
    outputs, _, _ = run
    for name in ("summary_plain", "summary_private"):
        bank = CategoryBanks.from_arrays(outputs[f"{name}.memory_bank"])
        assert set(bank.banks) == {"metal_plate", "woven_fabric", "circuit_board", "parts_tray", "assembly"}
        for category, centres in bank.banks.items():
            assert 1 <= len(centres) <= 8 and centres.shape[1] == 152
            assert bank.radius[category].shape == (len(centres),) and (bank.radius[category] > 0).all()
        metrics = outputs[f"metrics_{name}"]
        assert 0.0 <= metrics["mean"]["image_auroc"] <= 1.0
    # The starting centres are public: the same for every variant, whatever its privacy.
    np.testing.assert_array_equal(
        outputs["summary_plain.summary_centres_round_1"]["centre/metal_plate"],
        outputs["summary_private.summary_centres_round_1"]["centre/metal_plate"],
    )


def test_the_bank_is_post_processing_of_the_pooled_shares(run):
    outputs, parameters, _ = run
    sigma = outputs["metrics_summary_private"]["experiment"]["sigma"]
    settings = SummarySettings.from_parameters(parameters["variants"]["summary_private"]["privacy"]["summary"])
    bank = CategoryBanks.from_arrays(outputs["summary_private.memory_bank"])
    start = unpack(outputs["summary_private.summary_centres_round_1"], ("centre", "radius", "count"), "centres")
    for category in bank.banks:
        released = []
        for r in (1, 2):
            shares = [
                unpack(outputs[f"summary_private.client_{c}.summary_share_round_{r}"], ("share", "n_images"), c)["share"]
                for c in CLIENTS
            ]
            released.append(pooled_sum([s[category] for s in shares if category in s]))
        public = SummaryCategory(start["centre"][category], start["radius"][category], start["count"][category])
        rebuilt = centres_from_release(public, released, sigma, settings)
        assert rebuilt.centres.tobytes() == bank.banks[category].tobytes()
        assert rebuilt.radius.tobytes() == bank.radius[category].tobytes()
    # What the server received: shares only, as many bytes as K·(d + 2) float64 per category held.
    report = outputs["summary_private.round_1_report"]
    assert report["uploaded"]["metal"]["bytes"] == 8 * (152 + 2) * 8


def test_releases_of_the_same_images_compose_and_the_published_epsilon_is_the_composed_one(run):
    outputs, _, ledger = run
    summary, rows = outputs["metrics_summary_private"], outputs["metrics_rows_private"]
    for client_id in CLIENTS:
        alone_summary = summary["clients"][client_id]["privacy"]["release_epsilon"]
        alone_rows = rows["clients"][client_id]["privacy"]["release_epsilon"]
        composed = summary["clients"][client_id]["privacy"]["epsilon"]
        assert 3.9 <= alone_summary <= 4.0 and 0.98 <= alone_rows <= 1.0
        assert composed > alone_summary and composed == rows["clients"][client_id]["privacy"]["epsilon"]
        assert summary["clients"][client_id]["privacy"]["releases_composed"] == 2
        labels = [
            json.loads(line)["label"]
            for line in (ledger / f"{client_id}.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "release"
        ]
        n_categories = len(summary["clients"][client_id]["categories"])
        assert sum(": summary," in label for label in labels) == n_categories  # one release per category held
        assert sum(": rows," in label for label in labels) == n_categories
    # The plain summary released nothing and was charged nothing.
    assert outputs["metrics_summary_plain"]["clients"]["metal"]["privacy"]["enabled"] is False
    assert "composed_epsilon" not in outputs["metrics_summary_plain"].get("experiment", {})


def test_the_privacy_volume_experiment_builds_sharing_one_extraction_per_volume(recwarn):
    from fedpatchcore.config_loader import ProjectConfigLoader
    from fedpatchcore.pipeline_registry import create_pipelines
    from tests.pipelines.conftest import REPO_ROOT

    loader = ProjectConfigLoader(str(REPO_ROOT / "conf"), base_env="base", default_run_env="base", env="privacy_volume")
    parameters = loader["parameters"]
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    assert len(variants) == 31  # 2 mechanisms x 3 volumes x 5 epsilons, and the public centres alone
    assert {v.partition_owner for v in variants.values()} == {"federated", "rows_n24_eps_1", "rows_n240_eps_1"}
    assert variants["summary_n2400_eps_8"].feature_owner == dict.fromkeys(CLIENTS, "federated")
    assert variants["summary_n24_eps_1"].feature_owner == dict.fromkeys(CLIENTS, "rows_n24_eps_1")
    names = {n.name for n in create_pipelines(parameters)["federated"].nodes}
    assert "public_only.summary_public_bank" in names and "public_only.client_qc_summary_share_round_1" not in names
    assert "summary_n2400_eps_8.client_qc_summary_share_round_2" in names
    assert "publish_summary_n2400_eps_8_metrics" in names and "close_privacy_ledger" in names
    assert not [w for w in recwarn if "interrupted" in str(w.message)]
