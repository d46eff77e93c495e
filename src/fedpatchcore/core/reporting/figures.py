"""Figures of the report and of an explanation, drawn from results (saved by the caller).

Figures are built with matplotlib's object API (``Figure``), not pyplot: nothing is registered
in pyplot's global figure list, so a run that draws hundreds of sheets neither leaks them nor
needs a GUI backend, and no caller has to close them.

* :func:`bar_chart`: one group of bars per row of a table (scores in [0, 1]);
* :func:`experiment_plot`: the experiment's plot from its tidy table
  (:func:`fedpatchcore.core.reporting.experiments.experiment_table`);
* :func:`overlay_sheet`: one category's overlays, every map on the category's one colour scale;
* :func:`expert_views_sheet`: one image as each logical expert (and the fusion) sees it;
* :func:`draw_explanation`: the explanation of one image, from its own outputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fedpatchcore.core.explain.explanation import QUERY
from fedpatchcore.core.reporting.experiments import as_axis
from fedpatchcore.core.reporting.style import CONTOUR_COLOUR

OTHER_CLIENT_TILE = (0.91, 0.92, 0.94)  # blank tile standing in for another client's patch


def bar_chart(table: pd.DataFrame, ylabel: str) -> Figure:
    """One group of bars per row (category), one bar per column; scores live in [0, 1]."""
    figure = Figure(figsize=(max(6, 1.6 * len(table)), 4))
    axis = figure.subplots()
    table.plot.bar(ax=axis, rot=30)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# the experiment's plot


# Per-run numbers drawn beside image AUC-ROC in a line plot when a run publishes them.
_LINE_PANELS = {"image_auroc": "image AUC-ROC (utility)", "attack_auc": "membership-attack AUC (privacy)"}


def experiment_plot(table: pd.DataFrame, groups: str, plot_x: str | None = None) -> Figure:
    """Image AUC-ROC per category and run, or per run: bars, or lines over the first numeric label.

    The fairness groupings draw AUC-sPRO beside image AUC-ROC (a starved category's bank shows
    first in its anomaly maps). A numeric label (e.g. ``epsilon``; ``inf`` drawn one step right
    of the largest value) is the x axis, on a log scale; the other labels name the lines. A run
    that publishes ``experiment.attack_auc`` gets it drawn in a second panel (privacy beside
    utility). ``plot_x`` (``comparison.plot_x``) picks the x-axis label; 0 is drawn one step
    left of the smallest positive value.
    """
    if groups == "categories":
        return bar_chart(_per_group(table, "image_auroc", ["mean"], sort_runs=False), "image AUC-ROC")
    if groups in ("fairness", "clients"):
        return _fairness_plot(table)
    if groups == "experts":
        return _experts_plot(table)
    label_columns = list(table.columns[: list(table.columns).index("image_auroc")])
    numeric = [column for column in label_columns if as_axis(table[column].tolist()) is not None]
    if plot_x is not None:
        if plot_x not in numeric:
            raise ValueError(f"comparison.plot_x: {plot_x!r} is not a numeric label column of the table ({numeric})")
        numeric = [plot_x]
    if numeric:
        return _line_plot(table, numeric[0], [column for column in label_columns if column != numeric[0]])
    first, rest = label_columns[0], label_columns[1:]
    wide = (
        table.pivot_table(index=first, columns=rest[0], values="image_auroc", sort=False)
        if rest
        else table.set_index(first)[["image_auroc"]]
    )
    return bar_chart(wide, "image AUC-ROC (mean over categories)")


def _fairness_plot(table: pd.DataFrame) -> Figure:
    """Image AUC-ROC and AUC-sPRO per group and run, the worst and mean groups last."""
    spro = next(c for c in table.columns if c.startswith("aucspro_"))
    figure = Figure(figsize=(max(10, 2.4 * table["group"].nunique()), 4))
    axes = figure.subplots(1, 2)
    for axis, column, label in ((axes[0], "image_auroc", "image AUC-ROC"), (axes[1], spro, spro.replace("_", "@"))):
        _per_group(table, column, ["worst", "mean"]).plot.bar(ax=axis, rot=30)
        axis.set_ylim(0, 1.05)
        axis.set_ylabel(label)
        axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure


def _infinity_right(values: pd.Series) -> tuple[np.ndarray, np.ndarray, float]:
    """A numeric label's values for a log x axis: inf ("no privacy", ``all`` shots) drawn one
    doubling right of the largest finite value. Returns the x values, which were finite, and
    where inf is drawn."""
    x = as_axis(values.tolist())
    finite = np.isfinite(x)
    right = x[finite].max() * 2 if finite.any() else 1.0
    return np.where(finite, x, right), finite, right


def _line_plot(table: pd.DataFrame, first: str, rest: list[str]) -> Figure:
    """Lines over the numeric label ``first`` (log scale, "no privacy" = inf one step right of
    the largest finite value, 0 one step left of the smallest positive one)."""
    drawn, finite, right = _infinity_right(table[first])
    x = as_axis(table[first].tolist())
    positive = finite & (x > 0)
    left = x[positive].min() / 2 if positive.any() else 0.5
    series = table.assign(_x=np.where(finite & (x <= 0), left, drawn))
    panels = [c for c in _LINE_PANELS if c in table.columns and table[c].notna().any()]
    figure = Figure(figsize=(7 * len(panels), 4))
    axes = figure.subplots(1, len(panels), squeeze=False)
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


#: The experts an ``experts`` experiment plot draws: PatchCore alone against each category's choice.
_PLOTTED_EXPERTS = {"texture": "tab:blue", "selected": "tab:red"}


def _experts_plot(table: pd.DataFrame) -> Figure:
    """Image AUC-ROC of PatchCore alone (``texture``) and of each category's chosen rule
    (``selected``) per run: one panel per category and ``mean``; with a numeric label (``shots``)
    as the x axis, one line per expert and other label (one line style per other label)."""
    table = table[table["expert"].isin(list(_PLOTTED_EXPERTS))]
    label_columns = list(table.columns[: list(table.columns).index("category")])
    categories = list(dict.fromkeys(table["category"]))
    figure = Figure(figsize=(3.2 * len(categories), 3.4))
    axes = figure.subplots(1, len(categories), squeeze=False, sharey=True)
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
            x, finite, right = _infinity_right(part[numeric])
            names = dict.fromkeys(part[others].astype(str).agg(" / ".join, axis=1))
            styles = dict(zip(names, ("-", "--", ":", "-."), strict=False))
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
            axis.set_xticks(ticks, ["all" if t == right and not finite.all() else f"{t:g}" for t in ticks])
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


def _per_group(table: pd.DataFrame, column: str, last: list[str], sort_runs: bool = True) -> pd.DataFrame:
    """Groups × runs of one column, the summary rows ``last`` at the end (runs in table order)."""
    wide = table.assign(run=_run_names(table)).pivot(index="group", columns="run", values=column)
    last = [g for g in last if g in wide.index]
    wide = wide.loc[[g for g in wide.index if g not in last] + last]
    return wide[list(dict.fromkeys(_run_names(table)))] if sort_runs else wide


def _run_names(table: pd.DataFrame) -> pd.Series:
    label_columns = list(table.columns[: list(table.columns).index("group")])
    return table[label_columns].astype(str).agg(" / ".join, axis=1)


# --------------------------------------------------------------------------------------------
# overlays


@dataclass
class OverlayRow:
    """One image of an overlay sheet."""

    title: str  # e.g. "worst miss: scratch/0003"
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W) ground truth (empty: none)
    anomaly_map: np.ndarray  # raw (H, W), drawn on the sheet's scale
    score: float


def _caption(axis, text: str) -> None:
    """A small title above an image axis. ``set_title`` would do the same, but matplotlib then
    re-positions every title at each draw (a third of an overlay sheet's save time)."""
    axis.text(0.5, 1.02, text, fontsize=8, ha="center", va="bottom", transform=axis.transAxes)


def _contour(axis, mask: np.ndarray | None, linewidth: float = 1.2) -> None:
    if mask is not None and np.any(mask):
        axis.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=linewidth)


