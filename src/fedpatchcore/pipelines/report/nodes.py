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
    comparison: dict[str, Any], report: dict[str, Any], experts: dict[str, Any] | None = None, **published: dict[str, Any]
) -> tuple[pd.DataFrame, plt.Figure, dict[str, Any]]:
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
    return table, _experiment_plot(table, groups), analysis


# Per-run numbers drawn beside image AUC-ROC in a line plot when a run publishes them.
_LINE_PANELS = {"image_auroc": "image AUC-ROC (utility)", "attack_auc": "membership-attack AUC (privacy)"}


def _experiment_plot(table: pd.DataFrame, groups: str) -> plt.Figure:
    """Image AUC-ROC per category and run, or per run: bars, or lines over the first numeric label.

    The fairness groupings draw AUC-sPRO beside image AUC-ROC (a starved category's bank shows
    first in its anomaly maps). A numeric label (e.g. ``epsilon``; ``inf`` drawn one step right
    of the largest value) is the x axis, on a log scale; the other labels name the lines. A run
    that publishes ``experiment.attack_auc`` gets it drawn in a second panel (privacy beside
    utility).
    """
    if groups == "categories":
        return _bar_chart(_per_group(table, "image_auroc", ["mean"], sort_runs=False), "image AUC-ROC")
    if groups == "experts":
        return _experts_plot(table)
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
    if numeric:
        first = numeric[0]
        rest = [column for column in label_columns if column != first]
        x = as_axis(table[first].tolist())
        finite = np.isfinite(x)
        # "no privacy" (inf) is drawn one step to the right of the largest finite value.
        right = (x[finite].max() * 2 if finite.any() else 1.0)
        series = table.assign(_x=np.where(finite, x, right))
        panels = [c for c in _LINE_PANELS if c in table.columns and table[c].notna().any()]
        figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
        for axis, column in zip(axes[0], panels, strict=True):
            for key, part in series.groupby(rest or (lambda _: ""), sort=False):
                part = part.sort_values("_x")
                name = " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)
                axis.plot(part["_x"], part[column], marker="o", label=name if rest else column)
            axis.set_xscale("log")
            if not finite.all():
                ticks = sorted(set(series["_x"]))
                axis.set_xticks(ticks, [("∞" if t == right and not np.isin(t, x[finite]) else f"{t:g}") for t in ticks])
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


#: The experts an ``experts`` experiment plot draws: PatchCore alone against each category's choice.
_PLOTTED_EXPERTS = {"texture": "tab:blue", "selected": "tab:red"}


def _experts_plot(table: pd.DataFrame) -> plt.Figure:
    """Image AUC-ROC of PatchCore alone (``texture``) and of each category's chosen rule
    (``selected``) per run: one panel per category and ``mean``; with a numeric label (``shots``)
    as the x axis, one line per expert and other label (one line style per other label)."""
    table = table[table["expert"].isin(list(_PLOTTED_EXPERTS))]
    label_columns = list(table.columns[: list(table.columns).index("category")])
    categories = list(dict.fromkeys(table["category"]))
    figure, axes = plt.subplots(1, len(categories), figsize=(3.2 * len(categories), 3.4), squeeze=False, sharey=True)
    numeric = next((c for c in label_columns if as_axis(table[c].tolist()) is not None and table[c].nunique() > 1), None)
    if numeric is None:  # shots: "all" reads as +inf, one step right of the largest number
        numeric = next((c for c in label_columns if c == "shots"), None)
    for axis, category in zip(axes[0], categories, strict=True):
        part = table[table["category"] == category]
        others = [c for c in label_columns if c != numeric]
        if numeric is None:
            runs = part[label_columns].astype(str).agg(" / ".join, axis=1)
            part.assign(run=runs).pivot_table(index="expert", columns="run", values="image_auroc", sort=False).plot.bar(
                ax=axis, rot=45, legend=axis is axes[0][-1]
            )
        else:
            x = _shots_axis(part[numeric])
            styles = dict(zip(dict.fromkeys(part[others].astype(str).agg(" / ".join, axis=1)), ("-", "--", ":", "-."), strict=False))
            for key, rows in part.assign(_x=x).groupby(["expert", *others], sort=False):
                rows = rows.sort_values("_x")
                key = key if isinstance(key, tuple) else (key,)
                rest = " / ".join(map(str, key[1:]))
                axis.plot(
                    rows["_x"], rows["image_auroc"], marker="o", color=_PLOTTED_EXPERTS[key[0]],
                    linestyle=styles.get(rest, "-"), label=" / ".join(map(str, key)),
                )
            ticks = sorted(set(x))
            axis.set_xscale("log", base=2)
            axis.set_xticks(ticks, [_shots_label(t, part[numeric]) for t in ticks])
            axis.minorticks_off()
            axis.set_xlabel(numeric)
        axis.set_title(category, fontsize=9)
        axis.set_ylim(0.0, 1.05)
        axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].set_ylabel("image AUC-ROC")
    handles, names = axes[0][-1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, fontsize=7, loc="lower center", ncol=min(6, len(names)))
    figure.tight_layout(rect=(0, 0.12 if handles else 0, 1, 1))
    return figure


def _shots_axis(values: pd.Series) -> np.ndarray:
    """Numbers of a label column for the x axis; ``all`` (or inf) one doubling right of the largest."""
    x = as_axis(values.tolist())
    finite = np.isfinite(x)
    right = x[finite].max() * 2 if finite.any() else 1.0
    return np.where(finite, x, right)


def _shots_label(tick: float, values: pd.Series) -> str:
    x = as_axis(values.tolist())
    return "all" if not np.isin(tick, x[np.isfinite(x)]) else f"{tick:g}"


def _per_group(table: pd.DataFrame, column: str, last: list[str], sort_runs: bool = True) -> pd.DataFrame:
    """Groups × runs of one column, the summary rows ``last`` at the end (runs in table order)."""
    wide = table.assign(run=_run_names(table)).pivot(index="group", columns="run", values=column)
    last = [g for g in last if g in wide.index]
    wide = wide.loc[[g for g in wide.index if g not in last] + last]
    return wide[list(dict.fromkeys(_run_names(table)))] if sort_runs else wide


def _run_names(table: pd.DataFrame) -> pd.Series:
    label_columns = list(table.columns[: list(table.columns).index("group")])
    return table[label_columns].astype(str).agg(" / ".join, axis=1)
