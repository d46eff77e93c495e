"""The canary audit can fail: positive controls exceed the claimed ε, the real mechanisms stay under it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.privacy.audit import canary_audit, canary_inputs, clopper_pearson, epsilon_lower_bound
from fedpatchcore.core.privacy.release import (
    PrivacySettings,
    clip_rows,
    rows_upload_mechanism,
    summary_upload_mechanism,
)

DELTA = 1e-5
CLAIMED = 2.0
CLIP = 3.0
TRIALS = 400


def test_clopper_pearson_matches_scipy_and_the_bound_from_error_counts():
    low, high = clopper_pearson(3, 50)
    expected = binomtest(3, 50).proportion_ci(0.95, method="exact")
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-9)
    assert clopper_pearson(0, 50)[0] == 0.0 and clopper_pearson(50, 50)[1] == 1.0
    # A perfect test on n trials each side: α, β ≤ 1 - 0.025^(1/n), ε ≥ log((1 - δ - β)/α).
    bound = 1 - 0.025 ** (1 / 200)
    assert epsilon_lower_bound(0, 200, 0, 200, DELTA) == pytest.approx(math.log((1 - DELTA - bound) / bound))
    # Chance-level errors prove nothing.
    assert epsilon_lower_bound(100, 200, 100, 200, DELTA) == 0.0


def _sphere_dataset(images: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One vector per image, spread over a sphere of radius ~C; the canary replaces the image
    greedy k-center starts from, along a direction nobody uses (the worst neighbour for a
    selection on raw rows: the whole selection order changes with it)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(images, 1, dim + 1))
    data[..., dim] = 0.0
    data *= CLIP * 0.999 / np.linalg.norm(data, axis=-1, keepdims=True)
    start = int(greedy_kcenter(data.reshape(images, -1), 1, projection_dim=None, seed=0)[0])
    canary = data.copy()
    canary[start] = 0.0
    canary[start, :, dim] = CLIP * 0.999
    return data.astype(np.float32), canary.astype(np.float32)


def _rows_settings(**overrides) -> PrivacySettings:
    block = {"enabled": True, "epsilon": CLAIMED, "clip_norm": CLIP, "patches_per_image": 1, "accountant": "prv"}
    return PrivacySettings.from_parameters({**block, **overrides}, seed=0)


def test_positive_controls_exceed_the_claim_and_the_real_rows_release_stays_under_it():
    without, with_canary = _sphere_dataset(150, 4)
    settings = _rows_settings()
    sigma, ratio = settings.sigma, 0.75

    def selected_on_raw_rows_then_noised(vectors, rng):
        rows = clip_rows(vectors.reshape(-1, vectors.shape[-1]), CLIP)
        chosen = greedy_kcenter(rows, int(round(ratio * len(rows))), projection_dim=None, seed=0)
        return rows[chosen] + rng.normal(0.0, sigma, size=(len(chosen), rows.shape[1]))

    def no_noise(vectors, rng):
        rows = clip_rows(vectors.reshape(-1, vectors.shape[-1]), CLIP)
        return rows[greedy_kcenter(rows, int(round(ratio * len(rows))), projection_dim=None, seed=0)]

    audit = {
        name: canary_audit(
            mechanism, without, with_canary, trials=TRIALS, delta=DELTA, claimed_epsilon=CLAIMED, seed=1
        )
        for name, mechanism in {
            "sigma_0": no_noise,
            "select_then_noise": selected_on_raw_rows_then_noised,
            "real": rows_upload_mechanism(settings, ratio, seed=0),
        }.items()
    }
    assert audit["sigma_0"].empirical_epsilon_lb == pytest.approx(audit["sigma_0"].epsilon_ceiling)
    assert audit["sigma_0"].empirical_epsilon_lb > CLAIMED and not audit["sigma_0"].consistent
    assert audit["select_then_noise"].empirical_epsilon_lb > CLAIMED, audit["select_then_noise"]
    assert audit["real"].empirical_epsilon_lb <= CLAIMED and audit["real"].consistent
    assert audit["real"].separation < 1.0 < audit["select_then_noise"].separation


def test_the_summary_release_stays_under_its_claim_and_fails_without_noise():
    without, with_canary = canary_inputs(images=12, per_image=4, dim=4, clip_norm=20.0, seed=0)
    centres = canary_inputs(images=2, per_image=2, dim=4, clip_norm=20.0, seed=5)[0].reshape(4, 5)  # public draw
    block = {"enabled": True, "mechanism": "summary", "epsilon": CLAIMED, "accountant": "prv",
             "summary": {"centres": 4, "rounds": 2, "residual_clip": 20.0, "contribution_clip": 0.25}}
    private = PrivacySettings.from_parameters(block, seed=0)
    silent = PrivacySettings.from_parameters({**block, "enabled": False}, seed=0)
    real = canary_audit(summary_upload_mechanism(private, centres), without, with_canary, trials=TRIALS, delta=DELTA,
                        claimed_epsilon=CLAIMED, seed=2)
    broken = canary_audit(summary_upload_mechanism(silent, centres), without, with_canary, trials=TRIALS, delta=DELTA,
                          claimed_epsilon=CLAIMED, seed=2)
    assert real.empirical_epsilon_lb <= CLAIMED
    assert broken.empirical_epsilon_lb > CLAIMED
