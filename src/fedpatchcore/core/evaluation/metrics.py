"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUC-sPRO (AutoVI / MVTec LOCO), PRO, F1.

Everything here takes plain arrays and returns plain Python floats / dicts (JSON-ready).

Pixel-level curves (pixel AUROC, sPRO, PRO) are computed on a fixed set of score thresholds
instead of sorting every pixel: one pass draws a strided subsample of scores to place the
thresholds (quantiles of the defect-free scores at evenly spaced FPR levels, plus quantiles of
the defective scores), a second pass counts, per image and per region, how many pixels lie
above each threshold (one ``searchsorted`` + ``bincount`` per image). The counts at those
thresholds are exact; only the curve between thresholds is interpolated, so with ``k`` FPR
levels per integration limit the normalised area is off by at most ``1 / (2k)`` and in
practice far less. Memory stays at a few arrays of one image at a time, whatever the number of
images (AutoVI: hundreds of 1000x750 maps). When the data are small enough (every score fits
in the subsample and there are few distinct values), every distinct score is a threshold and
the results are exact.

Thresholding follows the official MVTec LOCO / AutoVI evaluation: a pixel is predicted
anomalous when its score is strictly greater than the threshold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import rankdata

from fedpatchcore.core.data.types import DefectConfig

DEFAULT_INTEGRATION_LIMITS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0)
# Thresholds placed per integration limit (evenly spaced FPR levels in [0, limit]).
DEFAULT_NUM_THRESHOLDS = 500
# Thresholds for pixel AUROC: as many FPR levels in [0, 1] and as many defective-score quantiles.
DEFAULT_PIXEL_AUROC_THRESHOLDS = 2000
# Scores of each class (defect-free / defective pixels) drawn over all images to place thresholds.
SAMPLE_SIZE = 1_000_000
# Below this many distinct scores (and when nothing was subsampled) every score is a threshold.
MAX_EXACT_THRESHOLDS = 20_000
# MVTec AD PRO: connected components with 8-connectivity, as in the official evaluation code.
PRO_STRUCTURE = np.ones((3, 3), dtype=int)

SCALAR_KEYS = ("image_auroc", "pixel_auroc", "pro", "f1", "balanced_accuracy")


# --------------------------------------------------------------------------------------------
# Ground-truth regions (MVTec LOCO / AutoVI)
# --------------------------------------------------------------------------------------------


def saturation_area(region_mask: np.ndarray, saturation_threshold: float, relative_saturation: bool) -> float:
    """Overlap (pixels) at which the sPRO of one ground-truth region saturates to 1.

    MVTec LOCO / AutoVI ``defects_config.json`` semantics, as in the official evaluation code:
    relative -> ``int(threshold * region area)`` (truncated, like the official code, but at
    least one pixel for a non-empty region so that sPRO stays defined);
    absolute -> ``threshold`` pixels, capped at the region area. An empty region gives 0.
    """
    area = int(np.count_nonzero(region_mask))
    if area == 0:
        return 0.0
    if relative_saturation:
        if not 0.0 < saturation_threshold <= 1.0:
            raise ValueError(
                f"saturation_threshold must be in (0, 1] when relative, got {saturation_threshold}"
            )
        return float(max(int(saturation_threshold * area), 1))
    if saturation_threshold <= 0:
        raise ValueError(f"saturation_threshold must be positive, got {saturation_threshold}")
    return float(min(saturation_threshold, area))


