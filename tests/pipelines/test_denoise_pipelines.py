"""Denoising clients, the calibrated consensus and soft-weighted scoring wired through the Kedro
pipelines (in memory, tiny images): what the nodes pass on reaches the bank and the scores."""

from __future__ import annotations

import numpy as np
from kedro.pipeline import Pipeline

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from fedpatchcore.pipelines.training.pipeline import centralized_training
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

DENOISED = {"coreset": {"denoise": "lof", "denoise_share": 0.1, "upload_folds": True}}


def test_denoising_clients_send_weights_and_folds_and_the_calibrated_server_keeps_the_weights(tiny_dataset, tmp_path):
    parameters = project_parameters(
        merged(
            TINY_PARAMS,
            {
                "extraction": {"scratch_dir": str(tmp_path / "scratch")},
                "federation": {"partition": "iid", "num_clients": 2},
                "comparison": {
                    "enabled": True,
                    "variants": {
                        "denoised": {
                            **DENOISED,
                            "aggregation": {"strategy": "calibrated_consensus"},
                            "scoring": {"soft_weights": True},
                        }
                    },
                },
            },
        )
    )
    variants = {v.name: v for v in structure.federated_variants(parameters)}
    pipe = sum((federated_training(v) + federated_evaluation(v) for v in variants.values()), Pipeline([]))
    keep = (
        "denoised.client_1.upload_round_1",
        "federated.client_1.upload_round_1",
        "denoised.memory_bank",
        "federated.memory_bank",
    )
    out = run_slice(pipe, memory_catalog(parameters, keep=keep, **tiny_dataset), keep=keep)

    upload = ClientUpload.from_arrays("1", out["denoised.client_1.upload_round_1"])
    plain = ClientUpload.from_arrays("1", out["federated.client_1.upload_round_1"])
    assert set(upload.weights) == set(upload.banks) == set(upload.folds) and not plain.weights and not plain.folds
    for category, bank in upload.banks.items():
        assert len(bank) == len(plain.banks[category])  # denoising changes which rows, not how many
        assert (upload.weights[category] >= 1).all() and set(np.unique(upload.folds[category])) <= {0, 1}
    bank = CategoryBanks.from_arrays(out["denoised.memory_bank"])
    assert set(bank.weights) == set(bank.banks)
    assert "weight/metal_plate" not in out["federated.memory_bank"]
    assert out["metrics_denoised"]["mean"]["image_auroc"] is not None


def test_the_centralized_baseline_denoises_its_single_client_too(tiny_dataset, tmp_path):
    parameters = project_parameters(
        merged(TINY_PARAMS, {"extraction": {"scratch_dir": str(tmp_path / "scratch")}, **DENOISED})
    )
    out = run_slice(centralized_training(), memory_catalog(parameters, **tiny_dataset))
    bank = CategoryBanks.from_arrays(out["centralized.memory_bank"])
    assert set(bank.weights) == set(bank.banks)
    assert all((bank.row_weights(c) >= 1).all() for c in bank.banks)
