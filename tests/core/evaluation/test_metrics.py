"""Metrics against hand-computed cases (reasoning in the comments), plus sklearn cross-checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedpatchcore.core.data.types import DefectConfig
from fedpatchcore.core.evaluation import metrics
from fedpatchcore.core.evaluation.metrics import (
    DefectRegion,
    auc_spro,
    best_f1,
    evaluate_category,
    image_auroc,
    mean_over_categories,
    pixel_auroc,
    pro_auc,
    saturation_area,
)

LIMIT_KEYS = ["0.01", "0.05", "0.1", "0.3", "1.0"]


def _region(mask, sat: float, name: str = "d") -> DefectRegion:
    return DefectRegion(mask=np.asarray(mask, dtype=bool), saturation_area=sat, defect_name=name)


# ------------------------------------------------------------------ image AUROC


def test_image_auroc_by_hand():
    # Anomalous 0.35 beats good 0.1, loses to good 0.4; anomalous 0.8 beats both -> 3 of 4 pairs.
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_image_auroc_ties_count_half():
    # Pairs (anomalous, good): (0.5, 0.5) tie -> 1/2; (0.2, 0.5) wrong -> 0. AUROC = 0.5 / 2.
    assert image_auroc([0.5, 0.5, 0.2], [0, 1, 1]) == pytest.approx(0.25)
    # Anomalous 0.5 ties with both good 0.5 (2 x 1/2), anomalous 0.9 beats both (2) -> 3 / 4.
    assert image_auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)


def test_image_auroc_perfect_useless_and_one_class():
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert image_auroc([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1]) == 0.5  # constant score: every pair ties
    assert image_auroc([0.1, 0.2], [1, 1]) is None
    assert image_auroc([], []) is None


def test_image_auroc_matches_sklearn_and_is_a_float():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    value = image_auroc(scores, labels)
    assert type(value) is float
    assert value == pytest.approx(roc_auc_score(labels, scores))


def test_bad_image_inputs_name_the_argument():
    with pytest.raises(ValueError, match="scores and labels"):
        image_auroc([0.1, 0.2], [0])
    with pytest.raises(ValueError, match="labels"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="scores"):
        image_auroc([0.1, np.nan], [0, 1])


# ------------------------------------------------------------------ F1 / balanced accuracy


def test_best_f1_by_hand():
    # Scores 0.9 0.8 0.7 0.6 0.2 with labels 1 0 1 1 0 (3 anomalous, 2 good); predict score >= t:
    #   t=0.9: TP1 FP0 -> P 1,   R 1/3, F1 0.5
    #   t=0.8: TP1 FP1 -> P 1/2, R 1/3, F1 0.4
    #   t=0.7: TP2 FP1 -> P 2/3, R 2/3, F1 2/3
    #   t=0.6: TP3 FP1 -> P 3/4, R 1,   F1 6/7   <- best
    #   t=0.2: TP3 FP2 -> P 3/5, R 1,   F1 3/4
    # At t=0.6: TNR = 1/2 (good 0.2 below, good 0.8 above) -> balanced accuracy (1 + 1/2) / 2.
    result = best_f1([0.9, 0.8, 0.7, 0.6, 0.2], [1, 0, 1, 1, 0])
    assert result["f1"] == pytest.approx(6 / 7)
    assert result["threshold"] == pytest.approx(0.6)
    assert result["precision"] == pytest.approx(0.75)
    assert result["recall"] == pytest.approx(1.0)
    assert result["balanced_accuracy"] == pytest.approx(0.75)


def test_best_f1_ties_are_one_cut_and_one_class_is_none():
    # The tied 0.5s cannot be split, so the only cuts are >= 0.5 and >= 0.1:
    # >= 0.5: TP1 FP1 -> P 1/2, R 1, F1 2/3;  >= 0.1: TP1 FP2 -> P 1/3, R 1, F1 1/2.
    result = best_f1([0.5, 0.5, 0.1], [1, 0, 0])
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["threshold"] == 0.5
    assert all(v is None for v in best_f1([0.1, 0.2], [0, 0]).values())


# ------------------------------------------------------------------ pixel AUROC


def test_pixel_auroc_by_hand():
    # Defective pixels 0.9, 0.3; defect-free 0.1, 0.2, 0.4, 0.0 (two 1x3 images).
    # 0.9 beats all 4; 0.3 beats 0.1, 0.2, 0.0 -> 7 of 8 pairs.
    maps = np.array([[[0.9, 0.1, 0.2]], [[0.3, 0.4, 0.0]]])
    masks = np.array([[[1, 0, 0]], [[1, 0, 0]]], dtype=bool)
    assert pixel_auroc(maps, masks) == pytest.approx(7 / 8)


def test_pixel_auroc_binned_close_to_sklearn(monkeypatch):
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 20, 20), dtype=bool)
    masks[3:, 4:10, 5:12] = True
    maps = (rng.normal(size=masks.shape) + 1.2 * masks).astype(np.float32)
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(exact, abs=1e-12)  # few values: exact path
    # Force the binned path, then also the strided subsample that places the thresholds.
    monkeypatch.setattr(metrics, "MAX_EXACT_THRESHOLDS", 0)
    assert pixel_auroc(maps, masks, num_thresholds=200) == pytest.approx(exact, abs=1e-3)
    monkeypatch.setattr(metrics, "SAMPLE_SIZE", 300)
    assert pixel_auroc(maps, masks, num_thresholds=200) == pytest.approx(exact, abs=2e-3)


def test_pixel_auroc_none_and_shape_errors():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    assert pixel_auroc(maps, np.zeros((2, 3, 3), dtype=bool)) is None  # no defective pixel
    assert pixel_auroc(maps, np.ones((2, 3, 3), dtype=bool)) is None  # no defect-free pixel
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        pixel_auroc(maps, [np.zeros((3, 4), dtype=bool)] * 2)
    with pytest.raises(ValueError, match="masks differ in length"):
        pixel_auroc(maps, np.zeros((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="anomaly_maps"):
        pixel_auroc(np.zeros((3, 3)), np.zeros((3, 3), dtype=bool))


# ------------------------------------------------------------------ sPRO / AUC-sPRO


def test_saturation_area_semantics():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :] = True  # 8 pixels
    assert saturation_area(mask, 0.5, relative_saturation=True) == 4.0  # 0.5 * 8
    assert saturation_area(mask, 0.3, relative_saturation=True) == 2.0  # int(2.4), as official
    assert saturation_area(mask, 5, relative_saturation=False) == 5.0
    assert saturation_area(mask, 100, relative_saturation=False) == 8.0  # capped at the area
    assert saturation_area(np.zeros((2, 2), bool), 0.5, relative_saturation=True) == 0.0
    region = DefectRegion.from_config(mask, DefectConfig("missing", 255, 0.5, True))
    assert (region.saturation_area, region.defect_name) == (4.0, "missing")


def test_spro_saturates_when_half_of_a_half_saturated_region_is_predicted():
    # One 1x6 image: region = last 4 pixels. Its first two score 9 (above everything), its last
    # two score -1 (below every defect-free pixel, which score 0 and 1).
    # Saturation area 2 (half the region): at threshold 1 the 2 high pixels give 2/2 -> sPRO 1
    # already at FPR 0, so the curve is 1 everywhere: AUC-sPRO = 1 at every limit.
    # Saturation area 4 (the full region): sPRO stays 2/4 until the threshold drops below -1,
    # which only happens at FPR 1: AUC = 0.5 at every limit.
    scores = np.array([[[0.0, 1.0, 9.0, 9.0, -1.0, -1.0]]])
    mask = np.array([[0, 0, 1, 1, 1, 1]], dtype=bool)
    half = auc_spro(scores, [[_region(mask, saturation_area(mask, 0.5, True))]])
    full = auc_spro(scores, [[_region(mask, 4.0)]])
    assert list(half) == LIMIT_KEYS
    assert all(v == pytest.approx(1.0) for v in half.values())
    assert all(v == pytest.approx(0.5) for v in full.values())


def test_auc_spro_two_images_by_hand():
    # Image 0 is good: 1x4 scores 1 2 3 4 (all defect-free).
    # Image 1 has one region on its last two pixels (scores 5 and 2.5), saturation area 2;
    # its other pixels score 0 and 0. Defect-free pixels pooled over both images: 0 0 1 2 3 4 (6).
    # Predict score > t, t descending:
    #   t=5   : nothing                  -> FPR 0,   sPRO 0
    #   t=4   : region pixel 5           -> FPR 0,   sPRO 1/2
    #   t=3   : + defect-free 4          -> FPR 1/6, sPRO 1/2
    #   t=2.5 : + defect-free 3          -> FPR 2/6, sPRO 1/2
    #   t=2   : + region pixel 2.5       -> FPR 2/6, sPRO 1
    #   lower : sPRO stays 1, FPR grows to 1.
    # So sPRO = 1/2 on FPR (0, 1/3) and 1 on (1/3, 1]:
    #   limit 0.3 -> 0.5 * 0.3 / 0.3 = 0.5;  limit 1 -> (0.5/3 + 2/3) / 1 = 5/6.
    maps = np.array([[[1.0, 2.0, 3.0, 4.0]], [[0.0, 0.0, 5.0, 2.5]]])
    region = _region([[0, 0, 1, 1]], 2.0)
    result = auc_spro(maps, [[], [region]])
    assert result["0.01"] == pytest.approx(0.5)
    assert result["0.3"] == pytest.approx(0.5)
    assert result["1.0"] == pytest.approx(5 / 6)
    # Defect-free pixels of anomalous images count for the FPR (official LOCO/AutoVI rule):
    # without the good image, the negatives are 0 0 only, so FPR stays 0 until t < 0 and the
    # curve is 1 from FPR 0 on.
    alone = auc_spro(maps[1:], [[region]])
    assert alone["0.3"] == pytest.approx(1.0)


def test_auc_spro_binned_close_to_exact(monkeypatch):
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(6, 16, 16)).astype(np.float32)
    regions = [[] for _ in range(6)]
    for i in range(3, 6):
        mask = np.zeros((16, 16), dtype=bool)
        mask[2:8, i : i + 6] = True
        maps[i][mask] += 1.5
        regions[i].append(_region(mask, saturation_area(mask, 0.5, True)))
    exact = auc_spro(maps, regions)
    monkeypatch.setattr(metrics, "MAX_EXACT_THRESHOLDS", 0)
    binned = auc_spro(maps, regions, num_thresholds=100)
    for key in LIMIT_KEYS:
        assert 0.0 <= binned[key] <= 1.0
        assert binned[key] == pytest.approx(exact[key], abs=5e-3)


def test_auc_spro_none_and_errors():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    assert auc_spro(maps, [[], []]) is None
    assert auc_spro(maps, [None, None]) is None
    with pytest.warns(UserWarning, match="empty"):
        assert auc_spro(maps, [[], [_region(np.zeros((3, 3)), 0.0)]]) is None
    with pytest.raises(ValueError, match="regions_per_image differ in length"):
        auc_spro(maps, [[]])
    with pytest.raises(ValueError, match=r"regions_per_image\[1\]\[0\]"):
        auc_spro(maps, [[], [_region(np.ones((2, 2)), 1.0)]])


# ------------------------------------------------------------------ PRO


def test_pro_two_components_by_hand():
    # One 1x5 image; mask 1 1 0 1 0 -> components A = pixels 0-1 (area 2), B = pixel 3 (area 1).
    # Scores: A = 5, 1; B = 4; defect-free pixels 2 and 4 score 2 and 3.
    #   t=5: nothing                  -> FPR 0,   PRO 0
    #   t=4: A's 5 (1/2)              -> FPR 0,   PRO (1/2 + 0) / 2 = 1/4
    #   t=3: + B's 4 (1/1)            -> FPR 0,   PRO (1/2 + 1) / 2 = 3/4
    #   t=2: + defect-free 3          -> FPR 1/2, PRO 3/4
    #   t=1: + defect-free 2          -> FPR 1,   PRO 3/4;  below 1: PRO 1 at FPR 1.
    # PRO = 3/4 on (0, 1): normalised area 0.75 at limit 0.3 (and at 1).
    # (Pixel TPR at FPR 0 would be 2/3: PRO weights each component equally.)
    maps = np.array([[[5.0, 1.0, 2.0, 4.0, 3.0]]])
    masks = np.array([[[1, 1, 0, 1, 0]]], dtype=bool)
    assert pro_auc(maps, masks) == pytest.approx(0.75)
    assert pro_auc(maps, masks, fpr_limit=1.0) == pytest.approx(0.75)


def test_pro_uses_8_connectivity_and_none():
    # Mask pixels (0,0), (1,1) (diagonal neighbours) and (0,3); (0,0) and (0,3) score 9, (1,1)
    # scores -1, below the defect-free 0s. For FPR in [0, 1) exactly the two 9s are predicted.
    # 8-connected: {(0,0),(1,1)} overlap 1/2, {(0,3)} overlap 1 -> PRO 3/4.
    # (4-connected would give three components, (1 + 0 + 1) / 3 = 2/3.)
    maps = np.array([[[9.0, 0.0, 0.0, 9.0], [0.0, -1.0, 0.0, 0.0]]])
    masks = np.array([[[1, 0, 0, 1], [0, 1, 0, 0]]], dtype=bool)
    assert pro_auc(maps, masks) == pytest.approx(0.75)
    assert pro_auc(maps, np.zeros_like(masks)) is None


# ------------------------------------------------------------------ category / mean


def _toy_category():
    # 4 images 1x4: two good, one "scratch", one "dent".
    maps = np.array(
        [
            [[0.1, 0.2, 0.1, 0.0]],
            [[0.3, 0.1, 0.2, 0.1]],
            [[0.1, 0.9, 0.8, 0.0]],
            [[0.2, 0.1, 0.0, 0.25]],
        ],
        dtype=np.float32,
    )
    masks = np.zeros(maps.shape, dtype=bool)
    masks[2, 0, 1:3] = True
    masks[3, 0, 3] = True
    regions = [[], [], [_region(masks[2], 2.0, "scratch")], [_region(masks[3], 1.0, "dent")]]
    scores = maps.reshape(4, -1).max(axis=1)
    return scores, [0, 0, 1, 1], ["good", "good", "scratch", "dent"], maps, masks, regions


def test_evaluate_category_keys_values_and_json():
    scores, labels, types, maps, masks, regions = _toy_category()
    result = evaluate_category(scores, labels, types, maps, masks, regions)
    assert set(result) == {
        "image_auroc",
        "image_auroc_per_defect",
        "pixel_auroc",
        "aucspro",
        "aucspro_per_defect",
        "pro",
        "f1",
        "balanced_accuracy",
        "threshold",
        "n_good",
        "n_anomalous",
    }
    # Image scores: good 0.2, 0.3; scratch 0.9 beats both; dent 0.25 beats 0.2 only -> 3/4.
    assert result["image_auroc"] == pytest.approx(0.75)
    assert result["image_auroc_per_defect"] == {"dent": pytest.approx(0.5), "scratch": pytest.approx(1.0)}
    assert (result["n_good"], result["n_anomalous"]) == (2, 2)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert result["aucspro"] == auc_spro(maps, regions)
    # Per defect: that defect's images plus all good images.
    keep = [0, 1, 3]
    assert result["aucspro_per_defect"]["dent"] == auc_spro(maps[keep], [regions[i] for i in keep])
    json.dumps(result)  # plain Python values only


def test_evaluate_category_without_pixel_ground_truth():
    scores, labels, types, maps, _, _ = _toy_category()
    result = evaluate_category(scores, labels, types)
    assert result["pixel_auroc"] is None and result["pro"] is None
    assert result["aucspro"] is None and result["aucspro_per_defect"] is None
    assert result["f1"] is not None
    result = evaluate_category(scores, labels, types, anomaly_maps=maps)
    assert result["pixel_auroc"] is None and result["aucspro"] is None
    with pytest.raises(ValueError, match="defect_types"):
        evaluate_category(scores, labels, types[:3])
    with pytest.raises(ValueError, match="anomaly_maps"):
        evaluate_category(scores, labels, types, anomaly_maps=maps[:3])


def test_skipped_test_images_list_both_kinds_of_skip_for_the_scored_categories():
    index_skipped = [
        {"path": "b/test/good/1.png", "reason": "unreadable image (header)", "category": "b", "split": "test"},
        {"path": "b/train/good/0.png", "reason": "unreadable image", "category": "b", "split": "train"},  # not a test image
        {"path": "c/test/good/0.png", "reason": "unreadable image", "category": "c", "split": "test"},  # c not scored
        {"path": "old/test/x.png", "reason": "written before category and split were recorded"},
    ]
    scoring_skipped = {"a": [{"path": "a/test/crack/2.png", "reason": "truncated"}], "b": []}
    assert metrics.skipped_test_images(index_skipped, scoring_skipped, ["a", "b"]) == [
        {"category": "a", "path": "a/test/crack/2.png", "reason": "truncated"},
        {"category": "b", "path": "b/test/good/1.png", "reason": "unreadable image (header)"},
    ]
    assert metrics.skipped_test_images([], {}, ["a"]) == []


def test_mean_over_categories():
    a = {
        "image_auroc": 0.8,
        "pixel_auroc": None,
        "pro": None,
        "f1": 0.5,
        "balanced_accuracy": 0.6,
        "threshold": 3.0,
        "aucspro": {"0.05": 0.2, "0.3": 0.4},
        "n_good": 2,
        "n_anomalous": 3,
    }
    b = {
        "image_auroc": 0.6,
        "pixel_auroc": 0.9,
        "pro": None,
        "f1": 0.7,
        "balanced_accuracy": 0.8,
        "threshold": 10.0,
        "aucspro": None,
        "n_good": 1,
        "n_anomalous": 1,
    }
    mean = mean_over_categories({"a": a, "b": b})
    assert mean["image_auroc"] == pytest.approx(0.7)
    assert mean["pixel_auroc"] == pytest.approx(0.9)  # None in "a" is ignored
    assert mean["pro"] is None  # None everywhere stays None
    assert mean["f1"] == pytest.approx(0.6)
    assert mean["aucspro"] == {"0.05": pytest.approx(0.2), "0.3": pytest.approx(0.4)}
    assert (mean["n_good"], mean["n_anomalous"], mean["n_categories"]) == (3, 4, 2)
    assert mean["threshold"] is None
    json.dumps(mean)
