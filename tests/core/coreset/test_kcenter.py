"""Tests for the approximate greedy k-center (tiny data, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpatchcore.core.coreset.kcenter import coreset_size, covering_radius, greedy_kcenter
from fedpatchcore.core.features.projection import random_projection_matrix


def clustered(n: int = 600, dim: int = 64, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """Non-negative, clustered vectors: a small stand-in for patch features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(clusters, dim))
    spread = rng.uniform(0.3, 1.5, size=clusters)
    labels = rng.integers(0, clusters, size=n)
    data = centres[labels] + rng.normal(size=(n, dim)) * spread[labels, None]
    return np.maximum(data, 0.0).astype(np.float32)


def exact_greedy(vectors: np.ndarray, k: int, first) -> np.ndarray:
    """Textbook farthest-point greedy on a full float64 distance matrix, from row(s) ``first``."""
    x = vectors.astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen = list(np.atleast_1d(first).tolist())
    nearest = dist[chosen].min(axis=0)
    for _ in range(k - len(chosen)):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, dist[nxt])
    return np.asarray(chosen)


def brute_radius(vectors: np.ndarray, chosen: np.ndarray) -> float:
    x = vectors.astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[chosen][None, :, :]) ** 2).sum(-1))
    return float(dist.min(axis=1).max())


# ------------------------------------------------------------------ coreset_size
def test_coreset_size_basic():
    assert coreset_size(200_000, 0.01) == 2000
    assert coreset_size(10, 0.01) == 1
    assert coreset_size(10, 1.0) == 10
    assert coreset_size(1000, 0.5, max_size=100) == 100
    assert coreset_size(1000, 0.001, min_size=20) == 20
    assert coreset_size(5, 0.5, min_size=20) == 5
    assert coreset_size(0, 0.1) == 0


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_coreset_size_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="coreset.ratio"):
        coreset_size(100, ratio)


def test_coreset_size_rejects_non_number():
    with pytest.raises(TypeError, match="coreset.ratio"):
        coreset_size(100, "0.1")


# ------------------------------------------------------------------ projection
def test_projection_matrix_seeded():
    a = random_projection_matrix(64, 16, seed=3)
    assert a.shape == (64, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, random_projection_matrix(64, 16, seed=3))
    assert not np.array_equal(a, random_projection_matrix(64, 16, seed=4))
    # roughly norm preserving: E[||xP||²] = ||x||²
    x = np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)
    ratio = (
        np.linalg.norm(x @ random_projection_matrix(64, 512, 0), axis=1) / np.linalg.norm(x, axis=1)
    ).mean()
    assert 0.9 < ratio < 1.1


# ------------------------------------------------------------------ greedy_kcenter
def test_indices_are_real_unique_rows():
    x = clustered()
    idx = greedy_kcenter(x, 50, projection_dim=16, seed=1)
    assert idx.dtype == np.int64 and idx.shape == (50,)
    assert len(np.unique(idx)) == 50
    assert idx.min() >= 0 and idx.max() < len(x)


def test_k_at_least_n_returns_all_rows():
    x = clustered(n=40)
    np.testing.assert_array_equal(greedy_kcenter(x, 40), np.arange(40))
    np.testing.assert_array_equal(greedy_kcenter(x, 100), np.arange(40))
    assert greedy_kcenter(x, 0).shape == (0,)
    with pytest.raises(ValueError):
        greedy_kcenter(x, -1)


def test_duplicate_rows_still_give_unique_indices():
    x = np.ones((30, 8), dtype=np.float32)
    x[:5] = 0.0
    idx = greedy_kcenter(x, 20, projection_dim=None)
    assert len(np.unique(idx)) == 20


