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
