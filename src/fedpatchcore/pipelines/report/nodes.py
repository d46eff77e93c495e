"""Reporting: what people would rather look at than read (overlays, charts, comparison table)."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are files; never open a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fedpatchcore.core.data.loading import load_image, load_mask
from fedpatchcore.core.data.types import category_info_from_dict, frame_to_samples
from fedpatchcore.core.experiments import as_axis, experiment_table, leave_one_out_effect
from fedpatchcore.core.metrics import metrics_table

logger = logging.getLogger(__name__)


def _pick_overlay_rows(keys: list[str], scores: pd.Series, count: int) -> list[int]:
    """The highest- and lowest-scoring images: where the model is most and least alarmed."""
    order = np.argsort(scores.loc[keys].to_numpy())[::-1]
    if len(order) <= count:
        return list(order)
    top = list(order[: (count + 1) // 2])
    bottom = list(order[::-1][: count // 2])
    return top + [row for row in bottom if row not in top]


def draw_overlays(
    anomaly_maps: dict[str, dict[str, Any]],
    image_scores: pd.DataFrame,
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, plt.Figure]:
    """Per category: test images with ground truth and anomaly map, all maps on ONE colour scale."""
    samples = {s.key: s for s in frame_to_samples(dataset_index)}
    scores = image_scores.set_index("key")["image_score"]
    figures = {}
    for category, entry in anomaly_maps.items():
        info = category_info_from_dict(category_info[category])
        maps = entry["maps"]
        rows = _pick_overlay_rows(list(entry["keys"]), scores, report["overlays_per_category"])
        # One colour scale per category (its maps' max), so brightness is comparable across images.
        vmax = float(np.max(maps)) if len(maps) else 1.0
        figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
        for axis_row, row in zip(axes, rows, strict=True):
            sample = samples[entry["keys"][row]]
            image = load_image(sample.image_path, info.image_size)
            axis_row[0].imshow(image)
            axis_row[0].set_title(f"{sample.defect_type}/{sample.image_id}", fontsize=8)
            if info.has_pixel_ground_truth:
                axis_row[1].imshow(load_mask(sample, info), cmap="gray", vmin=0, vmax=1)
            axis_row[1].set_title("ground truth", fontsize=8)
            axis_row[2].imshow(image)
            axis_row[2].imshow(maps[row], cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
            axis_row[2].set_title(f"score {scores.loc[sample.key]:.3f}", fontsize=8)
            for axis in axis_row:
                axis.axis("off")
        figure.suptitle(f"{category}: anomaly maps (shared scale 0..{vmax:.2f})")
        figure.tight_layout()
        figures[f"{category}.png"] = figure
    return figures


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
    return table, _experiment_plot(table, groups), analysis


# Per-run numbers drawn beside image AUC-ROC in a line plot when a run publishes them.
_LINE_PANELS = {"image_auroc": "image AUC-ROC (utility)", "attack_auc": "membership-attack AUC (privacy)"}


def _experiment_plot(table: pd.DataFrame, groups: str) -> plt.Figure:
    """Image AUC-ROC per category and run, or per run: bars, or lines over the first numeric label.

    A numeric label (e.g. ``epsilon``; ``inf`` drawn one step right of the largest value) is the
    x axis, on a log scale; the other labels name the lines. A run that publishes
    ``experiment.attack_auc`` gets it drawn in a second panel (privacy beside utility).
    """
    if groups == "categories":
        wide = table.assign(run=_run_names(table)).pivot(index="group", columns="run", values="image_auroc")
        wide = wide.loc[[c for c in wide.index if c != "mean"] + ["mean"]]  # the mean as the last group
        return _bar_chart(wide, "image AUC-ROC")
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


def _run_names(table: pd.DataFrame) -> pd.Series:
    label_columns = list(table.columns[: list(table.columns).index("group")])
    return table[label_columns].astype(str).agg(" / ".join, axis=1)
