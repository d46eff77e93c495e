"""Fusion rules: z-normalisation on good validation scores, combined scores and maps by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.experts.fusion import FusionRule, Normaliser, auroc_weights, upsample_cells

NORMALISERS = {
    "texture": Normaliser(10.0, 2.0),
    "global": Normaliser(1.0, 0.5),
    "position": Normaliser(3.0, 1.0),
    "composition": Normaliser(0.0, 1.0),
}
SCORES = {
    "texture": np.array([10.0, 14.0]),
    "global": np.array([1.5, 1.0]),
    "position": np.array([8.0, 3.0]),
    "composition": np.array([-1.0, 2.0]),
}


def test_normaliser_from_good_validation_scores():
    z = Normaliser.fit(np.array([1.0, 3.0]))
    assert (z.mean, z.std) == (2.0, 1.0)
    np.testing.assert_allclose(z(np.array([2.0, 5.0])), [0.0, 3.0])
    assert Normaliser.fit(np.array([4.0])).std == 1.0  # one image: a shift only
    assert Normaliser.fit(np.array([4.0, 4.0])).std == 1.0  # no spread: no division by zero
    with pytest.raises(ValueError, match="finite"):
        Normaliser.fit(np.array([np.nan]))


def test_rules_combine_z_scores_by_hand():
    # z-scores: texture (0, 2), global (1, 0), position (5, 0), composition (-1, 2)
    np.testing.assert_allclose(FusionRule.build("texture", NORMALISERS).image_scores(SCORES), [0.0, 2.0])
    np.testing.assert_allclose(FusionRule.build("position", NORMALISERS).image_scores(SCORES), [5.0, 0.0])
    np.testing.assert_allclose(FusionRule.build("sum", NORMALISERS).image_scores(SCORES), [5.0, 4.0])
    np.testing.assert_allclose(FusionRule.build("max", NORMALISERS).image_scores(SCORES), [5.0, 2.0])
    aurocs = {"texture": 0.75, "global": 0.5, "position": 1.0, "composition": 0.4}
    weighted = FusionRule.build("weighted", NORMALISERS, aurocs)
    assert weighted.weights == pytest.approx({"texture": 1 / 3, "global": 0.0, "position": 2 / 3, "composition": 0.0})
    np.testing.assert_allclose(weighted.image_scores(SCORES), [10 / 3, 2 / 3])
    assert auroc_weights({"a": 0.4, "b": None}) == {"a": 0.5, "b": 0.5}  # nobody beats chance: equal


def test_maps_keep_patchcore_resolution_and_the_rule():
    texture_maps = np.zeros((2, 4, 6), dtype=np.float32)
    texture_maps[0, 1, 2] = 14.0  # z = 2 there, -5 elsewhere
    cells = {"position": np.array([[[8.0, 3.0]], [[3.0, 3.0]]])}  # (n, 1, 2): left cell z 5 in image 0
    upsampled = upsample_cells(cells["position"], (6, 4))
    assert upsampled.shape == (2, 4, 6) and upsampled[0, 0, 0] == pytest.approx(8.0)
    maps = FusionRule.build("max", NORMALISERS).maps(SCORES, texture_maps, cells)
    assert maps.shape == (2, 4, 6) and maps.dtype == np.float32
    # image 1: texture -5, global 0, position 0, composition 2 everywhere -> 2
    np.testing.assert_allclose(maps[1], 2.0)
    assert maps[0, 0, 0] == pytest.approx(5.0)  # the position cell's z-score
    only_texture = FusionRule.build("texture", NORMALISERS).maps(SCORES, texture_maps, cells)
    assert only_texture[0, 1, 2] == pytest.approx(2.0) and only_texture[0].max() == pytest.approx(2.0)
    only_global = FusionRule.build("global", NORMALISERS).maps(SCORES, texture_maps, cells)
    np.testing.assert_allclose(only_global[0], 1.0)  # no map: its image z-score at every pixel


def test_rule_round_trip_and_errors():
    rule = FusionRule.build("weighted", NORMALISERS, {"texture": 0.9, "position": 0.7}, composition_k=8)
    back = FusionRule.from_dict(rule.to_dict())
    assert back.weights == rule.weights and back.composition_k == 8
    np.testing.assert_allclose(back.image_scores(SCORES), rule.image_scores(SCORES))
    with pytest.raises(ValueError, match="unknown fusion rule"):
        FusionRule("mean", {"texture": 1.0}, NORMALISERS)
    with pytest.raises(ValueError, match="no normalisation"):
        FusionRule("texture", {"texture": 1.0}, {})