@dataclass(frozen=True, eq=False)
class DefectRegion:
    """One ground-truth channel of one test image (AutoVI: one PNG of ground_truth/<defect>/<id>/)."""

    mask: np.ndarray  # bool (H, W)
    saturation_area: float  # pixels of overlap at which sPRO saturates to 1 for this region
    defect_name: str = ""

    @classmethod
    def from_config(cls, mask: np.ndarray, defect: DefectConfig) -> DefectRegion:
        """Region from a channel mask and its entry of defects_config.json."""
        mask = np.asarray(mask, dtype=bool)
        return cls(
            mask=mask,
            saturation_area=saturation_area(mask, defect.saturation_threshold, defect.relative_saturation),
            defect_name=defect.defect_name,
        )


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_1d(values, name: str, dtype=float) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_1d(scores, "scores")
    labels_raw = _as_1d(labels, "labels", dtype=None)
    if len(scores) != len(labels_raw):
        raise ValueError(f"scores and labels differ in length: {len(scores)} != {len(labels_raw)}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    if len(labels_raw) and not np.all(np.isin(labels_raw, (0, 1))):
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    return scores, labels_raw.astype(bool)


def _n_items(anomaly_maps, name: str = "anomaly_maps") -> int:
    if isinstance(anomaly_maps, np.ndarray) and anomaly_maps.ndim != 3:
        raise ValueError(f"{name} must be (n, H, W), got shape {anomaly_maps.shape}")
    return len(anomaly_maps)


def _map(anomaly_maps, i: int) -> np.ndarray:
    amap = np.asarray(anomaly_maps[i])
    if amap.ndim != 2:
        raise ValueError(f"anomaly_maps[{i}] must be 2-D (H, W), got shape {amap.shape}")
    if not np.issubdtype(amap.dtype, np.number) or np.issubdtype(amap.dtype, np.complexfloating):
        raise ValueError(f"anomaly_maps[{i}] must be real-valued, got dtype {amap.dtype}")
    return amap


def _mask(masks, i: int, shape: tuple[int, ...], name: str = "masks") -> np.ndarray:
    mask = np.asarray(masks[i])
    if mask.shape != shape:
        raise ValueError(f"{name}[{i}] has shape {mask.shape}, but anomaly_maps[{i}] has shape {shape}")
    return mask.astype(bool, copy=False)


def _check_masks(anomaly_maps, masks) -> int:
    n = _n_items(anomaly_maps)
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(f"masks must be (n, H, W), got shape {masks.shape}")
    if len(masks) != n:
        raise ValueError(f"anomaly_maps and masks differ in length: {n} != {len(masks)}")
    return n


# --------------------------------------------------------------------------------------------
# Threshold-binned pixel statistics (shared by pixel AUROC, sPRO and PRO)
# --------------------------------------------------------------------------------------------

# A region as the scan sees it: boolean mask, saturation area, defect name.
_Region = tuple[np.ndarray, float, str]


@dataclass
class _PixelStats:
    """Counts above each threshold; thresholds in descending order, the last one is -inf."""

    neg_above: np.ndarray  # (n_images, T) int64: defect-free pixels scoring above each threshold
    pos_above: np.ndarray  # (T,) int64: defective pixels (any region) above each threshold
    region_image: np.ndarray  # (n_regions,) image index of each region
    region_name: list[str]
    region_curves: np.ndarray  # (n_regions, T) saturated overlap of each region

    def fpr(self, images: np.ndarray | None = None) -> np.ndarray | None:
        neg = self.neg_above if images is None else self.neg_above[images]
        total = neg[:, -1].sum()
        if total == 0:
            return None
        return neg.sum(axis=0) / total

    def mean_overlap(self, images: np.ndarray | None = None, names: Iterable[str] | None = None):
        keep = np.ones(len(self.region_image), dtype=bool)
        if images is not None:
            keep &= np.isin(self.region_image, images)
        if names is not None:
            keep &= np.isin(np.asarray(self.region_name, dtype=object), list(names))
        if not keep.any():
            return None
        return self.region_curves[keep].mean(axis=0)


def _strided(values: np.ndarray, cap: int) -> np.ndarray:
    if len(values) <= cap:
        return values
    return values[:: math.ceil(len(values) / cap)]


def _pick_quantiles(sorted_values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0:
        return sorted_values
    index = np.floor(np.clip(levels, 0.0, 1.0) * (len(sorted_values) - 1)).astype(np.int64)
    return sorted_values[index]


def _counts_above(idx: np.ndarray, n_edges: int) -> np.ndarray:
    """Pixels above each threshold, thresholds edges[-1], ..., edges[0], -inf (length n_edges+1).

    ``idx`` = number of edges strictly below each score, so score > edges[j] <=> idx > j.
    """
    counts = np.bincount(idx, minlength=n_edges + 1)
    return np.cumsum(counts[::-1])


def _scan(
    anomaly_maps,
    positives: Callable[[int, np.ndarray], np.ndarray],
    regions: Callable[[int, np.ndarray], list[_Region]],
    fpr_levels: np.ndarray,
    num_positive_levels: int,
) -> _PixelStats:
    """Two passes over the maps: place thresholds, then count pixels above each of them.

    ``positives(i, amap)`` returns image i's defective-pixel mask (everything else is
    defect-free and counts for the FPR); ``regions(i, amap)`` its regions for overlap curves.
    """
    n = _n_items(anomaly_maps)
    cap = max(1, SAMPLE_SIZE // max(n, 1))
    neg_samples, pos_samples, extremes = [], [], []
    subsampled = False
    for i in range(n):
        amap = _map(anomaly_maps, i)
        if not np.all(np.isfinite(amap)):
            raise ValueError(f"anomaly_maps[{i}] contains NaN or inf")
        pos = positives(i, amap)
        neg_values, pos_values = amap[~pos], amap[pos]
        subsampled |= len(neg_values) > cap or len(pos_values) > cap
        neg_samples.append(_strided(neg_values, cap).astype(np.float64))
        pos_samples.append(_strided(pos_values, cap).astype(np.float64))
        extremes += [float(amap.min()), float(amap.max())]
    neg_sorted = np.sort(np.concatenate(neg_samples)) if neg_samples else np.zeros(0)
    pos_sorted = np.sort(np.concatenate(pos_samples)) if pos_samples else np.zeros(0)
    every = np.unique(np.concatenate([neg_sorted, pos_sorted, extremes]))
    if not subsampled and len(every) <= MAX_EXACT_THRESHOLDS:
        edges = every
    else:
        edges = np.unique(
            np.concatenate(
                [
                    _pick_quantiles(neg_sorted, 1.0 - fpr_levels),
                    _pick_quantiles(pos_sorted, np.linspace(0.0, 1.0, num_positive_levels)),
                    # The global extremes are thresholds in any case (FPR 0 and all-positive ends).
                    every[[0, -1]],
                ]
            )
        )
    n_edges = len(edges)

    neg_above = np.zeros((n, n_edges + 1), dtype=np.int64)
    pos_above = np.zeros(n_edges + 1, dtype=np.int64)
    region_image, region_name, region_curves = [], [], []
    for i in range(n):
        amap = _map(anomaly_maps, i)
        flat = amap.ravel()
        # Edges came from the maps' own values, so casting them to the map dtype is exact and
        # avoids a float64 copy of the map inside searchsorted.
        idx = np.searchsorted(edges.astype(flat.dtype), flat, side="left")
        pos = positives(i, amap).ravel()
        neg_above[i] = _counts_above(idx[~pos], n_edges)
        pos_above += _counts_above(idx[pos], n_edges)
        for region_mask, sat_area, name in regions(i, amap):
            tp_above = _counts_above(idx[region_mask.ravel()], n_edges)
            region_curves.append(np.minimum(tp_above / sat_area, 1.0))
            region_image.append(i)
            region_name.append(name)
    return _PixelStats(
        neg_above=neg_above,
        pos_above=pos_above,
        region_image=np.asarray(region_image, dtype=np.int64),
        region_name=region_name,
        region_curves=np.asarray(region_curves, dtype=np.float64).reshape(len(region_curves), n_edges + 1),
    )


def _fpr_levels(limits: Iterable[float], num_thresholds: int) -> np.ndarray:
    """Evenly spaced FPR levels in [0, limit] for every limit, plus a few just past it."""
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    parts = [np.array([0.0, 1.0])]
    for limit in limits:
        parts.append(np.linspace(0.0, limit, num_thresholds + 1))
        parts.append(np.minimum(limit * (1.0 + np.arange(1, 4) / num_thresholds), 1.0))
    return np.unique(np.concatenate(parts))


def _scan_regions(
    anomaly_maps,
    image_regions: Callable[[int, np.ndarray], tuple[np.ndarray, list[_Region]]],
    limits: Iterable[float],
    num_thresholds: int,
) -> _PixelStats:
    """:func:`_scan` for overlap curves: ``image_regions(i, amap)`` gives image i's defect mask
    and regions, computed once per image and pass (only the latest image is kept)."""
    cache: dict[int, tuple[np.ndarray, list[_Region]]] = {}

    def cached(i: int, amap: np.ndarray) -> tuple[np.ndarray, list[_Region]]:
        if i not in cache:
            cache.clear()
            cache[i] = image_regions(i, amap)
        return cache[i]

    return _scan(
        anomaly_maps,
        positives=lambda i, amap: cached(i, amap)[0],
        regions=lambda i, amap: cached(i, amap)[1],
        fpr_levels=_fpr_levels(limits, num_thresholds),
        num_positive_levels=num_thresholds + 1,
    )


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under y(x) on [0, limit] divided by limit (x ascending from 0 to 1).

    Same rule as the official MVTec evaluation ``trapz(x, y, x_max)``: trapezoids up to the
    last x <= limit, then a trapezoid to y linearly interpolated at ``limit``.
    """
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"integration limit must be in (0, 1], got {limit}")
    keep = x <= limit
    area = float(np.trapezoid(y[keep], x[keep]))
    last = int(keep.sum()) - 1
    if x[last] < limit:
        x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_limit) * (limit - x0)
    return min(max(float(area / limit), 0.0), 1.0)  # clip rounding noise such as 1.0000000000000002


def _limit_key(limit: float) -> str:
    return str(float(limit))


def _region_from_any(region, i: int, j: int, shape: tuple[int, ...]) -> _Region | None:
    mask = np.asarray(region.mask)
    if mask.shape != shape:
        raise ValueError(
            f"regions_per_image[{i}][{j}].mask has shape {mask.shape}, but anomaly_maps[{i}] has shape {shape}"
        )
    mask = mask.astype(bool, copy=False)
    if not mask.any() or region.saturation_area <= 0:
        return None
    return mask, float(region.saturation_area), str(region.defect_name)


def _spro_stats(anomaly_maps, regions_per_image, limits, num_thresholds) -> _PixelStats:
    n = _n_items(anomaly_maps)
    if len(regions_per_image) != n:
        raise ValueError(
            f"anomaly_maps and regions_per_image differ in length: {n} != {len(regions_per_image)}"
        )
    skipped = 0

    def image_regions(i: int, amap: np.ndarray) -> tuple[np.ndarray, list[_Region]]:
        nonlocal skipped
        kept = []
        for j, region in enumerate(regions_per_image[i] or ()):
            converted = _region_from_any(region, i, j, amap.shape)
            if converted is None:
                skipped += 1
            else:
                kept.append(converted)
        union = np.zeros(amap.shape, dtype=bool)
        for mask, _, _ in kept:
            union |= mask
        return union, kept

    stats = _scan_regions(anomaly_maps, image_regions, limits, num_thresholds)
    if skipped:
        # Both passes visit every region, so each empty one was counted twice.
        warnings.warn(f"{skipped // 2} empty ground-truth region(s) ignored in sPRO", stacklevel=3)
    return stats


def _auc_spro_from_stats(stats: _PixelStats, limits, images=None, names=None) -> dict[str, float] | None:
    spro = stats.mean_overlap(images, names)
    fpr = stats.fpr(images)
    if spro is None or fpr is None:
        return None
    return {_limit_key(limit): _area_up_to(fpr, spro, limit) for limit in limits}


# --------------------------------------------------------------------------------------------
# Public metrics
# --------------------------------------------------------------------------------------------


def image_auroc(scores, labels) -> float | None:
    """Area under the ROC curve of image scores (1 = anomalous); ties count one half.

    None when only one class is present.
    """
    scores, labels = _scores_labels(scores, labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney U with mid-ranks: the number of (anomalous, good) pairs ranked correctly.
    ranks = rankdata(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pixel_auroc(anomaly_maps, masks, num_thresholds: int = DEFAULT_PIXEL_AUROC_THRESHOLDS) -> float | None:
    """ROC AUC over every pixel of every image (masks: True = defective pixel).

    Threshold-binned (see module docstring); None when no pixel or every pixel is defective.
    """
    n = _check_masks(anomaly_maps, masks)
    if n == 0:
        return None
    stats = _scan(
        anomaly_maps,
        positives=lambda i, amap: _mask(masks, i, amap.shape),
        regions=lambda i, amap: [],
        fpr_levels=np.linspace(0.0, 1.0, num_thresholds + 1),
        num_positive_levels=num_thresholds + 1,
    )
    fpr = stats.fpr()
    if fpr is None or stats.pos_above[-1] == 0:
        return None
    tpr = stats.pos_above / stats.pos_above[-1]
    return min(max(float(np.trapezoid(tpr, fpr)), 0.0), 1.0)


def auc_spro(
    anomaly_maps,
    regions_per_image: Sequence[Sequence[DefectRegion] | None],
    integration_limits: Iterable[float] = DEFAULT_INTEGRATION_LIMITS,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
) -> dict[str, float] | None:
    """Normalised area under the sPRO-vs-FPR curve up to each integration limit (AutoVI).

    Per threshold, the sPRO of a region is min(|prediction AND region| / saturation_area, 1),
    averaged over all regions of all images. As in the official MVTec LOCO / AutoVI code
    (``get_fp_areas_for_thresholds``), the FPR is pooled over every defect-free pixel of every
    image passed in: all pixels of the good images AND the pixels of anomalous images outside
    the union of their regions (not over the good images alone). Good images have an empty
    region list. Empty regions are ignored (with a warning). Each area is divided by its limit,
    so values lie in [0, 1]. Keys are the limits as strings ("0.01", ..., "1.0"). None when
    there is no region or no defect-free pixel.
    """
    limits = tuple(float(limit) for limit in integration_limits)
    if _n_items(anomaly_maps) == 0:
        return None
    stats = _spro_stats(anomaly_maps, regions_per_image, limits, num_thresholds)
    return _auc_spro_from_stats(stats, limits)


def pro_auc(
    anomaly_maps, masks, fpr_limit: float = 0.3, num_thresholds: int = DEFAULT_NUM_THRESHOLDS
) -> float | None:
    """MVTec AD PRO: area under the per-region-overlap vs FPR curve up to fpr_limit, / fpr_limit.

    Regions are the 8-connected components of each mask; the overlap of a region is
    |prediction AND region| / |region|; the FPR is pooled over all non-defect pixels of all
    images. None when there is no defective pixel or no defect-free pixel.
    """
    n = _check_masks(anomaly_maps, masks)
    if n == 0:
        return None

    def components(i: int, amap: np.ndarray) -> tuple[np.ndarray, list[_Region]]:
        mask = _mask(masks, i, amap.shape)
        labelled, count = ndimage.label(mask, structure=PRO_STRUCTURE)
        regions = []
        for k in range(1, count + 1):
            component = labelled == k
            regions.append((component, float(component.sum()), ""))
        return mask, regions

    stats = _scan_regions(anomaly_maps, components, (fpr_limit,), num_thresholds)
    pro = stats.mean_overlap()
    fpr = stats.fpr()
    if pro is None or fpr is None:
        return None
    return _area_up_to(fpr, pro, float(fpr_limit))


def best_f1(scores, labels) -> dict[str, float | None]:
    """Operating point maximising F1 (predict anomalous when score >= threshold).

    Returns f1, threshold, balanced_accuracy, precision, recall at that point; ties in F1 go to
    the highest threshold. All None when one class is missing.
    """
    scores, labels = _scores_labels(scores, labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return dict.fromkeys(("f1", "threshold", "balanced_accuracy", "precision", "recall"))
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(~sorted_labels)
    # Only the last position of each run of equal scores is a valid cut (score >= threshold).
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp, fp, thresholds = tp[last_of_run], fp[last_of_run], sorted_scores[last_of_run]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    tnr = (n_neg - fp[best]) / n_neg
    return {
        "f1": float(f1[best]),
        "threshold": float(thresholds[best]),
        "balanced_accuracy": float((recall[best] + tnr) / 2),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
    }


def evaluate_category(
    image_scores,
    labels,
    defect_types: Sequence[str],
    anomaly_maps=None,
    masks=None,
    regions_per_image: Sequence[Sequence[DefectRegion] | None] | None = None,
    integration_limits: Iterable[float] = DEFAULT_INTEGRATION_LIMITS,
    pro_fpr_limit: float = 0.3,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
    pixel_auroc_thresholds: int = DEFAULT_PIXEL_AUROC_THRESHOLDS,
) -> dict:
    """Every metric of one category's test set, JSON-ready.

    Per-defect entries compare the images of one defect type (``defect_types``, label 1) with
    all good images (label 0); for AUC-sPRO that is the MVTec LOCO per-subdirectory rule (good
    images added), with the FPR over those images only. Pixel metrics are None when the maps or
    their ground truth (masks for pixel AUROC / PRO, regions for AUC-sPRO) are not given.
    """
    scores, label_array = _scores_labels(image_scores, labels)
    defect_array = np.asarray(list(defect_types), dtype=object)
    n = len(scores)
    if len(defect_array) != n:
        raise ValueError(f"image_scores and defect_types differ in length: {n} != {len(defect_array)}")
    for name, value in (
        ("anomaly_maps", anomaly_maps),
        ("masks", masks),
        ("regions_per_image", regions_per_image),
    ):
        if value is not None and len(value) != n:
            raise ValueError(f"image_scores and {name} differ in length: {n} != {len(value)}")
    limits = tuple(float(limit) for limit in integration_limits)

    good = ~label_array
    anomalous_types = sorted({str(d) for d in defect_array[label_array]})
    subsets = {d: np.flatnonzero(good | (label_array & (defect_array == d))) for d in anomalous_types}
    per_defect_auroc = {d: image_auroc(scores[idx], label_array[idx]) for d, idx in subsets.items()}

    pix_auroc = pro = spro = spro_per_defect = None
    if anomaly_maps is not None and masks is not None:
        pix_auroc = pixel_auroc(anomaly_maps, masks, num_thresholds=pixel_auroc_thresholds)
        pro = pro_auc(anomaly_maps, masks, fpr_limit=pro_fpr_limit, num_thresholds=num_thresholds)
    if anomaly_maps is not None and regions_per_image is not None and n > 0:
        stats = _spro_stats(anomaly_maps, regions_per_image, limits, num_thresholds)
        spro = _auc_spro_from_stats(stats, limits)
        if spro is not None:
            spro_per_defect = {
                d: _auc_spro_from_stats(stats, limits, images=idx) for d, idx in subsets.items()
            }

    operating_point = best_f1(scores, label_array)
    return {
        "image_auroc": image_auroc(scores, label_array),
        "image_auroc_per_defect": per_defect_auroc,
        "pixel_auroc": pix_auroc,
        "aucspro": spro,
        "aucspro_per_defect": spro_per_defect,
        "pro": pro,
        "f1": operating_point["f1"],
        "balanced_accuracy": operating_point["balanced_accuracy"],
        "threshold": operating_point["threshold"],
        "n_good": int(good.sum()),
        "n_anomalous": int(label_array.sum()),
    }


def _mean(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_over_categories(per_category: Mapping[str, Mapping]) -> dict:
    """Unweighted mean over categories of the scalar metrics of :func:`evaluate_category`.

    None entries are ignored; a key None in every category stays None. ``aucspro`` is averaged
    per integration limit. ``threshold`` is None (score scales differ between categories, a mean
    threshold means nothing); ``n_good`` / ``n_anomalous`` are summed; ``n_categories`` is added.
    Per-defect entries are not carried over (defect types differ between categories).
    """
    results = list(per_category.values())
    out: dict = {key: _mean([r.get(key) for r in results]) for key in SCALAR_KEYS}
    spro_dicts = [r["aucspro"] for r in results if r.get("aucspro") is not None]
    if spro_dicts:
        limit_keys = sorted({k for d in spro_dicts for k in d}, key=float)
        out["aucspro"] = {k: _mean([d.get(k) for d in spro_dicts]) for k in limit_keys}
    else:
        out["aucspro"] = None
    out["threshold"] = None
    out["n_good"] = int(sum(int(r.get("n_good") or 0) for r in results))
    out["n_anomalous"] = int(sum(int(r.get("n_anomalous") or 0) for r in results))
    out["n_categories"] = len(results)
    return out


def skipped_test_images(
    index_skipped: Iterable[Mapping], scoring_skipped: Mapping[str, Iterable[Mapping]], categories: Iterable[str]
) -> list[dict]:
    """Test images of ``categories`` that no metric counts, ``{"category", "path", "reason"}``.

    Two places leave a test image out: indexing, for a file whose header cannot be read
    (``index_skipped``: entries with ``category`` and ``split``; an entry without them, from an
    index written before they were recorded, cannot be placed and is left out), and scoring, for
    one that fails to decode in full (``scoring_skipped``: per category, ``{"path", "reason"}``).
    Sorted by category, then path.
    """
    chosen = set(categories)
    found = [
        {"category": entry["category"], "path": entry["path"], "reason": entry["reason"]}
        for entry in index_skipped
        if entry.get("split") == "test" and entry.get("category") in chosen
    ]
    found += [
        {"category": category, **entry}
        for category, entries in scoring_skipped.items()
        if category in chosen
        for entry in entries
    ]
    return sorted(found, key=lambda entry: (entry["category"], entry["path"]))


def metrics_table(metrics: Mapping, spro_limit: str = "0.05") -> pd.DataFrame:
    """Per-category image AUC-ROC, AUC-sPRO@limit, pixel AUROC, PRO and F1, plus the mean row."""
    rows = {**metrics["categories"], "mean": metrics["mean"]}
    table = pd.DataFrame(
        {
            name: {
                "image_auroc": values.get("image_auroc"),
                f"aucspro@{spro_limit}": (values.get("aucspro") or {}).get(spro_limit),
                "pixel_auroc": values.get("pixel_auroc"),
                "pro": values.get("pro"),
                "f1": values.get("f1"),
            }
            for name, values in rows.items()
        }
    ).T
    return table.astype(float)


# --------------------------------------------------------------------------------------------
# Fairness: how evenly categories and clients are served
# --------------------------------------------------------------------------------------------

FAIRNESS_GROUPINGS = ("category", "client")


def _flat_metrics(values: Mapping) -> dict[str, float | None]:
    """``image_auroc`` and ``aucspro_<limit>`` of one metrics entry (table column names)."""
    out = {"image_auroc": values.get("image_auroc")}
    for limit, value in sorted((values.get("aucspro") or {}).items(), key=lambda kv: float(kv[0])):
        out[f"aucspro_{limit}"] = value
    return out


def group_spread(values: Mapping[str, float | None]) -> dict:
    """Worst and best group (and which), best−worst gap, population std and mean of one metric.

    None values (a group where the metric is undefined) are left out; all None gives Nones.
    Ties go to the first group in order.
    """
    kept = {group: float(v) for group, v in values.items() if v is not None}
    if not kept:
        return dict.fromkeys(("worst", "worst_group", "best", "best_group", "gap", "std", "mean")) | {"n_groups": 0}
    worst_group = min(kept, key=kept.get)
    best_group = max(kept, key=kept.get)
    array = np.fromiter(kept.values(), dtype=np.float64)
    return {
        "worst": kept[worst_group],
        "worst_group": worst_group,
        "best": kept[best_group],
        "best_group": best_group,
        "gap": kept[best_group] - kept[worst_group],
        "std": float(array.std()),
        "mean": float(array.mean()),
        "n_groups": len(kept),
    }


def _grouping(groups: Mapping[str, Mapping[str, float | None]]) -> dict:
    names = [name for values in groups.values() for name in values]
    metrics = list(dict.fromkeys(names))
    return {
        "groups": {group: dict(values) for group, values in groups.items()},
        "summary": {metric: group_spread({g: v.get(metric) for g, v in groups.items()}) for metric in metrics},
    }


def fairness_metrics(
    per_category: Mapping[str, Mapping], members: Mapping[str, Sequence[str]] | None = None
) -> dict:
    """Per-group image AUC-ROC and AUC-sPRO, and their spread (:func:`group_spread`), JSON-ready.

    ``category``: every category of ``per_category`` (entries of :func:`evaluate_category`).
    ``client`` (when ``members`` maps each client to the categories it holds): a client's score
    is the unweighted mean over the categories it holds of their metrics, i.e. how well the bank
    serves the products that site inspects; each category is scored on its whole test set. The
    clients' categories are listed under ``members``.
    """
    categories = {category: _flat_metrics(values) for category, values in per_category.items()}
    out = {"category": _grouping(categories)}
    if members is not None:
        clients = {}
        for client, held in members.items():
            rows = [categories[c] for c in held if c in categories]
            names = list(dict.fromkeys(name for row in rows for name in row)) or ["image_auroc"]
            clients[str(client)] = {name: _mean([row.get(name) for row in rows]) for name in names}
        out["client"] = _grouping(clients)
        out["client"]["members"] = {str(client): [c for c in held if c in categories] for client, held in members.items()}
    return out
