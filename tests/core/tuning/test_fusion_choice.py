"""Choosing a category's fusion rule on validation scores alone."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.tuning.fusion import FusionChoice, choose_fusion

LABELS = np.array([0] * 6 + [1] * 6)
KINDS = ["good"] * 6 + ["scratch"] * 3 + ["remove_part"] * 3


def _scores(texture, position, noise=0.0):
    rng = np.random.default_rng(0)
    base = {
        "texture": np.array(texture, dtype=float),
        "global": rng.normal(size=12) * 0 + np.arange(12) % 3,
        "position": np.array(position, dtype=float),
    }
    composition = {4: rng.normal(size=12), 8: np.r_[np.zeros(6), np.ones(6)] + noise * rng.normal(size=12)}
    return base, composition


def test_a_logical_expert_that_finds_the_removed_parts_replaces_patchcore():
    # texture finds the scratches but not the removed parts; position finds both
    texture = [1, 2, 1, 2, 1, 2, 5, 6, 7, 1.5, 1.5, 1.5]
    position = [0, 1, 0, 1, 0, 1, 3, 3, 3, 4, 4, 4]
    scores, composition = _scores(texture, position)
    choice = choose_fusion(scores, composition, LABELS, KINDS, min_gain=0.02)
    assert choice.rule.name == "position"
    assert choice.rule.composition_k == 8  # the k that separates on validation
    assert choice.val_auroc["position"] == 1.0
    # texture: 1.0 on the structural family, 0.5 on the parts -> 0.75
    assert choice.val_auroc["texture"] == pytest.approx(0.75)
    assert [row["rule"] for row in choice.table if row["chosen"]] == ["position"]


def test_patchcore_stays_unless_clearly_beaten():
    texture = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    position = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    scores, composition = _scores(texture, position)
    choice = choose_fusion(scores, composition, LABELS, KINDS, min_gain=0.02)
    assert choice.rule.name == "texture" and choice.val_auroc["texture"] == 1.0
    assert choice.rule.normalisers["texture"].mean == 0.0
    # a combination must beat the single expert chosen by more than min_gain too
    texture = [1, 2, 1, 2, 1, 2, 5, 6, 7, 1.5, 1.5, 1.5]
    position = [0, 1, 0, 1, 0, 1, 0.5, 0.5, 0.5, 4, 4, 4]
    scores, composition = _scores(texture, position)
    choice = choose_fusion(scores, composition, LABELS, KINDS, candidates=["texture", "position", "sum"], min_gain=0.02)
    assert choice.val_auroc["texture"] == pytest.approx(0.75) and choice.val_auroc["position"] == pytest.approx(0.75)
    assert choice.rule.name == "sum"  # finds both families
    assert choice.fused.name == "sum"


def test_choice_round_trip_and_every_expert_rule():
    scores, composition = _scores([0, 1, 0, 1, 0, 1, 2, 2, 2, 2, 2, 2], list(range(12)))
    choice = choose_fusion(scores, composition, LABELS, KINDS)
    back = FusionChoice.from_dict(choice.to_dict())
    for name in ("texture", "global", "position", "composition", "fused", "selected"):
        rule = back.rule_for(name)
        np.testing.assert_allclose(rule.image_scores({**scores, "composition": composition[rule.composition_k]}),
                                   choice.rule_for(name).image_scores({**scores, "composition": composition[rule.composition_k]}))


def test_choice_needs_both_labels_and_known_rules():
    scores, composition = _scores([0] * 12, [0] * 12)
    with pytest.raises(ValueError, match="good validation images and pseudo-anomalies"):
        choose_fusion(scores, composition, np.zeros(12))
    with pytest.raises(ValueError, match="unknown rules"):
        choose_fusion(scores, composition, LABELS, candidates=["median"])
