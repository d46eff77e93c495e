"""A private variant beside a plain one, in memory on the tiny dataset: budgets, audit, scoring."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.pipeline import Pipeline

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.federation import client
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

BUDGET_KEYS = {"enabled", "epsilon", "delta", "unit", "sigma", "patches_per_image", "clip_norm", "rounds", "accountant"}


@pytest.fixture(scope="module")
def sweep(tiny_dataset, tmp_path_factory):
    runtime = merged(
        TINY_PARAMS,
        {
            "extraction": {"scratch_dir": str(tmp_path_factory.mktemp("scratch"))},
            "federation": {"partition": "iid", "num_clients": 2, "rounds": 2, "coverage_quantile": 1.0},
            "privacy": {
                "ledger_dir": str(tmp_path_factory.mktemp("ledger")),
                "audit": {"enabled": True},
                "canary_audit": {"enabled": True, "trials": 100},
            },
            "comparison": {
                "enabled": True,
                "variants": {
                    "private": {
                        "privacy": {"enabled": True, "epsilon": 1.0, "patches_per_image": 16, "projection_dim": 24}
                    }
                },
            },
        },
    )
    parameters = project_parameters(runtime)
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    extractions = []
    original = client.extract_features
    patch = pytest.MonkeyPatch()
    patch.setattr(client, "extract_features", lambda *a, **k: extractions.append(a[-1].client_id) or original(*a, **k))
    pipe = sum((federated_training(v) + federated_evaluation(v) for v in variants.values()), Pipeline([]))
    keep = ("private.memory_bank", "federated.memory_bank", "private.client_1.privacy_budget")
    outputs = run_slice(pipe, memory_catalog(parameters, keep=keep, **tiny_dataset), keep=keep)
    patch.undo()
    return outputs, extractions, parameters


def test_private_variant_reuses_the_features_and_uploads_only_projected_noised_rows(sweep):
    outputs, extractions, _ = sweep
    assert sorted(extractions) == ["1", "2"]  # one extraction per client for both variants
    private = CategoryBanks.from_arrays(outputs["private.memory_bank"])
    plain = CategoryBanks.from_arrays(outputs["federated.memory_bank"])
    for category, bank in private.banks.items():
        assert bank.shape[1] == 24  # the public projection; scoring projected test patches the same way
        assert plain.banks[category].shape[1] != 24


def test_every_client_publishes_its_budget_and_the_audit_tells_dp_apart(sweep):
    outputs, _, _ = sweep
    plain, private = outputs["metrics_federated"], outputs["metrics_private"]
    for cid in ("1", "2"):
        budget = private["clients"][cid]["privacy"]
        assert set(budget) >= BUDGET_KEYS
        assert budget["enabled"] is True and budget["unit"] == "image" and budget["rounds"] == 1
        assert 0.98 <= budget["epsilon"] <= 1.0 and budget["sigma"] > 0
        assert plain["clients"][cid]["privacy"]["enabled"] is False
    published = dict(private["clients"]["1"]["privacy"])
    assert published.pop("ledger").endswith("1.jsonl")  # where the composed ε was read
    assert outputs["private.client_1.privacy_budget"] == published
    # The attacker holding the raw bank finds the training images; against the DP bank it guesses.
    attack_plain = plain["privacy"]["audit"]
    attack_private = private["privacy"]["audit"]
    assert attack_plain["attack_auc"] > 0.9
    assert attack_private["attack_auc"] < attack_private["dp_auc_bound"] + 2 * attack_private["attack_auc_std_error"]
    assert abs(attack_private["attack_auc"] - 0.5) < 0.3
    assert plain["experiment"]["sigma"] == 0.0 and plain["experiment"]["attack_auc"] == attack_plain["attack_auc"]
    assert private["experiment"]["sigma"] == pytest.approx(private["clients"]["1"]["privacy"]["sigma"])
    assert np.isfinite(private["mean"]["image_auroc"])
    # The canary audit: the unprotected release shows all the audit can show; the DP one stays under its claim.
    canary_plain, canary_private = plain["privacy"]["canary_audit"], private["privacy"]["canary_audit"]
    assert canary_plain["claimed_epsilon"] is None
    assert canary_plain["empirical_epsilon_lb"] == pytest.approx(canary_plain["epsilon_ceiling"])
    assert canary_private["consistent"] and canary_private["empirical_epsilon_lb"] <= canary_private["claimed_epsilon"]
    assert private["experiment"]["empirical_epsilon_lb"] == canary_private["empirical_epsilon_lb"]
    # One private release of these images in this ledger: the composed ε is that release's.
    assert private["experiment"]["composed_epsilon"] == pytest.approx(private["clients"]["1"]["privacy"]["release_epsilon"])
    assert private["experiment"]["private"] is True
