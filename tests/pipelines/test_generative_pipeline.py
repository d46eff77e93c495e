"""privacy.mechanism: dp_cvae beside a rows variant, in memory on the tiny dataset: shared
features, the budget, rounds, the sampled bank scored like any other, fidelity published."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.pipeline import Pipeline

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.federation import client
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

DP_CVAE = {
    "latent_dim": 4,
    "hidden_dim": 16,
    "patches_per_image": 8,
    "position_grid": 2,
    "rounds": 2,
    "local_epochs": 2,
    "batch_images": 4,
    "holdout_fraction": 0.25,
    "samples_per_category": 64,
    "bank_size": 16,
    "fidelity_max_rows": 200,
}


@pytest.fixture(scope="module")
def generative_run(tiny_dataset, tmp_path_factory):
    runtime = merged(
        TINY_PARAMS,
        {
            "extraction": {"scratch_dir": str(tmp_path_factory.mktemp("scratch"))},
            "federation": {"partition": "iid", "num_clients": 2},
            "privacy": {
                "noise_seed": 0,
                "reproducible_not_private": True,
                "ledger_dir": str(tmp_path_factory.mktemp("ledger")),
                "dp_cvae": DP_CVAE,
            },
            "comparison": {
                "enabled": True,
                "variants": {
                    "cvae": {"privacy": {"enabled": True, "epsilon": 8.0, "mechanism": "dp_cvae"}},
                    "cvae_drift": {  # not private: the reports are exact, so trust sees the drift itself
                        "privacy": {"enabled": False, "mechanism": "dp_cvae", "dp_cvae": {"averaging": "trust", "holdout_fraction": 0.5}},
                        "heterogeneity": {"2": {"encoder_drift": 3.0}},
                    },
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
    keep = ("cvae.memory_bank", "cvae.client_1.privacy_budget", "cvae.client_1.generative_data", "cvae_drift.round_2_report")
    outputs = run_slice(pipe, memory_catalog(parameters, keep=keep, **tiny_dataset), keep=keep)
    patch.undo()
    return outputs, extractions, variants


def test_dp_cvae_variants_share_the_extraction_and_train_over_the_rounds(generative_run):
    outputs, extractions, variants = generative_run
    assert sorted(extractions) == ["1", "2"]  # rows, clean and drifted DP-CVAE: one extraction per client
    # Encoder drift changes a client's training, not its features.
    assert variants["cvae_drift"].feature_owner == {"1": "federated", "2": "federated"}
    report = outputs["cvae_drift.round_2_report"]
    assert report["round"] == 2 and report["averaging"] == "trust"
    assert report["trust"]["2"]["trust"] < report["trust"]["1"]["trust"]  # trust lowers the drifted client


def test_the_sampled_bank_has_the_real_dimension_and_no_real_row(generative_run):
    outputs, _, _ = generative_run
    bank = CategoryBanks.from_arrays(outputs["cvae.memory_bank"])
    data = outputs["cvae.client_1.generative_data"]
    real = data["x"].reshape(-1, data["x"].shape[-1])  # scaled by feature_scale: compare in the same units
    for category, rows in bank.banks.items():
        assert rows.shape == (DP_CVAE["bank_size"], real.shape[1])
        assert set(bank.origin[category]) == {"synthetic"}
        scaled = rows / np.float32(project_parameters({})["privacy"]["dp_cvae"]["feature_scale"])
        assert not (np.abs(scaled[:, None, :] - real[None, :, :]).max(-1) < 1e-6).any()


def test_budget_fidelity_and_metrics_are_published(generative_run):
    outputs, _, _ = generative_run
    metrics = outputs["metrics_cvae"]
    budget = metrics["clients"]["1"]["privacy"]
    # The published budget is the composed one of the site's ledger (this run's DP-CVAE its only release).
    assert budget["releases_composed"] == 1
    assert {k: v for k, v in budget.items() if k not in ("releases_composed", "ledger", "epsilon", "private")} == {
        k: v for k, v in outputs["cvae.client_1.privacy_budget"].items() if k not in ("epsilon", "private")
    }
    assert budget["epsilon"] == pytest.approx(outputs["cvae.client_1.privacy_budget"]["epsilon"], rel=1e-6)
    assert budget["mechanism"] == "dp_cvae" and budget["unit"] == "image" and budget["rounds"] == DP_CVAE["rounds"]
    assert 0 < budget["epsilon"] <= 8.0 and budget["sigma"] > 0
    assert metrics["experiment"]["sigma"] == pytest.approx(max(c["privacy"]["sigma"] for c in metrics["clients"].values()))
    assert metrics["experiment"]["sliced_wasserstein"] == pytest.approx(metrics["fidelity"]["mean"]["sliced_wasserstein"])
    assert metrics["experiment"]["sliced_wasserstein"] > 0
    assert len(metrics["communication"]["rounds"]) == DP_CVAE["rounds"]
    assert np.isfinite(metrics["mean"]["image_auroc"])
