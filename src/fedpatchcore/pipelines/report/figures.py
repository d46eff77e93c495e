"""Report nodes that compute curve points and draw figures (matplotlib, saved by the catalog).

The numbers come from :mod:`fedpatchcore.core.reporting.curves`, the overlay sheets from
:mod:`fedpatchcore.core.reporting.figures`; these nodes only unpack parameters, read the
images and call them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.data.loading import load_image, load_mask
from fedpatchcore.core.data.types import category_info_from_dict, frame_to_samples

# Ground truth is read exactly as the metrics read it (same masks, same sPRO regions).
from fedpatchcore.core.evaluation.ground_truth import ground_truth
from fedpatchcore.core.reporting.curves import bank_contributions as count_bank_contributions
from fedpatchcore.core.reporting.curves import pick_overlays, roc_curve, spro_curve
from fedpatchcore.core.reporting.figures import (
    ExpertView,
    OverlayRow,
    expert_views_sheet,
    message_sheet,
    overlay_sheet,
)

# An expert's maps exactly as the metrics of the experts see them.
from fedpatchcore.core.tuning.fusion import REPORTED, expert_maps_and_scores

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------


def _scored_categories(
    anomaly_maps: dict[str, dict[str, Any]],
    image_scores: pd.DataFrame,
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
):
    """Per category with maps: its name, info, maps entry, keys (maps order), their score rows and
    every sample by key."""
    samples = {s.key: s for s in frame_to_samples(dataset_index)}
    scores = image_scores.set_index("key")
    for category, entry in anomaly_maps.items():
        keys = list(entry["keys"])
        yield category, category_info_from_dict(category_info[category]), entry, keys, scores.loc[keys], samples


def compute_curves(
    anomaly_maps: dict[str, dict[str, Any]],
    image_scores: pd.DataFrame,
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Any]:
    """Per category: image ROC points and sPRO-vs-FPR points up to ``report.spro_max_fpr``."""
    max_fpr = float(report["spro_max_fpr"])
    categories = {}
    for category, info, entry, keys, scored, samples in _scored_categories(
        anomaly_maps, image_scores, dataset_index, category_info
    ):
        roc = roc_curve(scored["image_score"].to_numpy(), scored["label"].to_numpy())
        if roc is not None:
            roc["threshold"][0] = None  # +inf is not JSON
        spro = None
        if info.has_pixel_ground_truth:
            regions = [ground_truth(samples[key], info)[1] for key in keys]
            spro = spro_curve(entry["maps"], regions, max_fpr=max_fpr)
        categories[category] = {"roc": roc, "spro": spro}
    return {"spro_max_fpr": max_fpr, "categories": categories}


def _auc(fpr: list[float], values: list[float]) -> float:
    return float(np.trapezoid(values, fpr))


def plot_roc_curves(report_curves: dict[str, Any]) -> Figure:
    """Image-level ROC curve of every category on one chart."""
    figure = Figure(figsize=(5, 4.2))
    axis = figure.subplots()
    for category, curves in report_curves["categories"].items():
        roc = curves["roc"]
        if roc is None:
            continue
        axis.step(roc["fpr"], roc["tpr"], where="post", label=f"{category} (AUC {_auc(roc['fpr'], roc['tpr']):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("false positive rate (good images flagged)")
    axis.set_ylabel("true positive rate (defects found)")
    axis.set_title("image ROC per category")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def plot_spro_curves(report_curves: dict[str, Any]) -> Figure:
    """sPRO against the pooled pixel FPR, up to the configured FPR, every category on one chart."""
    max_fpr = report_curves["spro_max_fpr"]
    figure = Figure(figsize=(5, 4.2))
    axis = figure.subplots()
    drawn = False
    for category, curves in report_curves["categories"].items():
        spro = curves["spro"]
        if spro is None:
            continue
        axis.plot(spro["fpr"], spro["spro"], label=f"{category} (AUC-sPRO@{max_fpr:g} {spro['auc_normalised']:.3f})")
        drawn = True
    if not drawn:
        axis.text(0.5, 0.5, "no pixel ground truth", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlim(0, max_fpr)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("false positive rate (defect-free pixels)")
    axis.set_ylabel("sPRO (saturated per-region overlap)")
    axis.set_title(f"sPRO up to FPR {max_fpr:g}")
    if drawn:
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# bank contributions
# --------------------------------------------------------------------------------------------


def bank_contributions(memory_bank: dict[str, np.ndarray]) -> pd.DataFrame:
    """Rows of the global memory bank kept from each client, per category (and their share)."""
    return count_bank_contributions(CategoryBanks.from_arrays(memory_bank))


def plot_bank_contributions(bank_contributions: pd.DataFrame) -> Figure:
    """Stacked bars: per category, how many bank rows each client contributed."""
    wide = bank_contributions.pivot_table(index="category", columns="client", values="rows", aggfunc="sum", fill_value=0)
    figure = Figure(figsize=(6, 0.6 * max(len(wide), 2) + 1.4))
    axis = figure.subplots()
    if len(wide):
        wide.plot.barh(stacked=True, ax=axis, width=0.7, colormap="tab10")
        axis.legend(title="client", fontsize=7, title_fontsize=8, loc="lower right")
    axis.invert_yaxis()
    axis.set_xlabel("rows of the global memory bank")
    axis.set_ylabel("")
    axis.set_title("who contributed to the global bank")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------------------------


def draw_overlays(
    anomaly_maps: dict[str, dict[str, Any]],
    image_scores: pd.DataFrame,
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    report: dict[str, Any],
) -> dict[str, Figure]:
    """Per category: the top defects, the worst misses and the worst false alarms, each as image /
    ground-truth contour / anomaly map, every map of a category on ONE colour scale (its max)."""
    figures = {}
    for category, info, entry, keys, scored, samples in _scored_categories(
        anomaly_maps, image_scores, dataset_index, category_info
    ):
        picks = pick_overlays(keys, scored["image_score"].to_numpy(), scored["label"].to_numpy(), report["overlays_per_group"])
        if not picks:
            continue
        row_of = {key: row for row, key in enumerate(keys)}
        maps = entry["maps"]
        rows = []
        for pick in picks:
            sample = samples[pick.key]
            image = load_image(sample.image_path, info.image_size)
            mask = load_mask(sample, info) if info.has_pixel_ground_truth else np.zeros(image.shape[:2], bool)
            title = f"{pick.group}: {sample.defect_type}/{sample.image_id}"
            rows.append(OverlayRow(title, image, mask, maps[row_of[pick.key]], pick.score))
        figures[f"{category}.png"] = overlay_sheet(category, rows, float(np.max(maps)) if len(maps) else 1.0)
    return figures


# --------------------------------------------------------------------------------------------
# the logical experts
# --------------------------------------------------------------------------------------------


def draw_expert_overlays(
    texture_anomaly_maps: dict[str, dict[str, Any]],
    texture_image_scores: pd.DataFrame,
    expert_scores: dict[str, np.ndarray],
    fusion_rules: dict[str, Any],
    dataset_index: pd.DataFrame,
    category_info: dict[str, Any],
    experts: dict[str, Any],
) -> dict[str, Figure]:
    """Per category with logical defects (``experts.logical_defects``): its worst logical miss (the
    logical defect the chosen rule scores lowest) as every expert sees it, one map per expert.

    Each map is the expert's z-normalised map (one colour scale per expert and category, from
    the good validation statistics: 0 = a typical good image).
    """
    logical = set(experts.get("logical_defects") or ())
    samples = {s.key: s for s in frame_to_samples(dataset_index)}
    figures = {}
    for category, entry in texture_anomaly_maps.items():
        keys = list(entry["keys"])
        defects = [samples[key].defect_type for key in keys]
        rows = [i for i, defect in enumerate(defects) if defect in logical]
        if not rows:
            continue
        per_rule = {
            name: expert_maps_and_scores(
                name, {category: entry}, texture_image_scores, expert_scores, {category: fusion_rules[category]}
            )
            for name in REPORTED
        }
        selected = per_rule["selected"][1].set_index("key").loc[keys, "image_score"].to_numpy()
        worst = min(rows, key=lambda i: selected[i])
        sample = samples[keys[worst]]
        info = category_info_from_dict(category_info[category])
        image = load_image(sample.image_path, info.image_size)
        mask = load_mask(sample, info) if info.has_pixel_ground_truth else np.zeros(image.shape[:2], bool)
        rule = fusion_rules[category]["selected"]["rule"]
        views = []
        for name in REPORTED:
            maps, scores = per_rule[name]
            values = np.asarray(maps[category]["maps"])
            score = float(scores.set_index("key").loc[keys[worst], "image_score"])
            label = f"selected ({rule})" if name == "selected" else name
            views.append(ExpertView(label, values[worst], score, float(values.min()), float(values.max())))
        figures[f"{category}.png"] = expert_views_sheet(
            f"{category}: worst logical miss as each expert sees it",
            image,
            mask,
            f"{sample.defect_type}/{sample.image_id}",
            views,
        )
    if not figures:  # a folder with nothing in it could not be read back
        figures["none.png"] = message_sheet("no test image of a logical defect type (experts.logical_defects)")
    return figures
