"""What the report draws: curve points against hand-computed ones, overlay choice on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.evaluation.metrics import DefectRegion, auc_spro, image_auroc
from fedpatchcore.core.federation.client import LocalCoreset, as_bank
from fedpatchcore.core.reporting.curves import (
    TOP_DEFECTS,
    WORST_FALSE_ALARMS,
    WORST_MISSES,
    bank_contributions,
    curve_area,
    pick_overlays,
    roc_curve,
    spro_curve,
)


def test_roc_points_are_the_hand_computed_ones():
    # scores 0.9 (bad), 0.8 (good), 0.7 (bad), 0.7 (good), 0.1 (bad): 3 anomalous, 2 good.
    roc = roc_curve([0.9, 0.8, 0.7, 0.7, 0.1], [1, 0, 1, 0, 1])
    # threshold 0.9: 1 TP; 0.8: +1 FP; 0.7 (a tie: one bad, one good): +1 TP +1 FP; 0.1: +1 TP.
    assert roc["fpr"] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert roc["tpr"] == pytest.approx([0.0, 1 / 3, 1 / 3, 2 / 3, 1.0])
    assert roc["threshold"] == [float("inf"), 0.9, 0.8, 0.7, 0.1]


def test_roc_area_is_the_reported_image_auroc():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # rounding makes ties
    roc = roc_curve(scores, labels)
    assert curve_area(roc["fpr"], roc["tpr"]) == pytest.approx(image_auroc(scores, labels))


def test_roc_of_one_class_is_none():
    assert roc_curve([0.1, 0.2], [0, 0]) is None


def test_spro_curve_ends_at_its_limit_and_its_area_is_the_reported_aucspro():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16)).astype(np.float32)
    regions = [[], []]
    for i in (2, 3):
        mask = np.zeros((16, 16), bool)
        mask[4 + i : 9 + i, 3:8] = True
        maps[i][mask] += 0.5
        regions.append([DefectRegion(mask, float(mask.sum()) / 2, "scratch")])
    curve = spro_curve(maps, regions, max_fpr=0.3)
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == pytest.approx(0.3)
    assert np.all(np.diff(curve["fpr"]) >= 0)
    assert curve_area(curve["fpr"], curve["spro"]) / 0.3 == pytest.approx(auc_spro(maps, regions, (0.3,))["0.3"])
    assert curve["auc_normalised"] == pytest.approx(auc_spro(maps, regions, (0.3,))["0.3"])


def test_spro_curve_without_regions_is_none():
    assert spro_curve(np.zeros((2, 4, 4), np.float32), [[], []]) is None


# ------------------------------------------------------------------------------- overlays

KEYS = ["good_a", "good_b", "good_c", "bad_a", "bad_b", "bad_c", "bad_d"]
SCORES = [0.2, 0.9, 0.5, 0.95, 0.1, 0.6, 0.3]
LABELS = [0, 0, 0, 1, 1, 1, 1]


def _groups(picks):
    out: dict[str, list[str]] = {}
    for pick in picks:
        out.setdefault(pick.group, []).append(pick.key)
    return out


def test_overlays_are_top_defects_worst_misses_and_worst_false_alarms():
    picks = pick_overlays(KEYS, SCORES, LABELS, per_group=2)
    assert _groups(picks) == {
        TOP_DEFECTS: ["bad_a", "bad_c"],  # highest-scoring defects
        WORST_MISSES: ["bad_b", "bad_d"],  # lowest-scoring defects
        WORST_FALSE_ALARMS: ["good_b", "good_c"],  # highest-scoring good images
    }
    assert [p.group for p in picks] == [TOP_DEFECTS] * 2 + [WORST_MISSES] * 2 + [WORST_FALSE_ALARMS] * 2
    assert {p.key: p.score for p in picks}["good_b"] == 0.9


def test_an_image_is_shown_once_when_groups_overlap():
    # Three defects for two groups of two: the worst misses get only what is left.
    picks = pick_overlays(KEYS[:6], SCORES[:6], LABELS[:6], per_group=2)
    groups = _groups(picks)
    assert groups[TOP_DEFECTS] == ["bad_a", "bad_c"] and groups[WORST_MISSES] == ["bad_b"]
    assert len({p.key for p in picks}) == len(picks)


def test_equal_scores_keep_the_order_of_the_keys():
    picks = pick_overlays(["x", "y", "z"], [0.5, 0.5, 0.5], [1, 1, 0], per_group=1)
    assert _groups(picks) == {TOP_DEFECTS: ["x"], WORST_MISSES: ["y"], WORST_FALSE_ALARMS: ["z"]}


def test_no_overlay_when_none_asked():
    assert pick_overlays(KEYS, SCORES, LABELS, per_group=0) == []


# ------------------------------------------------------------------------------- contributions


def test_bank_contributions_count_rows_per_client_and_category():
    banks = CategoryBanks(
        banks={"plate": np.zeros((5, 2), np.float32), "tray": np.zeros((2, 2), np.float32)},
        n_images={"plate": 3, "tray": 1},
        origin={"plate": np.array(["a", "b", "a", "qc", "a"]), "tray": np.array(["qc", "qc"])},
        origin_row={"plate": np.arange(5), "tray": np.arange(2)},
    )
    table = bank_contributions(banks)
    assert table.to_dict("records") == [
        {"category": "plate", "client": "a", "rows": 3, "share": 0.6},
        {"category": "plate", "client": "b", "rows": 1, "share": 0.2},
        {"category": "plate", "client": "qc", "rows": 1, "share": 0.2},
        {"category": "tray", "client": "qc", "rows": 2, "share": 1.0},
    ]


def test_the_centralized_bank_names_its_single_client_in_full():
    local = LocalCoreset({"plate": np.zeros((3, 2), np.float32)}, {"plate": ["k"]}, {"plate": np.zeros((3, 3), np.int64)})
    bank = CategoryBanks.from_arrays(as_bank(local, "all").to_arrays())
    assert list(bank.origin["plate"]) == ["all"] * 3  # not "a": np.full(..., dtype=str) truncates
    assert bank_contributions(bank)["client"].tolist() == ["all"]