def test_deterministic_per_seed_and_seeds_differ():
    x = clustered()
    a = greedy_kcenter(x, 40, projection_dim=16, seed=7)
    b = greedy_kcenter(x, 40, projection_dim=16, seed=7)
    c = greedy_kcenter(x, 40, projection_dim=16, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unprojected_matches_exact_greedy(dtype):
    x = clustered(n=300, dim=32)
    ours = greedy_kcenter(x, 30, projection_dim=None, seed=3, dtype=dtype)
    np.testing.assert_array_equal(ours, exact_greedy(x, 30, first=int(ours[0])))


def test_projected_radius_close_to_exact_greedy():
    x = clustered(n=800, dim=64, clusters=20)
    k = 60
    ours = greedy_kcenter(x, k, projection_dim=32, seed=0)
    exact = exact_greedy(x, k, first=int(ours[0]))
    assert brute_radius(x, ours) <= 1.15 * brute_radius(x, exact)


def test_num_starts():
    x = clustered()
    idx = greedy_kcenter(x, 30, projection_dim=None, seed=2, num_starts=5)
    assert len(np.unique(idx)) == 30
    np.testing.assert_array_equal(idx, greedy_kcenter(x, 30, projection_dim=None, seed=2, num_starts=5))
    # after the random starts, the loop is plain farthest-point selection
    np.testing.assert_array_equal(idx, exact_greedy(x, 30, first=idx[:5]))
    assert not np.array_equal(idx[:5], greedy_kcenter(x, 30, projection_dim=None, seed=3, num_starts=5)[:5])
    assert len(greedy_kcenter(x, 3, num_starts=5)) == 3
    with pytest.raises(ValueError, match="num_starts"):
        greedy_kcenter(x, 3, num_starts=0)


def test_torch_input_and_already_projected():
    x = clustered()
    a = greedy_kcenter(x, 25, projection_dim=16, seed=5)
    np.testing.assert_array_equal(a, greedy_kcenter(torch.from_numpy(x), 25, projection_dim=16, seed=5))
    projected = x @ random_projection_matrix(x.shape[1], 16, seed=5)
    b = greedy_kcenter(projected, 25, projection_dim=16, seed=5, already_projected=True)
    np.testing.assert_array_equal(a, b)


def test_copy_false_works_in_place_with_same_choice():
    projected = clustered() @ random_projection_matrix(64, 16, seed=1)
    before = projected.copy()
    a = greedy_kcenter(projected, 20, seed=1, already_projected=True)
    np.testing.assert_array_equal(projected, before)  # default: input untouched
    b = greedy_kcenter(projected, 20, seed=1, already_projected=True, copy=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(projected, before)  # centred and rescaled in place


def test_float64_input_keeps_precision():
    x = clustered(n=200, dim=16).astype(np.float64) * 1e-4 + 1e4  # tiny spread far from the origin
    ours = greedy_kcenter(x, 20, projection_dim=None, seed=0, dtype="float64")
    np.testing.assert_array_equal(ours, exact_greedy(x, 20, first=int(ours[0])))


def test_float16_input_and_cpu_dtype_errors():
    x = clustered()
    assert len(np.unique(greedy_kcenter(x.astype(np.float16), 10, projection_dim=16))) == 10
    with pytest.raises(ValueError, match="CUDA-only"):
        greedy_kcenter(x, 10, dtype="float16")
    with pytest.raises(ValueError, match="2-D"):
        greedy_kcenter(x[0], 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        greedy_kcenter(clustered(), 10, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_matches_cpu_radius(dtype):
    x = clustered(n=2000, dim=64)
    cpu = greedy_kcenter(x, 50, projection_dim=32, seed=0)
    gpu = greedy_kcenter(x, 50, projection_dim=32, seed=0, device="cuda", dtype=dtype)
    assert len(np.unique(gpu)) == 50 and gpu[0] == cpu[0]
    if dtype == "float32":
        assert np.mean(gpu == cpu) > 0.9
    assert covering_radius(x, gpu) <= 1.1 * covering_radius(x, cpu)


def test_torch_cpu_device_path_matches_numpy():
    # The torch loop (used for CUDA) run on torch's CPU device, for machines without a GPU.
    x = clustered(n=300, dim=32)
    a = greedy_kcenter(x, 30, projection_dim=None, seed=3, dtype="float64")
    b = greedy_kcenter(x, 30, projection_dim=None, seed=3, dtype="float64", device="cpu:0")
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ covering_radius
def test_covering_radius_matches_brute_force():
    x = clustered(n=500, dim=16)
    chosen = np.array([0, 17, 99, 250, 499])
    assert covering_radius(x, chosen, batch=64) == pytest.approx(brute_radius(x, chosen), rel=1e-5)
    assert covering_radius(x, np.arange(len(x))) == 0.0
    with pytest.raises(ValueError):
        covering_radius(x, [])
