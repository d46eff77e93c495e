"""Thresholds at a target false-alarm rate, from good validation scores only."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.evaluation.metrics import image_auroc
from fedpatchcore.core.scoring.thresholds import (
    Calibration,
    calibrate,
    calibrate_categories,
    calibrations_from_dict,
    calibrations_to_dict,
    calibrations_to_frame,
    false_alarm_rate,
    threshold_at_false_alarm_rate,
)


def test_hand_made_scores_quantile_and_conformal():
    good = np.arange(1, 21, dtype=float)  # 1 .. 20
    # quantile: floor(0.1 * 20) = 2 may be flagged -> threshold 18 flags 19 and 20
    t, ok = threshold_at_false_alarm_rate(good, 0.1, "quantile")
    assert t == 18.0 and ok and false_alarm_rate(good, t) == pytest.approx(0.10)
    # conformal: k = ceil(21 * 0.9) = 19 -> threshold 19; a new good image is above it w.p. 2/21
    t, ok = threshold_at_false_alarm_rate(good, 0.1, "conformal")
    assert t == 19.0 and ok and false_alarm_rate(good, t) == pytest.approx(0.05)
    # zero target: nothing good may be flagged
    assert threshold_at_false_alarm_rate(good, 0.0, "quantile")[0] == 20.0
    # too few images for the conformal guarantee at 1 %
    t, ok = threshold_at_false_alarm_rate(good, 0.01, "conformal")
    assert t == 20.0 and not ok


def test_gaussian_threshold():
    good = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    t, ok = threshold_at_false_alarm_rate(good, 0.05, "gaussian")
    assert ok and t == pytest.approx(3.0 + 1.6448536 * np.std(good, ddof=1), rel=1e-6)


def test_false_alarm_rate_on_new_good_images_is_close_to_target():
    """Calibrate on 400 good scores; new good scores of the same process are flagged ~5 %."""
    rng = np.random.default_rng(0)
    for method in ("conformal", "quantile", "gaussian"):
        rates = []
        for trial in range(20):
            calibration_scores = rng.normal(10, 1, 400)
            new_scores = rng.normal(10, 1, 2000)
            cal = calibrate(calibration_scores, 0.05, method, category=f"t{trial}")
            rates.append(false_alarm_rate(new_scores, cal.threshold))
        assert abs(np.mean(rates) - 0.05) < 0.012, (method, np.mean(rates))
        assert cal.calibration_false_alarm_rate <= 0.05 + 1e-9 or method == "gaussian"


def test_calibration_normalises_for_thresholds_only():
    cal = calibrate([1.0, 2.0, 3.0, 4.0, 10.0], 0.2, "quantile", category="a")
    assert cal.threshold == 4.0 and cal.location == 3.0 and cal.scale == 1.0
    np.testing.assert_allclose(cal.normalise([3.0, 4.0, 5.0]), [0.0, 1.0, 2.0])
    assert cal.labels([3.9, 4.0, 4.1]) == ["OK", "OK", "NOK"]
    assert cal.pixel_threshold == cal.threshold
    # a per-category affine map never changes that category's AUROC
    scores, labels = np.array([1.0, 5.0, 2.0, 7.0]), np.array([0, 1, 0, 1])
    assert image_auroc(cal.normalise(scores), labels) == image_auroc(scores, labels)


def test_pixel_threshold_from_map_maxima():
    cal = calibrate([1.0, 2.0, 3.0], 0.0, "quantile", good_map_maxima=[5.0, 6.0, 7.0])
    assert cal.threshold == 3.0 and cal.pixel_threshold == 7.0


def test_per_category_and_round_trip():
    cals = calibrate_categories({"b": [1.0, 2.0, 3.0], "a": [10.0, 20.0, 30.0]}, 0.0, "quantile")
    assert list(cals) == ["a", "b"] and cals["a"].threshold == 30.0 and cals["b"].threshold == 3.0
    again = calibrations_from_dict(calibrations_to_dict(cals))
    assert again == cals and isinstance(again["a"], Calibration)
    frame = calibrations_to_frame(cals)
    assert list(frame["category"]) == ["a", "b"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        calibrate([], 0.05)
    with pytest.raises(ValueError, match="max_false_alarm_rate"):
        calibrate([1.0], 1.0)
    with pytest.raises(ValueError, match="predict.calibration"):
        calibrate([1.0, 2.0], 0.05, method="magic")
    flat = calibrate([2.0, 2.0, 2.0], 0.0, "quantile")
    assert flat.scale > 0 and np.isfinite(flat.normalise([2.0])).all()
