"""OK/NOK thresholds per category, calibrated on defect-free validation images only.

A threshold is chosen so that at most a target share of *good* images is flagged
(``max_false_alarm_rate``, parameter ``predict.max_false_alarm_rate``). Only good
validation scores go in: no test image and no label of any anomalous image is needed, so
calibration cannot leak test information. An image is NOK when its score is strictly
above the threshold.

Methods (parameter ``predict.calibration``):

* ``"conformal"`` (default): the ``ceil((n + 1)(1 - a))``-th smallest of ``n`` good
  scores. A new good image of the same process is then flagged with probability at most
  ``a`` (split-conformal guarantee; exactly ``(n + 1 - k) / (n + 1)`` without ties). Needs
  ``n >= 1/a - 1`` good images; with fewer, the largest good score is used and
  :attr:`Calibration.guaranteed` is False (expected false-alarm rate ``1 / (n + 1)``).
* ``"quantile"``: the largest threshold that flags at most ``floor(a n)`` calibration images
  (false-alarm rate on the calibration set itself <= ``a``; on new images a bit above).
* ``"gaussian"``: ``mean + z_(1-a) * std`` of the good scores; reaches targets below
  ``1 / n`` on few images, valid only if the good scores' tail is roughly normal.

Per-category normalisation (:meth:`Calibration.normalise`) maps a category's median good
score to 0 and its threshold to 1, so scores of different categories (different backbones,
resolutions, bank densities) can be shown on one scale and compared with one cut-off (1).
It is for thresholds and display ONLY: AUROC and every other metric are computed on the
raw scores (DESIGN: never normalise before scoring; a per-category affine map leaves each
category's AUROC unchanged, but pooling normalised scores across categories changes it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_METHODS",
    "Calibration",
    "calibrate",
    "calibrate_categories",
    "calibrations_from_dict",
    "calibrations_to_dict",
    "calibrations_to_frame",
    "false_alarm_rate",
    "threshold_at_false_alarm_rate",
]

CALIBRATION_METHODS = ("conformal", "quantile", "gaussian")


def _good_scores(scores) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("calibration needs at least one good validation score")
    if not np.isfinite(values).all():
        raise ValueError("good validation scores must be finite")
    return values


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"predict.max_false_alarm_rate must be in [0, 1), got {rate}")
    return rate


def false_alarm_rate(good_scores, threshold: float) -> float:
    """Share of good scores strictly above ``threshold`` (what would be flagged NOK)."""
    values = _good_scores(good_scores)
    return float((values > float(threshold)).mean())


def threshold_at_false_alarm_rate(
    good_scores, max_false_alarm_rate: float, method: str = "conformal"
) -> tuple[float, bool]:
    """Threshold for ``good_scores`` at ``max_false_alarm_rate``; and whether the method's
    guarantee holds with this many scores (always True for ``quantile`` / ``gaussian``)."""
    values = np.sort(_good_scores(good_scores))
    rate = _check_rate(max_false_alarm_rate)
    n = len(values)
    if method == "conformal":
        k = math.ceil((n + 1) * (1.0 - rate) - 1e-9)  # 1-based rank
        if k > n:
            return float(values[-1]), False
        return float(values[k - 1]), True
    if method == "quantile":
        allowed = math.floor(rate * n + 1e-9)  # good images that may be flagged
        return float(values[n - 1 - allowed]) if allowed < n else float(values[0]), True
    if method == "gaussian":
        from scipy.stats import norm

        if n < 2:
            return float(values[-1]), False
        z = float(norm.ppf(1.0 - rate)) if rate > 0 else float(norm.ppf(1.0 - 1e-6))
        return float(values.mean() + z * values.std(ddof=1)), True
    raise ValueError(f"Unknown predict.calibration {method!r}; choose one of {list(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class Calibration:
    """One category's OK/NOK decision rule, from its good validation images only."""

    category: str
    threshold: float  # raw image-score units; NOK iff score > threshold
    pixel_threshold: float  # raw anomaly-map units; defect mask = map > pixel_threshold
    location: float  # median good validation score (normalised score 0)
    scale: float  # threshold - location (> 0): the threshold is normalised score 1
    max_false_alarm_rate: float
    method: str
    n_good: int
    calibration_false_alarm_rate: float  # share of the calibration scores above the threshold
    guaranteed: bool  # False: too few good images for the method's guarantee at this rate

    def normalise(self, scores) -> np.ndarray:
        """``(score - location) / scale``: 0 = a typical good image, 1 = the threshold."""
        return (np.asarray(scores, dtype=np.float64) - self.location) / self.scale

    def is_anomalous(self, scores) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def labels(self, scores) -> list[str]:
        return ["NOK" if flag else "OK" for flag in np.atleast_1d(self.is_anomalous(scores))]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Calibration:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


