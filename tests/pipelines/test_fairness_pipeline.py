"""The imbalance experiment in miniature: ingest with a training fraction, two fairness modes
sharing features, one bank budget over all categories, fairness metrics and the table.

Run in memory with the SequentialRunner (no session): tiny images, a few seconds of CPU.
"""

from __future__ import annotations

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.federation import client
from fedpatchcore.pipelines.federated.pipeline import federated_evaluation, federated_training
from fedpatchcore.pipelines.ingest.pipeline import create_pipeline as ingest
from fedpatchcore.pipelines.report.pipeline import experiment_summary
from tests.pipelines.conftest import TINY_PARAMS, memory_catalog, merged, project_parameters, run_slice

CATEGORIES = {"metal_plate", "woven_fabric", "circuit_board", "parts_tray"}


def test_imbalance_slice_splits_one_budget_by_mode_and_publishes_fairness(tmp_path, monkeypatch):
    runtime = merged(
        TINY_PARAMS,
        {
            # The four categories the experiment's numbers below are written for (not assembly).
            "dataset": {
                "root": str(tmp_path / "synthetic"),
                "categories": sorted(CATEGORIES),
                "train_fraction": {"metal_plate": 0.5},
            },
            "extraction": {"scratch_dir": str(tmp_path / "scratch")},
            "aggregation": {"total_bank_size": 40},
            "comparison": {
                "enabled": True,
                "name": "imbalance",
                "centralized": False,
                "groups": "fairness",
                "labels": {"federated": {"mode": "none"}},
                "variants": {"fairness_equal": {"labels": {"mode": "equal"}, "fairness": {"mode": "equal"}}},
            },
        },
    )
    parameters = project_parameters(runtime)
    # --params merge into the base comparison (which also lists federated_iid): run just these two.
    variants = [v for v in structure.federated_variants(parameters) if v.name in ("federated", "fairness_equal")]
    equal = variants[1]
    # Same images, same extraction: one extraction per client; the QC client (several categories)
    # selects its coreset again under the equal split, the single-category clients could share.
    assert all(owner == "federated" for owner in equal.feature_owner.values())
    assert equal.lane_owner["qc"] == "fairness_equal"
    extractions = []
    original = client.extract_features
    monkeypatch.setattr(client, "extract_features", lambda *a, **k: extractions.append(a[-1].client_id) or original(*a, **k))

    pipe = ingest()
    for variant in variants:
        pipe += federated_training(variant) + federated_evaluation(variant)
    pipe += experiment_summary("imbalance", {f"metrics_{v.name}": f"metrics_{v.name}" for v in variants})
    keep = ("dataset_index", "federated.round_1_report", "fairness_equal.round_1_report",
            "federated.memory_bank", "fairness_equal.memory_bank", "metrics_federated", "metrics_fairness_equal")
    outputs = run_slice(pipe, memory_catalog(parameters, keep=keep), keep=keep)

    assert sorted(extractions) == sorted(variants[0].client_ids)
    index = outputs["dataset_index"]
    train = index[index["split"] == "train"].groupby("category").size().to_dict()
    assert train == {"metal_plate": 2, "woven_fabric": 4, "circuit_board": 4, "parts_tray": 4}

    none_report, equal_report = outputs["federated.round_1_report"], outputs["fairness_equal.round_1_report"]
    for report, name in ((none_report, "federated"), (equal_report, "fairness_equal")):
        rows = {c: len(b) for c, b in CategoryBanks.from_arrays(outputs[f"{name}.memory_bank"]).banks.items()}
        assert rows == report["category_quotas"] == report["bank_rows"]
        assert sum(rows.values()) == 40
    assert equal_report["category_quotas"] == dict.fromkeys(sorted(CATEGORIES), 10)
    # none: ∝ uploaded rows, so the category with half the images gets less than an equal share.
    assert none_report["category_quotas"]["metal_plate"] < 10

    for name in ("metrics_federated", "metrics_fairness_equal"):
        fairness = outputs[name]["fairness"]
        assert set(fairness["category"]["groups"]) == CATEGORIES
        assert set(fairness["client"]["groups"]) == {"metal", "textile", "electronics", "qc"}
        assert fairness["client"]["members"]["electronics"] == ["circuit_board", "parts_tray"]
        summary = fairness["category"]["summary"]["image_auroc"]
        assert summary["worst"] <= summary["mean"] <= summary["best"]

    table = outputs["imbalance_table"]
    assert list(table.columns[:4]) == ["mode", "group", "image_auroc", "aucspro_0.05"]
    assert table["mode"].tolist() == ["none"] * 6 + ["equal"] * 6
    assert table["group"].tolist()[-2:] == ["worst", "mean"]
    assert set(table["group"]) == CATEGORIES | {"worst", "mean"}
