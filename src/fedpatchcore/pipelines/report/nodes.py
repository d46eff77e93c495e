"""Reporting: metric charts and the comparison table (overlays and curves: figures.py; the page: html.py)."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are files; never open a window
import matplotlib.pyplot as plt
import pandas as pd

from fedpatchcore.core.metrics import metrics_table

logger = logging.getLogger(__name__)


def _bar_chart(table: pd.DataFrame, ylabel: str) -> plt.Figure:
    """One group of bars per row (category), one bar per column; scores live in [0, 1]."""
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(table)), 4))
    table.plot.bar(ax=axis, rot=30)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure


def plot_metrics(metrics: dict[str, Any], report: dict[str, Any]) -> plt.Figure:
    """Bar chart of the main metrics per category."""
    return _bar_chart(metrics_table(metrics, report["spro_limit"]), "score")


def compare_runs(
    report: dict[str, Any], metrics_centralized: dict[str, Any], **federated_metrics
) -> tuple[pd.DataFrame, plt.Figure]:
    """Centralized vs each federated variant: image AUC-ROC and AUC-sPRO per category, bytes sent."""
    limit = report["spro_limit"]
    runs = {"centralized": metrics_centralized}
    runs.update({name.removeprefix("metrics_"): m for name, m in federated_metrics.items()})
    rows = []
    for run, metrics in runs.items():
        label = run if run == "centralized" else f"{run} ({metrics.get('partition', '?')})"
        uploaded = (metrics.get("communication") or {}).get("uploaded_bytes")
        for category, values in {**metrics["categories"], "mean": metrics["mean"]}.items():
            rows.append(
                {
                    "run": label,
                    "category": category,
                    "image_auroc": values.get("image_auroc"),
                    f"aucspro@{limit}": (values.get("aucspro") or {}).get(limit),
                    "uploaded_bytes": uploaded,
                }
            )
    table = pd.DataFrame(rows)
    wide = table.pivot(index="category", columns="run", values="image_auroc")
    wide = wide.loc[[c for c in wide.index if c != "mean"] + ["mean"]]  # the mean as the last group
    logger.info("Comparison (image AUC-ROC):\n%s", wide.to_string(float_format=lambda x: f"{x:.3f}"))
    return table, _bar_chart(wide, "image AUC-ROC")
