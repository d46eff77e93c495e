"""The explanation drawn as one figure, from the explanation's own outputs only.

Pixels come from ``crops`` alone (the explained image's patches and the asking client's own
training patches); a neighbour from another client is drawn as a text tile naming the
client and the patch position, so the figure shows nothing the crops do not hold.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from fedpatchcore.core.reporting.style import CONTOUR_COLOUR

OTHER_CLIENT_TILE = (0.91, 0.92, 0.94)  # blank tile standing in for another client's patch


def _boxes(axis, explanation: dict[str, Any]) -> None:
    for patch in explanation["patches"]:
        top, left, bottom, right = patch["window"]
        axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="white", linewidth=1.2))
        axis.text(left, top - 1, str(patch["rank"] + 1), color="white", fontsize=7, va="bottom")


def _contour(axis, arrays: dict[str, np.ndarray]) -> None:
    mask = arrays.get("mask")
    if mask is not None and np.any(mask):
        axis.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=1.0)


def draw_explanation(explanation: dict[str, Any], arrays: dict[str, np.ndarray], crops: dict[str, np.ndarray]) -> plt.Figure:
    patches = explanation["patches"]
    k = max((len(p["neighbours"]) for p in patches), default=0)
    figure = plt.figure(figsize=(2.1 * max(4, k + 1), 2.4 * (1 + len(patches))), layout="constrained")
    grid = figure.add_gridspec(1 + len(patches), 1)
    top = grid[0].subgridspec(1, 4, width_ratios=[1, 1, 1, 1.5])
    image = arrays["image"]

    axis = figure.add_subplot(top[0])
    axis.imshow(image)
    _contour(axis, arrays)
    _boxes(axis, explanation)
    axis.set_title(f"{explanation['key'] or 'image'}\nscore {explanation['image_score']:.3f}", fontsize=7)
    for column, (name, title) in enumerate((("anomaly_map", "anomaly map"), ("gradcam", "Grad-CAM of the score")), start=1):
        axis = figure.add_subplot(top[column])
        axis.imshow(image)
        axis.imshow(arrays[name], cmap="jet", alpha=0.5)
        _contour(axis, arrays)
        axis.set_title(title, fontsize=8)
    for axis in figure.axes:
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
    axis.set_title(
        f"SHAP of patch 1's distance ({shap['patch_distance']:.2f})\nbase {shap['base_value']:.2f}", fontsize=7
    )

    for row, patch in enumerate(patches, start=1):
        cells = grid[row].subgridspec(1, max(4, k + 1))
        axis = figure.add_subplot(cells[0])
        axis.imshow(crops[f"query/p{patch['rank']}"])
        axis.set_title(f"patch {patch['rank'] + 1} {tuple(patch['patch'])}\nscore {patch['score']:.2f}", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
        for column, neighbour in enumerate(patch["neighbours"], start=1):
            axis = figure.add_subplot(cells[column])
            position = "?" if neighbour["patch"] is None else tuple(neighbour["patch"])
            caption = f"client {neighbour['client']} {position}\nd = {neighbour['distance']:.2f}"
            if neighbour["crop"] is not None:
                axis.imshow(crops[neighbour["crop"]])
            else:
                # A blank tile of the crop's size: no pixel of another client is drawn.
                size = explanation["crop_size"]
                axis.imshow(np.broadcast_to(np.asarray(OTHER_CLIENT_TILE), (size, size, 3)))
                axis.text(0.5, 0.5, "pixels stay\nwith the client", ha="center", va="center", fontsize=7, transform=axis.transAxes)
            axis.set_title(caption, fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(
        f"{explanation['category']}: nearest normal patches in the {explanation['variant']} bank "
        f"(pixels shown for client {explanation['asking_client'] or '-'} only)",
        fontsize=9,
    )
    return figure
