"""Fidelity of a synthetic bank: sliced Wasserstein distance and MMD against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpatchcore.core.evaluation.fidelity import fidelity, sliced_wasserstein


def test_sliced_wasserstein_of_a_translation_is_the_mean_projected_shift():
    rng = np.random.default_rng(0)
    d = 4
    x = rng.normal(size=(300, d))
    v = np.array([3.0, 0.0, 0.0, 4.0])  # |v| = 5
    # E_θ |θ·v| for θ uniform on the unit sphere of R^d: |v| Γ(d/2) / (√π Γ((d+1)/2)).
    expected = 5.0 * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert sliced_wasserstein(x, x + v, n_projections=4000, seed=0) == pytest.approx(expected, rel=0.03)
    assert sliced_wasserstein(x, x, n_projections=50, seed=0) == pytest.approx(0.0, abs=1e-12)
    # Sets of different sizes compare through common quantile levels.
    assert sliced_wasserstein(x, x[:150], 50, 0) < 0.2


def test_sliced_wasserstein_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="one dimension"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 4)), 5, 0)
    with pytest.raises(ValueError, match="non-empty"):
        sliced_wasserstein(np.zeros((0, 2)), np.zeros((3, 2)), 5, 0)


def test_fidelity_per_category_and_mean():
    rng = np.random.default_rng(1)
    real = {"a": rng.normal(size=(200, 3)), "b": rng.normal(size=(200, 3))}
    synthetic = {"a": real["a"].copy(), "b": real["b"] + 2.0, "c": np.zeros((5, 3))}
    out = fidelity(synthetic, real, n_projections=64, max_rows=500, seed=0)
    assert sorted(out) == ["a", "b", "mean"]  # only categories present in both
    assert out["a"]["sliced_wasserstein"] == pytest.approx(0.0, abs=1e-9)
    assert out["a"]["mmd2"] == pytest.approx(0.0, abs=1e-9)
    assert out["b"]["sliced_wasserstein"] > 1.0 and out["b"]["mmd2"] > 0.1
    assert out["mean"]["sliced_wasserstein"] == pytest.approx(out["b"]["sliced_wasserstein"] / 2)
