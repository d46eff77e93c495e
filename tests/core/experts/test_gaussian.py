"""Gaussians from mergeable sums: Ledoit-Wolf as scikit-learn computes it, exact merging, one sample."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from fedpatchcore.core.experts.gaussian import MomentSums, fit_gaussian


def _sums(x: np.ndarray) -> MomentSums:
    sums = MomentSums.zeros((), x.shape[1])
    sums.add(x)
    return sums


@pytest.mark.parametrize("n, d", [(40, 6), (5, 12), (2, 3)])
def test_shrunk_covariance_equals_scikit_learn_ledoit_wolf(n, d):
    x = np.random.default_rng(n).normal(3.0, [0.5 + i for i in range(d)], (n, d))
    gaussian = fit_gaussian(_sums(x), ridge=1e-9)
    reference = LedoitWolf().fit(x)
    np.testing.assert_allclose(gaussian.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(gaussian.precision), reference.covariance_, rtol=1e-6, atol=1e-8)
    assert float(gaussian.shrinkage) == pytest.approx(reference.shrinkage_, rel=1e-6)


def test_sums_of_sites_merge_into_the_sums_of_all_their_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 5))  # 30 samples of a batch of 4 Gaussians in 5 dimensions
    parts = [x[:7], x[7:8], x[8:]]
    merged = MomentSums.zeros((4,), 5)
    for part in parts:
        site = MomentSums.zeros((4,), 5)
        site.add(part)
        merged = merged.merge(site)
    whole = MomentSums.zeros((4,), 5)
    whole.add(x)
    for name in ("n", "s1", "s2", "s3", "s4"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)
    np.testing.assert_allclose(fit_gaussian(merged, 0.01).precision, fit_gaussian(whole, 0.01).precision, rtol=1e-9)
    assert whole.n.tolist() == [30.0] * 4 and whole.s2.shape == (4, 5, 5)


def test_flat_form_round_trip_sends_the_upper_triangle_only():
    sums = _sums(np.random.default_rng(1).normal(size=(9, 4)))
    arrays = sums.to_arrays("cat/global")
    assert arrays["cat/global/s2"].shape == (10,)  # 4 x 5 / 2
    back = MomentSums.from_arrays(arrays, "cat/global")
    np.testing.assert_array_equal(back.s2, sums.s2)
    with pytest.raises(ValueError, match="lack the entry"):
        MomentSums.from_arrays({k: v for k, v in arrays.items() if not k.endswith("s3")}, "cat/global")


def test_one_sample_gives_the_scaled_euclidean_distance_and_no_nan():
    x = np.array([[1.0, 2.0, 3.0]])
    gaussian = fit_gaussian(_sums(x), ridge=0.5)
    # covariance = 0.5 * mean square (14 / 3) * I
    expected = np.eye(3) / (0.5 * 14.0 / 3.0)
    np.testing.assert_allclose(gaussian.precision, expected)
    assert gaussian.mahalanobis(np.array([1.0, 2.0, 4.0])) == pytest.approx(1.0 / np.sqrt(0.5 * 14.0 / 3.0))
    assert np.all(np.isfinite(gaussian.precision))


def test_mahalanobis_distance_by_hand_and_errors():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    gaussian = fit_gaussian(_sums(x), ridge=1e-12)
    # centred samples (+-1, +-2): covariance diag(1, 4); Ledoit-Wolf shrinks it towards 2.5 I
    alpha = float(gaussian.shrinkage)
    cov = np.diag([(1 - alpha) * 1 + alpha * 2.5, (1 - alpha) * 4 + alpha * 2.5])
    point = np.array([1.0 + 3.0, 2.0])
    assert gaussian.mahalanobis(point) == pytest.approx(3.0 / np.sqrt(cov[0, 0]), rel=1e-6)
    with pytest.raises(ValueError, match="at least one sample"):
        fit_gaussian(MomentSums.zeros((), 2), 0.01)
    with pytest.raises(ValueError, match="ridge"):
        fit_gaussian(_sums(x), 0.0)
    with pytest.raises(ValueError, match="do not fit"):
        _sums(x).add(np.zeros((3, 5)))
