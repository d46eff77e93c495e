"""The skipping k-center loop: identical indices to the plain loop, on data that stress it."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.coreset import kcenter as coreset
from fedpatchcore.core.coreset import skipping as kcenter_fast
from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.coreset.skipping import (
    RowDots,
    choose_method,
    greedy_skipping,
    rounding_margin,
)


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def sparse_step_code(request, monkeypatch):
    """Every test runs with the numba kernels of a sparse step and with the numpy code."""
    if request.param == "compiled" and not kcenter_fast.COMPILED:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(kcenter_fast, "COMPILED", request.param == "compiled")
    return request.param


def low_rank(n: int, dim: int, seed: int, latent: int = 5) -> np.ndarray:
    """Rows on a curved low-dimensional set plus a little noise: like CNN patch features,
    which is where the skipping loop prunes most (and its principal-coordinate filter runs)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    x = np.tanh(z @ rng.standard_normal((latent, dim)).astype(np.float32))
    x += 0.03 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.maximum(x, 0.0)


def both(x: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    plain = greedy_kcenter(x, k, method="plain", **kwargs)
    skip = greedy_kcenter(x, k, method="skip", **kwargs)
    return plain, skip


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_skip_selects_the_plain_loops_indices(seed):
    x = low_rank(2500, 96, seed)  # 96 > 32 columns: the principal filter is used
    for k, starts in ((150, 1), (700, 3)):
        plain, skip = both(x, k, projection_dim=None, seed=seed, num_starts=starts)
        np.testing.assert_array_equal(skip, plain)


@pytest.mark.parametrize("seed", [0, 5])
def test_skip_with_projection_and_few_columns(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3000, 40)) * rng.uniform(0.1, 3.0)).astype(np.float32)
    plain, skip = both(x, 700, projection_dim=16, seed=seed)
    np.testing.assert_array_equal(skip, plain)
    plain, skip = both(x, 2999, projection_dim=None, seed=seed, num_starts=2)  # every row but one
    np.testing.assert_array_equal(skip, plain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicates_and_exact_ties_break_like_argmax(seed):
    rng = np.random.default_rng(seed)
    base = low_rank(300, 48, seed)
    x = base[rng.integers(0, len(base), 3000)]  # every row has many exact duplicates
    plain, skip = both(x, 600, projection_dim=None, seed=seed)  # more centres than distinct rows
    np.testing.assert_array_equal(skip, plain)
    grid = rng.integers(0, 4, (4000, 3)).astype(np.float32)  # integer grid: many equal distances
    plain, skip = both(grid, 150, projection_dim=None, seed=seed, num_starts=2)
    np.testing.assert_array_equal(skip, plain)
    # among equal farthest rows the first index wins, as np.argmax picks it
    twins = np.zeros((500, 4), dtype=np.float32)
    twins[100] = twins[400] = 5.0
    assert greedy_kcenter(twins, 64, projection_dim=None, method="skip")[1] == 100


def test_slot_packing_and_hand_over_to_plain(monkeypatch):
    x = low_rank(3000, 64, 7)
    expected = greedy_kcenter(x, 900, projection_dim=None, seed=1, method="plain")
    monkeypatch.setattr(kcenter_fast, "_SPARE_SLOTS", 0.01)  # pack the slot arrays often
    monkeypatch.setattr(kcenter_fast, "_SPLIT_ROWS", 0)  # every sparse step on two threads
    np.testing.assert_array_equal(
        greedy_kcenter(x, 900, projection_dim=None, seed=1, method="skip"), expected
    )
    monkeypatch.setattr(kcenter_fast, "_GIVE_UP_SHARE", 0.0)  # give up at once: plain from there
    monkeypatch.setattr(kcenter_fast, "_WARMUP", 10)
    work = coreset._prepare_cpu(x, None, 1, np.float32)
    half = np.empty(len(work), np.float32)
    half[:] = 0.5 * np.einsum("ij,ij->i", work, work)
    stats: dict = {}
    with RowDots(work.shape[1]) as dots:
        got = greedy_skipping(work, half, 900, coreset._starting_rows(len(work), 1, 1), dots, stats=stats)
    assert stats["plain_from_step"] < 900
    np.testing.assert_array_equal(got, expected)


def test_skipping_examines_few_rows_on_structured_data():
    x = low_rank(6000, 64, 3, latent=3)
    work = coreset._prepare_cpu(x, None, 0, np.float32)
    half = np.empty(len(work), np.float32)
    half[:] = 0.5 * np.einsum("ij,ij->i", work, work)
    stats: dict = {}
    with RowDots(work.shape[1]) as dots:
        greedy_skipping(work, half, 600, coreset._starting_rows(len(work), 1, 0), dots, stats=stats)
    assert stats["plain_from_step"] == 600  # never gave up
    assert stats["rows_computed"] < 0.2 * stats["plain_rows"]


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 8, 12, 16, 128])
def test_row_kernel_value_does_not_depend_on_the_other_rows(dim):
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((4099, dim)).astype(np.float32)
    centre = rows[11].copy()
    with RowDots(dim, threads=2) as dots:
        full = dots(rows, centre, np.empty(len(rows), np.float32))
        for pick in (np.arange(7, 20), rng.permutation(len(rows))[:1001], np.arange(len(rows))[::-3]):
            part = np.ascontiguousarray(rows[pick])
            np.testing.assert_array_equal(dots(part, centre, np.empty(len(pick), np.float32)), full[pick])
    assert full.dtype == np.float32


def test_auto_choice_and_method_errors():
    assert choose_method(200_000, 1000, np.float32) == "plain"  # too few centres to pay off
    assert choose_method(20_000, 5000, np.float32) == "plain"  # too few rows
    assert choose_method(200_000, 5000, np.float64) == "plain"
    assert choose_method(200_000, 5000, np.float32) == "skip"
    x = low_rank(500, 16, 0)
    with pytest.raises(ValueError, match="method"):
        greedy_kcenter(x, 10, method="fast")
    # float64 and non-finite rows quietly use the plain loop (same contract)
    np.testing.assert_array_equal(
        greedy_kcenter(x, 80, projection_dim=None, dtype="float64", method="skip"),
        greedy_kcenter(x, 80, projection_dim=None, dtype="float64", method="plain"),
    )


def test_rounding_margin_grows_with_dimension_and_norm():
    assert 0 < rounding_margin(16, 0.5) < rounding_margin(128, 0.5) < rounding_margin(128, 2.0)
    assert rounding_margin(128, 0.5) < 1e-4  # unit-scaled rows: far below any useful radius