def overlay_sheet(category: str, rows: list[OverlayRow], vmax: float) -> Figure:
    """One row per image: the image, the image with its ground-truth contour, and the anomaly map
    over the image (contour on top); every map on ONE colour scale, 0..``vmax``."""
    figure = Figure(figsize=(7.5, 2.5 * len(rows)))
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for axis_row, row in zip(axes, rows, strict=True):
        axis_row[0].imshow(row.image)
        _caption(axis_row[0], row.title)
        axis_row[1].imshow(row.image)
        _contour(axis_row[1], row.mask)
        _caption(axis_row[1], "ground truth" if row.mask.any() else "ground truth: none")
        axis_row[2].imshow(row.image)
        axis_row[2].imshow(row.anomaly_map, cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
        _contour(axis_row[2], row.mask)
        _caption(axis_row[2], f"score {row.score:.3f}")
        for axis in axis_row:
            axis.axis("off")
    figure.suptitle(f"{category}: anomaly maps (shared scale 0..{vmax:.2f})", fontsize=10)
    figure.tight_layout()
    return figure


@dataclass
class ExpertView:
    """One expert's view of an image: its map over the image, on the expert's own scale."""

    label: str  # e.g. "position" or "selected (sum)"
    anomaly_map: np.ndarray  # (H, W)
    score: float  # the expert's (z-normalised) image score
    vmin: float  # the expert's colour scale over the category's test maps
    vmax: float


def expert_views_sheet(title: str, image: np.ndarray, mask: np.ndarray, caption: str, views: list[ExpertView]) -> Figure:
    """One row: the image with its ground-truth contour, then the image under each view's map."""
    figure = Figure(figsize=(2.1 * (len(views) + 1), 2.6))
    axes = figure.subplots(1, len(views) + 1, squeeze=False)[0]
    axes[0].imshow(image)
    _contour(axes[0], mask)
    _caption(axes[0], caption)
    for axis, view in zip(axes[1:], views, strict=True):
        axis.imshow(image)
        axis.imshow(view.anomaly_map, cmap="jet", alpha=0.5, vmin=view.vmin, vmax=view.vmax)
        _contour(axis, mask)
        _caption(axis, f"{view.label}: z {view.score:.1f}")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def message_sheet(text: str) -> Figure:
    """A small figure holding one line of text (a folder of figures is never left empty)."""
    figure = Figure(figsize=(4, 1))
    axis = figure.subplots()
    axis.text(0.5, 0.5, text, ha="center", va="center")
    axis.axis("off")
    return figure


# --------------------------------------------------------------------------------------------
# an explanation


def _boxes(axis, explanation: dict[str, Any]) -> None:
    for patch in explanation["patches"]:
        top, left, bottom, right = patch["window"]
        axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="white", linewidth=1.2))
        axis.text(left, top - 1, str(patch["rank"] + 1), color="white", fontsize=7, va="bottom")


