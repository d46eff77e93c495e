"""Largest-remainder shares: exact totals, caps, redistribution, deterministic ties."""

import numpy as np
import pytest

from fedpatchcore.core.common.quotas import capped_quotas, largest_remainder


def test_largest_remainder_sums_exactly_and_breaks_ties_to_the_lower_index():
    assert largest_remainder([1, 1, 1], 10).tolist() == [4, 3, 3]
    # ideal 3.5, 1.75, 1.75: floors 3, 1, 1; the two largest remainders (0.75, 0.75) get the 2 left
    assert largest_remainder([0.5, 0.25, 0.25], 7).tolist() == [3, 2, 2]
    assert largest_remainder([2, 1], 0).tolist() == [0, 0]
    counts = largest_remainder(np.random.default_rng(0).random(9), 101)
    assert counts.sum() == 101


def test_capped_quotas_cap_redistribute_and_drop_zero_weights():
    assert capped_quotas([1, 1, 1], [10, 10, 10], 10).tolist() == [4, 3, 3]
    assert capped_quotas([8, 1, 1], [2, 10, 10], 10).tolist() == [2, 4, 4]  # the capped one's rest is shared
    assert capped_quotas([1, 1], [3, 3], 100).tolist() == [3, 3]  # budget larger than everything
    assert capped_quotas([0, 1], [5, 5], 4).tolist() == [0, 4]
    assert capped_quotas([1, 1], [0, 0], 4).tolist() == [0, 0]


def test_capped_quotas_reject_bad_weights():
    with pytest.raises(ValueError, match="same length"):
        capped_quotas([1], [1, 2], 3)
    with pytest.raises(ValueError, match="finite"):
        capped_quotas([-1, 1], [1, 2], 3)
