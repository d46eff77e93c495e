"""k-means by mergeable Lloyd sums, and the pooled descriptors the experts look at."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.experts.descriptors import (
    cell_descriptors,
    cell_edges,
    expert_projection,
    global_descriptor,
    project_patches,
)
from fedpatchcore.core.experts.kmeans import (
    assign,
    histograms,
    initial_centroids,
    lloyd_sums,
    update_centroids,
)


def test_assign_and_histograms_by_hand():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]])
    patches = np.array([[1.0, 0.0], [9.0, 1.0], [4.9, 0.0], [5.1, 0.0]])
    assert assign(patches, centroids).tolist() == [0, 1, 0, 1]
    image = patches.reshape(1, 2, 2, 2)
    np.testing.assert_allclose(histograms(image, centroids), [[0.5, 0.5]])


def test_lloyd_rounds_over_sites_equal_lloyd_rounds_over_the_pooled_patches():
    rng = np.random.default_rng(0)
    patches = np.concatenate([rng.normal(c, 0.3, (50, 3)) for c in (0.0, 2.0, 5.0)])
    rng.shuffle(patches)
    sites = [patches[:20], patches[20:21], patches[21:]]
    start = initial_centroids(patches[::7], 3, seed=0)
    federated, central = start.copy(), start.copy()
    for _ in range(4):
        merged = lloyd_sums(sites[0], federated)
        for site in sites[1:]:
            merged = merged.merge(lloyd_sums(site, federated))
        federated = update_centroids(federated, merged)
        central = update_centroids(central, lloyd_sums(patches, central))
    np.testing.assert_allclose(federated, central, rtol=1e-12)
    assert sorted(np.round(central[:, 0])) == [0.0, 2.0, 5.0]


def test_a_cluster_nobody_assigns_to_keeps_its_centroid():
    centroids = np.array([[0.0], [100.0]])
    step = lloyd_sums(np.array([[1.0], [3.0]]), centroids)
    assert step.counts.tolist() == [2.0, 0.0]
    np.testing.assert_array_equal(update_centroids(centroids, step), [[2.0], [100.0]])


def test_k_means_starts_spread_over_the_bank():
    rows = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [0.0, 10.0]])
    start = initial_centroids(rows, 3, seed=0)
    # farthest-first takes one row near each of the three groups
    assert sorted(tuple(np.round(c)) for c in start) == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]
    assert len(initial_centroids(rows, 10, seed=0)) == 5  # no more centroids than rows


def test_cells_pool_patch_windows_and_shifted_windows_by_hand():
    patches = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)  # value = 4 y + x
    assert cell_edges(4, 2).tolist() == [0, 2, 4]
    assert cell_edges(3, 8).tolist() == [0, 1, 2, 3]  # never more cells than patches
    cells = cell_descriptors(patches, grid=2, shift=1)
    assert cells.shape == (1, 9, 2, 2, 1)
    # unshifted: the mean of each 2 x 2 block
    np.testing.assert_allclose(cells[0, 0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    # shifted one patch right: top-left window covers columns 1-2 -> mean of 1, 2, 5, 6
    offsets = [(0, 0)] + [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    right = offsets.index((0, 1))
    assert cells[0, right, 0, 0, 0] == pytest.approx(3.5)
    # shifted up at the top row: the window is clipped to the image (row 0 only) -> mean of 0, 1
    up = offsets.index((-1, 0))
    assert cells[0, up, 0, 0, 0] == pytest.approx(0.5)
    assert global_descriptor(patches)[0, 0] == pytest.approx(7.5)


def test_projection_is_public_and_optional():
    first = expert_projection(152, 32, seed=3)
    np.testing.assert_array_equal(first, expert_projection(152, 32, seed=3))
    assert first.shape == (152, 32) and not np.array_equal(first, expert_projection(152, 32, seed=4))
    assert expert_projection(16, 32, seed=0) is None and expert_projection(16, None, seed=0) is None
    features = np.ones((2, 3, 3, 152), dtype=np.float32)
    assert project_patches(features, first).shape == (2, 3, 3, 32)
    with pytest.raises(ValueError, match="fitted on"):
        project_patches(np.ones((1, 2, 2, 10)), first)