def _explanation_header(figure: Figure, cell, explanation: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The image with its patch boxes, its anomaly map, Grad-CAM, and the SHAP bars."""
    top = cell.subgridspec(1, 4, width_ratios=[1, 1, 1, 1.5])
    image, mask = arrays["image"], arrays.get("mask")
    axis = figure.add_subplot(top[0])
    axis.imshow(image)
    _contour(axis, mask, linewidth=1.0)
    _boxes(axis, explanation)
    axis.set_title(f"{explanation['key'] or 'image'}\nscore {explanation['image_score']:.3f}", fontsize=7)
    axes = [axis]
    for column, (name, title) in enumerate((("anomaly_map", "anomaly map"), ("gradcam", "Grad-CAM of the score")), start=1):
        axis = figure.add_subplot(top[column])
        axis.imshow(image)
        axis.imshow(arrays[name], cmap="jet", alpha=0.5)
        _contour(axis, mask, linewidth=1.0)
        axis.set_title(title, fontsize=8)
        axes.append(axis)
    for axis in axes:
        axis.axis("off")

    shap = explanation["shap"]
    axis = figure.add_subplot(top[3])
    dims = shap["top_dimensions"][::-1]
    axis.barh(
        [f"{d['stage']}[{d['channel']}]" for d in dims],
        [d["value"] for d in dims],
        color=["#c0392b" if d["value"] > 0 else "#2e86c1" for d in dims],
    )
    axis.tick_params(labelsize=6)
    axis.set_title(f"SHAP of patch 1's distance ({shap['patch_distance']:.2f})\nbase {shap['base_value']:.2f}", fontsize=7)


def _tile(axis, image: np.ndarray, title: str) -> None:
    axis.imshow(image)
    axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def _patch_row(figure: Figure, cell, patch: dict[str, Any], columns: int, crops: dict[str, np.ndarray], crop_size: int) -> None:
    """One explained patch, then its nearest bank rows: the asker's own pixels, or a blank tile."""
    cells = cell.subgridspec(1, columns)
    _tile(figure.add_subplot(cells[0]), crops[f"{QUERY}/p{patch['rank']}"], f"patch {patch['rank'] + 1} {tuple(patch['patch'])}\nscore {patch['score']:.2f}")
    for column, neighbour in enumerate(patch["neighbours"], start=1):
        axis = figure.add_subplot(cells[column])
        position = "?" if neighbour["patch"] is None else tuple(neighbour["patch"])
        caption = f"client {neighbour['client']} {position}\nd = {neighbour['distance']:.2f}"
        if neighbour["crop"] is not None:
            _tile(axis, crops[neighbour["crop"]], caption)
            continue
        # A blank tile of the crop's size: no pixel of another client is drawn.
        _tile(axis, np.broadcast_to(np.asarray(OTHER_CLIENT_TILE), (crop_size, crop_size, 3)), caption)
        axis.text(0.5, 0.5, "pixels stay\nwith the client", ha="center", va="center", fontsize=7, transform=axis.transAxes)


def draw_explanation(explanation: dict[str, Any], arrays: dict[str, np.ndarray], crops: dict[str, np.ndarray]) -> Figure:
    """The explanation as one figure, from its own outputs only: pixels come from ``crops`` alone
    (the explained image's patches and the asking client's own), a neighbour of another client
    is a text tile naming the client and the patch position."""
    patches = explanation["patches"]
    k = max((len(p["neighbours"]) for p in patches), default=0)
    figure = Figure(figsize=(2.1 * max(4, k + 1), 2.4 * (1 + len(patches))), layout="constrained")
    grid = figure.add_gridspec(1 + len(patches), 1)
    _explanation_header(figure, grid[0], explanation, arrays)
    for row, patch in enumerate(patches, start=1):
        _patch_row(figure, grid[row], patch, max(4, k + 1), crops, explanation["crop_size"])
    figure.suptitle(
        f"{explanation['category']}: nearest normal patches in the {explanation['variant']} bank "
        f"(pixels shown for client {explanation['asking_client'] or '-'} only)",
        fontsize=9,
    )
    return figure
