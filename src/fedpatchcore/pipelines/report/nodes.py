"""Reporting: metric charts and the experiment's table and plot (overlays and curves: figures.py;
the page: html.py). The drawing itself is :mod:`fedpatchcore.core.reporting.figures`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from fedpatchcore.core.evaluation.metrics import metrics_table
from fedpatchcore.core.reporting.experiments import experiment_table, leave_one_out_effect
from fedpatchcore.core.reporting.figures import bar_chart, experiment_plot

logger = logging.getLogger(__name__)


def plot_metrics(metrics: dict[str, Any], report: dict[str, Any]) -> Figure:
    """Bar chart of the main metrics per category."""
    return bar_chart(metrics_table(metrics, report["spro_limit"]), "score")


def summarise_experiment(
    comparison: dict[str, Any], report: dict[str, Any], experts: dict[str, Any] | None = None, **published: dict[str, Any]
) -> tuple[pd.DataFrame, Figure, dict[str, Any]]:
    """The experiment's tidy table (a row per run × group), its plot, and its analyses.

    ``published`` maps ``metrics_<run>`` to each run's published metrics. A run's labels come
    from ``comparison.variants.<run>.labels`` or ``comparison.labels.<run>``. ``experts``: the
    block whose ``logical_defects`` the ``experts`` grouping splits defect types by.
    """
    runs = {name.removeprefix("metrics_"): metrics for name, metrics in published.items()}
    labels = {run: dict(values) for run, values in (comparison.get("labels") or {}).items()}
    for run, variant in (comparison.get("variants") or {}).items():
        if variant and variant.get("labels"):
            labels[run] = dict(variant["labels"])
    groups = comparison.get("groups", "categories")
    logical = (experts or {}).get("logical_defects") or ()
    table = experiment_table(runs, labels, groups, report["spro_limit"], logical)
    analysis: dict[str, Any] = {}
    leave_one_out = comparison.get("leave_one_out")
    if leave_one_out:
        analysis["leave_one_out"] = leave_one_out_effect(runs, leave_one_out["base"], leave_one_out["dropped"])
        logger.info("Trust vs leave-one-out effect: %s", analysis["leave_one_out"])
    logger.info("Experiment %s:\n%s", comparison.get("name", "comparison"), table.to_string(float_format=lambda x: f"{x:.3f}"))
    return table, experiment_plot(table, groups, comparison.get("plot_x")), analysis
