"""The experiment table and plot of a privacy sweep: labels and published numbers become columns."""

from __future__ import annotations

import matplotlib.pyplot as plt

from fedpatchcore.pipelines.report.nodes import summarise_experiment


def _metrics(auroc: float, sigma: float, attack: float) -> dict:
    values = {"image_auroc": auroc, "aucspro": {"0.05": auroc / 2}}
    return {"categories": {"plate": values}, "mean": values, "experiment": {"sigma": sigma, "attack_auc": attack}}


def test_privacy_sweep_table_and_plot():
    comparison = {
        "name": "privacy_sweep",
        "groups": "mean",
        "labels": {"federated": {"unit": "image", "epsilon": "inf"}},
        "variants": {
            "patch_eps_inf": {"labels": {"unit": "patch", "epsilon": "inf"}},
            "image_eps_1": {"labels": {"unit": "image", "epsilon": 1}, "privacy": {"enabled": True}},
            "image_eps_8": {"labels": {"unit": "image", "epsilon": 8}, "privacy": {"enabled": True}},
            "patch_eps_1": {"labels": {"unit": "patch", "epsilon": 1}, "privacy": {"enabled": True}},
        },
    }
    published = {
        "metrics_federated": _metrics(0.9, 0.0, 0.99),
        "metrics_patch_eps_inf": _metrics(0.9, 0.0, 0.99),
        "metrics_image_eps_1": _metrics(0.5, 300.0, 0.5),
        "metrics_image_eps_8": _metrics(0.55, 40.0, 0.52),
        "metrics_patch_eps_1": _metrics(0.52, 70.0, 0.51),
    }
    table, figure, _ = summarise_experiment(comparison, {"spro_limit": "0.05"}, **published)
    assert list(table.columns) == ["unit", "epsilon", "image_auroc", "aucspro_0.05", "sigma", "attack_auc", "uploaded_bytes"]
    assert table.set_index(["unit", "epsilon"]).loc[("image", 1), "sigma"] == 300.0
    # Lines over ε (∞ one step right of the largest ε), one per unit: utility and attack side by side.
    axes = figure.get_axes()
    assert [a.get_ylabel() for a in axes] == ["image AUC-ROC (utility)", "membership-attack AUC (privacy)"]
    for axis in axes:
        lines = {line.get_label(): line for line in axis.get_lines() if not line.get_label().startswith("_")}
        assert set(lines) == {"image", "patch"}
        assert list(lines["image"].get_xdata()) == [1.0, 8.0, 16.0]
        assert axis.get_xscale() == "log"
    plt.close(figure)
