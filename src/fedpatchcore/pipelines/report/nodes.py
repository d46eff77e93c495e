"""Reporting: metric charts and the comparison table (overlays and curves: figures.py; the page: html.py)."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are files; never open a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fedpatchcore.core.evaluation.metrics import metrics_table
from fedpatchcore.core.reporting.experiments import as_axis, experiment_table, leave_one_out_effect

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


def summarise_experiment(
    comparison: dict[str, Any], report: dict[str, Any], **published: dict[str, Any]
) -> tuple[pd.DataFrame, plt.Figure, dict[str, Any]]:
    """The experiment's tidy table (a row per run × group), its plot, and its analyses.

    ``published`` maps ``metrics_<run>`` to each run's published metrics. A run's labels come
    from ``comparison.variants.<run>.labels`` or ``comparison.labels.<run>``.
    """
    runs = {name.removeprefix("metrics_"): metrics for name, metrics in published.items()}
    labels = {run: dict(values) for run, values in (comparison.get("labels") or {}).items()}
    for run, variant in (comparison.get("variants") or {}).items():
        if variant and variant.get("labels"):
            labels[run] = dict(variant["labels"])
    groups = comparison.get("groups", "categories")
    table = experiment_table(runs, labels, groups, report["spro_limit"])
    analysis: dict[str, Any] = {}
    leave_one_out = comparison.get("leave_one_out")
    if leave_one_out:
        analysis["leave_one_out"] = leave_one_out_effect(runs, leave_one_out["base"], leave_one_out["dropped"])
        logger.info("Trust vs leave-one-out effect: %s", analysis["leave_one_out"])
    logger.info("Experiment %s:\n%s", comparison.get("name", "comparison"), table.to_string(float_format=lambda x: f"{x:.3f}"))
    return table, _experiment_plot(table, groups, comparison.get("plot_x")), analysis


# Per-run numbers drawn beside image AUC-ROC in a line plot when a run publishes them.
_LINE_PANELS = {"image_auroc": "image AUC-ROC (utility)", "attack_auc": "membership-attack AUC (privacy)"}


def _experiment_plot(table: pd.DataFrame, groups: str, plot_x: str | None = None) -> plt.Figure:
    """Image AUC-ROC per category and run, or per run: bars, or lines over the first numeric label.

    The fairness groupings draw AUC-sPRO beside image AUC-ROC (a starved category's bank shows
    first in its anomaly maps). A numeric label (e.g. ``epsilon``; ``inf`` drawn one step right
    of the largest value) is the x axis, on a log scale; the other labels name the lines. A run
    that publishes ``experiment.attack_auc`` gets it drawn in a second panel (privacy beside
    utility). ``plot_x`` (``comparison.plot_x``) picks the x-axis label; 0 is drawn one step
    left of the smallest positive value.
    """
    if groups == "categories":
        return _bar_chart(_per_group(table, "image_auroc", ["mean"], sort_runs=False), "image AUC-ROC")
    if groups in ("fairness", "clients"):
        spro = next(c for c in table.columns if c.startswith("aucspro_"))
        figure, axes = plt.subplots(1, 2, figsize=(max(10, 2.4 * table["group"].nunique()), 4))
        for axis, column, label in ((axes[0], "image_auroc", "image AUC-ROC"), (axes[1], spro, spro.replace("_", "@"))):
            _per_group(table, column, ["worst", "mean"]).plot.bar(ax=axis, rot=30)
            axis.set_ylim(0, 1.05)
            axis.set_ylabel(label)
            axis.legend(fontsize=8, loc="lower left")
        figure.tight_layout()
        return figure
    label_columns = list(table.columns[: list(table.columns).index("image_auroc")])
    numeric = [column for column in label_columns if as_axis(table[column].tolist()) is not None]
    if plot_x is not None:
        if plot_x not in numeric:
            raise ValueError(f"comparison.plot_x: {plot_x!r} is not a numeric label column of the table ({numeric})")
        numeric = [plot_x]
    if numeric:
        first = numeric[0]
        rest = [column for column in label_columns if column != first]
        x = as_axis(table[first].tolist())
        finite = np.isfinite(x)
        # "no privacy" (inf) is drawn one step to the right of the largest finite value, 0 one
        # step to the left of the smallest positive one.
        right = (x[finite].max() * 2 if finite.any() else 1.0)
        positive = finite & (x > 0)
        left = x[positive].min() / 2 if positive.any() else 0.5
        series = table.assign(_x=np.where(finite, np.where(x > 0, x, left), right))
        panels = [c for c in _LINE_PANELS if c in table.columns and table[c].notna().any()]
        figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
        for axis, column in zip(axes[0], panels, strict=True):
            for key, part in series.groupby(rest or (lambda _: ""), sort=False):
                part = part.sort_values("_x")
                name = " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)
                axis.plot(part["_x"], part[column], marker="o", label=name if rest else column)
            axis.set_xscale("log")
            if not positive.all():
                ticks = sorted(set(series["_x"]))
                names = {right: "∞", left: "0"}
                axis.set_xticks(ticks, [names.get(t, f"{t:g}") if not np.isin(t, x[positive]) else f"{t:g}" for t in ticks])
                axis.minorticks_off()
            axis.set_xlabel(first + (" (∞: none)" if not finite.all() else ""))
            axis.set_ylabel(_LINE_PANELS[column])
            axis.set_ylim(0.0, 1.05)
            axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
            axis.legend(fontsize=8)
        figure.tight_layout()
        return figure
    first, rest = label_columns[0], label_columns[1:]
    index = first
    columns = rest[0] if rest else None
    wide = table.pivot_table(index=index, columns=columns, values="image_auroc", sort=False) if columns else table.set_index(index)[["image_auroc"]]
    return _bar_chart(wide, "image AUC-ROC (mean over categories)")


def _per_group(table: pd.DataFrame, column: str, last: list[str], sort_runs: bool = True) -> pd.DataFrame:
    """Groups × runs of one column, the summary rows ``last`` at the end (runs in table order)."""
    wide = table.assign(run=_run_names(table)).pivot(index="group", columns="run", values=column)
    last = [g for g in last if g in wide.index]
    wide = wide.loc[[g for g in wide.index if g not in last] + last]
    return wide[list(dict.fromkeys(_run_names(table)))] if sort_runs else wide


def _run_names(table: pd.DataFrame) -> pd.Series:
    label_columns = list(table.columns[: list(table.columns).index("group")])
    return table[label_columns].astype(str).agg(" / ".join, axis=1)
