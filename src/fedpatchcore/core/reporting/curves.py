"""What the report draws, computed without drawing: curve points, which images to show, bank shares.

* :func:`roc_curve`: the image-level ROC curve (every distinct score is a threshold), whose
  trapezoid area is :func:`fedpatchcore.core.evaluation.metrics.image_auroc`.
* :func:`spro_curve`: the sPRO-vs-FPR curve up to an FPR limit, on the same thresholds and
  with the same FPR pooling as :func:`fedpatchcore.core.evaluation.metrics.auc_spro`, so its normalised
  area is the reported AUC-sPRO at that limit.
* :func:`pick_overlays`: the test images worth looking at: the highest-scoring defects, the
  defects the model missed worst (lowest scores) and the worst false alarms (highest-scoring
  good images).
* :func:`bank_contributions`: rows of the global memory bank kept from each client, per category.

Plain numpy/pandas; no plotting and no Kedro here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.evaluation.metrics import (
    DEFAULT_NUM_THRESHOLDS,
    DefectRegion,
    _area_up_to,
    _scores_labels,
    _spro_stats,
)

# Overlay groups, in the order the report shows them.
TOP_DEFECTS = "top defect"
WORST_MISSES = "worst miss"
WORST_FALSE_ALARMS = "worst false alarm"
OVERLAY_GROUPS = (TOP_DEFECTS, WORST_MISSES, WORST_FALSE_ALARMS)

# Client id of bank rows whose origin the bank does not record.
UNKNOWN_CLIENT = "unknown"


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------


def roc_curve(scores, labels) -> dict[str, list[float]] | None:
    """ROC points of image scores (1 = anomalous; predicted anomalous when score >= threshold).

    Starts at (0, 0) with threshold +inf and adds one point per distinct score, highest first,
    so it ends at (1, 1). None when only one class is present.
    """
    scores, labels = _scores_labels(scores, labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(~sorted_labels)
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return {
        "fpr": [0.0, *(fp[last_of_run] / n_neg).tolist()],
        "tpr": [0.0, *(tp[last_of_run] / n_pos).tolist()],
        "threshold": [float("inf"), *sorted_scores[last_of_run].tolist()],
    }


def curve_area(fpr: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under a curve given as increasing FPR points."""
    return float(np.trapezoid(np.asarray(values, dtype=float), np.asarray(fpr, dtype=float)))


def spro_curve(
    anomaly_maps,
    regions_per_image: Sequence[Sequence[DefectRegion] | None],
    max_fpr: float = 0.3,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
) -> dict[str, list[float]] | None:
    """Mean saturated per-region overlap (sPRO) against the pooled FPR, for FPR in [0, max_fpr].

    Same thresholds and FPR pooling as :func:`fedpatchcore.core.evaluation.metrics.auc_spro`; the last
    point is interpolated at exactly ``max_fpr``, so ``curve_area / max_fpr`` is the AUC-sPRO
    at that limit. None when there is no region or no defect-free pixel.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if len(anomaly_maps) == 0:
        return None
    stats = _spro_stats(anomaly_maps, regions_per_image, (float(max_fpr),), num_thresholds)
    spro, fpr = stats.mean_overlap(), stats.fpr()
    if spro is None or fpr is None:
        return None
    keep = fpr <= max_fpr
    x, y = fpr[keep], spro[keep]
    last = int(keep.sum()) - 1
    if x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[last], fpr[last + 1], spro[last], spro[last + 1]
        x = np.r_[x, max_fpr]
        y = np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    area = _area_up_to(fpr, spro, float(max_fpr))
    return {"fpr": x.tolist(), "spro": y.tolist(), "auc_normalised": area}


# --------------------------------------------------------------------------------------------
# which test images to show
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlayPick:
    key: str
    group: str  # one of OVERLAY_GROUPS
    score: float
    label: int  # 1 anomalous, 0 good


def pick_overlays(keys: Sequence[str], scores, labels, per_group: int) -> list[OverlayPick]:
    """Up to ``per_group`` images of each group, group by group (see :data:`OVERLAY_GROUPS`).

    * top defects: anomalous images, highest score first;
    * worst misses: anomalous images, lowest score first (not already a top defect);
    * worst false alarms: good images, highest score first.

    Equal scores keep the order of ``keys``. An image appears at most once.
    """
    if per_group < 0:
        raise ValueError(f"per_group must be >= 0, got {per_group}")
    scores, labels = _scores_labels(scores, labels)
    keys = [str(k) for k in keys]
    if len(keys) != len(scores):
        raise ValueError(f"keys and scores differ in length: {len(keys)} != {len(scores)}")
    anomalous = np.flatnonzero(labels)
    good = np.flatnonzero(~labels)
    by_score_desc = lambda rows: rows[np.argsort(-scores[rows], kind="stable")]  # noqa: E731
    by_score_asc = lambda rows: rows[np.argsort(scores[rows], kind="stable")]  # noqa: E731

    picks: list[OverlayPick] = []
    taken: set[int] = set()
    for group, ordered in (
        (TOP_DEFECTS, by_score_desc(anomalous)),
        (WORST_MISSES, by_score_asc(anomalous)),
        (WORST_FALSE_ALARMS, by_score_desc(good)),
    ):
        chosen = [int(row) for row in ordered if int(row) not in taken][:per_group]
        taken.update(chosen)
        picks.extend(OverlayPick(keys[row], group, float(scores[row]), int(labels[row])) for row in chosen)
    return picks


# --------------------------------------------------------------------------------------------
# who contributed to the global bank
# --------------------------------------------------------------------------------------------

CONTRIBUTION_COLUMNS = ["category", "client", "rows", "share"]


def bank_contributions(banks: CategoryBanks) -> pd.DataFrame:
    """Rows of the memory bank kept from each client, per category, and their share of the category.

    One row per (category, client) with at least one bank row; rows whose origin the bank does
    not record count for client ``unknown``.
    """
    records = []
    for category in sorted(banks.banks):
        n_rows = len(banks.banks[category])
        origin = banks.origin.get(category)
        if origin is None or len(origin) != n_rows:
            origin = np.full(n_rows, UNKNOWN_CLIENT)
        clients, counts = np.unique(np.asarray(origin, dtype=str), return_counts=True)
        for client, count in zip(clients, counts, strict=True):
            records.append(
                {
                    "category": category,
                    "client": str(client),
                    "rows": int(count),
                    "share": float(count / n_rows) if n_rows else 0.0,
                }
            )
    return pd.DataFrame(records, columns=CONTRIBUTION_COLUMNS)