def calibrate(
    good_scores,
    max_false_alarm_rate: float = 0.05,
    method: str = "conformal",
    category: str = "",
    good_map_maxima=None,
) -> Calibration:
    """Calibrate one category on the image scores of its good validation images.

    ``good_map_maxima``: the maxima of the same images' anomaly maps, when the image score is
    not the map maximum (``topk_mean``, reweighting); the defect-mask threshold is then
    calibrated on them at the same rate. Default: the image threshold (image score = map max).
    """
    values = _good_scores(good_scores)
    threshold, guaranteed = threshold_at_false_alarm_rate(values, max_false_alarm_rate, method)
    if good_map_maxima is None:
        pixel_threshold = threshold
    else:
        pixel_threshold, _ = threshold_at_false_alarm_rate(good_map_maxima, max_false_alarm_rate, method)
    location = float(np.median(values))
    scale = threshold - location
    if not scale > 0:
        # all good scores (nearly) equal: fall back to their spread, then to a relative epsilon
        spread = float(values.std())
        scale = spread if spread > 0 else max(abs(threshold), 1.0) * 1e-6
    if not guaranteed:
        logger.warning(
            "%s: %d good validation images are too few for a %s threshold at a %.3g false-alarm "
            "rate (needs %d); using the largest good score (expected false-alarm rate ~%.3g)",
            category or "calibration",
            len(values),
            method,
            max_false_alarm_rate,
            math.ceil(1.0 / max(max_false_alarm_rate, 1e-12) - 1),
            1.0 / (len(values) + 1),
        )
    return Calibration(
        category=str(category),
        threshold=float(threshold),
        pixel_threshold=float(pixel_threshold),
        location=location,
        scale=float(scale),
        max_false_alarm_rate=float(max_false_alarm_rate),
        method=str(method),
        n_good=int(len(values)),
        calibration_false_alarm_rate=false_alarm_rate(values, threshold),
        guaranteed=bool(guaranteed),
    )


def calibrate_categories(
    good_scores: Mapping[str, np.ndarray],
    max_false_alarm_rate: float = 0.05,
    method: str = "conformal",
    good_map_maxima: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Calibration]:
    """:func:`calibrate` for every category of ``good_scores`` (good validation images only)."""
    return {
        category: calibrate(
            scores,
            max_false_alarm_rate,
            method,
            category=category,
            good_map_maxima=None if good_map_maxima is None else good_map_maxima.get(category),
        )
        for category, scores in sorted(good_scores.items())
    }


def calibrations_to_dict(calibrations: Mapping[str, Calibration]) -> dict[str, dict]:
    """JSON-ready ``{category: {...}}`` (the form the catalog persists)."""
    return {category: calibration.to_dict() for category, calibration in calibrations.items()}


def calibrations_from_dict(data: Mapping[str, Mapping]) -> dict[str, Calibration]:
    return {category: Calibration.from_dict(entry) for category, entry in data.items()}


def calibrations_to_frame(calibrations: Mapping[str, Calibration]) -> pd.DataFrame:
    """One row per category, for the report."""
    return pd.DataFrame([c.to_dict() for c in calibrations.values()])
