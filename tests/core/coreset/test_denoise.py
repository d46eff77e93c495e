"""Patch denoising before k-center (SoftPatch): hand-computed scores, and planted defects in tiny
images through the real backbone that it must drop first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.coreset.denoise import (
    DenoiseSettings,
    denoise_rows,
    image_outlyingness,
    outlier_scores,
)
from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.features.backbones import load_backbone
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.scoring.patch_scores import score_images


def _grid_rows(values) -> np.ndarray:
    """(images, h, w) scalars -> (N, 1) rows in a feature file's order."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


# --------------------------------------------------------------------------- hand-computed


def test_knn_compares_each_patch_with_the_same_position_of_the_other_images_only():
    # 3 images, a 1x2 grid; position 0 holds 0, 1, 5 (image 2 is odd there), position 1 holds 10, 11, 12.
    rows = _grid_rows([[[0, 10]], [[1, 11]], [[5, 12]]])
    raw = outlier_scores(rows, 3, (1, 2), "knn", radius=0, neighbours=1)
    # nearest other image at the same position: 1, 1, 4 | 1, 1, 1; each over its position's median (1 | 1)
    np.testing.assert_allclose(raw, [1, 1, 1, 1, 4, 1])
    # radius 1 pools both positions: the odd patch's nearest other-image patch is still 1 away by 4
    pooled = outlier_scores(rows, 3, (1, 2), "knn", radius=1, neighbours=1)
    assert pooled.argmax() == 4 and pooled[4] == pytest.approx(4.0)


def test_an_images_own_patches_never_vouch_for_it():
    # Image 1 holds the same odd value at both positions: with its own patches as references it
    # would look normal (distance 0); among the other images it is about 9 away.
    rows = _grid_rows([[[0.0, 0.5]], [[9.0, 9.0]], [[0.2, 0.4]], [[0.1, 0.3]]])
    scores = outlier_scores(rows, 4, (1, 2), "knn", radius=1, neighbours=1)
    assert sorted(np.argsort(-scores)[:2].tolist()) == [2, 3]
    assert scores[2] > 10 and scores[3] > 10


def test_lof_is_about_one_inside_a_cluster_and_large_for_an_isolated_patch():
    values = [0.0, 0.1, 0.2, 0.3, 0.4, 3.0]  # 6 images, one patch each
    scores = outlier_scores(_grid_rows(np.reshape(values, (6, 1, 1))), 6, (1, 1), "lof", neighbours=2)
    assert (scores[:5] < 1.5).all()  # (a cluster patch is about as dense as its neighbours)
    assert scores[5] > 5


def test_gaussian_scores_the_patch_off_its_positions_distribution():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(20, 1, 1, 6))
    rows[7, 0, 0] += 8.0
    scores = outlier_scores(rows.reshape(20, 6), 20, (1, 1), "gaussian")
    assert scores.argmax() == 7 and scores[7] > 2 * np.median(scores)


@pytest.mark.parametrize(("rows", "dim"), [(45, 32), (300, 8)])  # fewer patches than dimensions, and more
def test_gaussian_distance_is_mahalanobis_under_ledoit_wolf_shrinkage(rows, dim):
    from sklearn.covariance import ledoit_wolf

    from fedpatchcore.core.coreset.denoise import _mahalanobis_shrunk

    rng = np.random.default_rng(1)
    pool = rng.normal(size=(rows, dim)) @ rng.normal(size=(dim, dim)) + 5.0
    queries = rng.normal(size=(4, dim)) + 5.0
    covariance, _ = ledoit_wolf(pool - pool.mean(0), assume_centered=True)
    offsets = queries - pool.mean(0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", offsets, np.linalg.inv(covariance), offsets))
    np.testing.assert_allclose(_mahalanobis_shrunk(pool, queries), expected, rtol=1e-9)


def test_drop_the_share_most_outlying_and_weigh_the_rest():
    rows = _grid_rows([[[0, 10]], [[1, 11]], [[5, 12]], [[0.5, 10.5]]])
    result = denoise_rows(rows, 4, (1, 2), DenoiseSettings("knn", share=0.125, radius=0, neighbours=1))
    assert result.dropped.tolist() == [4]  # 1 of 8 rows: image 2's odd patch
    assert result.kept.tolist() == [0, 1, 2, 3, 5, 6, 7]
    assert (result.weights >= 1).all() and len(result.weights) == 7
    np.testing.assert_allclose(result.weights, np.maximum(result.scores[result.kept], 1))


def test_min_score_keeps_a_top_share_row_that_is_not_outlying_enough():
    # Image 2 scores 8 at position 0 (nearest other image 4 away, median 0.5) and 2 at position 1
    # (12 is 1 from 11, median 0.5): a share of 2 rows takes both, a floor of 3 only the first.
    rows = _grid_rows([[[0, 10]], [[1, 11]], [[5, 12]], [[0.5, 10.5]]])
    settings = DenoiseSettings("knn", share=0.25, radius=0, neighbours=1, min_score=1.0)
    np.testing.assert_allclose(denoise_rows(rows, 4, (1, 2), settings).scores, [1, 1, 1, 1, 8, 2, 1, 1])
    assert denoise_rows(rows, 4, (1, 2), settings).dropped.tolist() == [4, 5]
    floored = denoise_rows(rows, 4, (1, 2), DenoiseSettings("knn", 0.25, 0, 1, min_score=3.0))
    assert floored.dropped.tolist() == [4]
    assert floored.weights[floored.kept.tolist().index(5)] == pytest.approx(2.0)  # kept, weighed by its score


def test_image_outlyingness_is_the_robust_z_of_each_images_third_highest_score():
    # 5 images of 4 rows; third-highest per image: 1.0, 1.1, 1.2, 1.3, 3.0 -> median 1.2,
    # MAD 0.1 (deviations 0.2, 0.1, 0, 0.1, 1.8), scaled by 1.4826.
    scores = np.array([[0.5, 1.0, 4.0, 9.0], [1.1, 1.1, 1.1, 1.1], [0.9, 1.2, 1.2, 1.2], [1.3, 1.3, 1.3, 0.0], [3, 3, 3, 3]])
    np.testing.assert_allclose(image_outlyingness(scores.reshape(-1), 5), np.array([-0.2, -0.1, 0, 0.1, 1.8]) / 0.14826)
    # all alike: nothing stands out, an image above the common value is infinitely outlying
    np.testing.assert_array_equal(image_outlyingness(np.array([1.0, 1, 1, 1, 1, 1, 2, 2, 2]), 3), [0, 0, np.inf])


def test_image_gate_keeps_a_clean_images_rare_patch_and_drops_a_defective_images_cluster():
    # 8 images of a 1x4 grid, each position its own cluster (image i at position p: 100 p + 0.1 i).
    # Image 6 holds one rare patch (position 3, +5: a rare normal part); image 7 a defect over
    # positions 0-2 (+5 each). All four odd patches score alike (about 49 times their median).
    values = np.array([[100.0 * p + 0.1 * i for p in range(4)] for i in range(8)])
    values[6, 3] += 5
    values[7, :3] += 5
    rows = values.reshape(-1, 1)
    plain = DenoiseSettings("knn", share=0.2, radius=0, neighbours=1, min_score=3.0, image_gate=None)
    assert denoise_rows(rows, 8, (1, 4), plain).dropped.tolist() == [27, 28, 29, 30]
    gated = denoise_rows(rows, 8, (1, 4), DenoiseSettings("knn", 0.2, 0, 1, min_score=3.0, image_gate=3.5))
    assert gated.dropped.tolist() == [28, 29, 30]  # image 7's three patches; image 6's rare one (row 27) stays
    assert gated.weights[gated.kept.tolist().index(27)] > 30  # kept, and weighed by its score
    assert [image for image, _ in gated.suspect_images(3.5)] == [7]  # what the client names to the user
    assert plain.image_gate is None and gated.suspect_images(None) == []
    assert DenoiseSettings.from_parameters({"denoise": "knn", "denoise_image_gate": 3.5}).image_gate == 3.5


def test_denoising_off_keeps_every_row_at_weight_one():
    result = denoise_rows(np.zeros((8, 3)), 2, (2, 2), DenoiseSettings())
    assert result.kept.tolist() == list(range(8)) and (result.weights == 1).all()


def test_one_image_has_nothing_to_compare_with():
    assert (outlier_scores(np.arange(4.0)[:, None], 1, (2, 2), "lof") == 1).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "median"}, "coreset.denoise must be one of"),
        ({"method": "knn", "share": 1.0}, "coreset.denoise_share"),
        ({"method": "knn", "radius": -1}, "coreset.denoise_radius"),
        ({"method": "knn", "neighbours": 0}, "coreset.denoise_neighbours"),
        ({"method": "knn", "min_score": 0.5}, "coreset.denoise_min_score"),
        ({"method": "knn", "image_gate": 0.0}, "coreset.denoise_image_gate"),
    ],
)
def test_bad_settings_name_the_parameter(settings, message):
    with pytest.raises(ValueError, match=message):
        DenoiseSettings(**settings)


def test_rows_that_do_not_fill_the_grid_are_an_error():
    with pytest.raises(ValueError, match="2 images x 2x2 patches = 8 rows"):
        outlier_scores(np.zeros((7, 3)), 2, (2, 2), "knn")


def test_per_category_method_overrides_the_run_default():
    coreset = {"denoise": "knn", "denoise_share": 0.05, "denoise_by_category": {"fabric": "none"}}
    assert DenoiseSettings.from_parameters(coreset, "plate") == DenoiseSettings("knn", 0.05)
    assert DenoiseSettings.from_parameters({**coreset, "denoise_min_score": 1.5}, "plate").min_score == 1.5
    assert not DenoiseSettings.from_parameters(coreset, "fabric").enabled


# --------------------------------------------------------------------------- planted defects, real backbone

SIZE = 128  # 16x16 patches of the stride-8 stage
N_GOOD, PLANTED = 10, (3, 7)


def _fabric(seed: int) -> np.ndarray:
    """A woven texture with small seeded jitter: every good image looks alike at each position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    phase = rng.uniform(0, 0.5)
    weave = np.sin(xx / 2.0 + phase) * np.sin(yy / 2.0 + phase)
    base = 120 + 50 * weave
    image = np.stack([base, base * 0.9 + 10, 200 - 0.5 * base], axis=-1) + rng.normal(0, 3, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _stain(image: np.ndarray, y: int, x: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    out = image.copy()
    out[y : y + side, x : x + side] = (230, 60, 40)  # a red stain
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y : y + side, x : x + side] = True
    return out, mask


@pytest.fixture(scope="module")
def planted():
    """10 training images, 2 of them with a planted stain (at different places: two alike defects in
    one window are each other's neighbours, which LOF with few neighbours takes for a normal cluster);
    their patch features and the patch-level planted mask (patches the stain overlaps)."""
    torch.set_num_threads(1)
    embedder = PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3)
    images, masks = [], []
    for i in range(N_GOOD):
        image, mask = _fabric(i), np.zeros((SIZE, SIZE), dtype=bool)
        if i in PLANTED:
            image, mask = _stain(image, *((24, 24) if i == PLANTED[0] else (80, 80)))
        images.append(image)
        masks.append(mask)
    features = embedder.embed(np.stack(images))  # (10, 8, 8, d)
    n, h, w, d = features.shape
    cell = SIZE // h
    truth = np.stack(masks).reshape(n, h, cell, w, cell).any(axis=(2, 4))
    return embedder, features.reshape(-1, d), (h, w), truth.reshape(-1)


@pytest.mark.parametrize(
    ("method", "min_precision", "image_gate"),
    [("knn", 0.9, None), ("lof", 0.85, None), ("gaussian", 0.7, None), ("knn", 0.9, 3.5)],
)
def test_denoising_drops_the_planted_patches_first(planted, method, min_precision, image_gate):
    _, rows, grid, truth = planted
    share = truth.mean()  # drop exactly as many rows as were planted
    settings = DenoiseSettings(method, share=share, radius=1, neighbours=3, image_gate=image_gate)
    result = denoise_rows(rows, N_GOOD, grid, settings)
    dropped = np.zeros(len(rows), dtype=bool)
    dropped[result.dropped] = True
    precision = (dropped & truth).sum() / dropped.sum()
    assert precision >= min_precision, f"{method}: {precision:.2f} of the dropped patches were planted"
    assert np.median(result.scores[truth]) > 1.5 * np.median(result.scores[~truth])


def test_soft_weights_raise_the_score_of_a_test_defect_like_a_planted_one(planted):
    embedder, rows, grid, truth = planted
    # Weigh without dropping (share 0): the planted stains stay in the bank, heavily weighted.
    result = denoise_rows(rows, N_GOOD, grid, DenoiseSettings("knn", share=0.0, radius=1, neighbours=3))
    chosen = greedy_kcenter(rows, len(rows) // 2, projection_dim=None, seed=0)
    bank, weights = rows[chosen], result.weights[np.searchsorted(result.kept, chosen)]
    assert weights[truth[chosen]].min() > 1.5  # the stain rows k-center kept
    stained, _ = _stain(_fabric(99), 24, 24)  # where the first planted stain was
    good = _fabric(98)
    test = embedder.embed(np.stack([good, stained]))
    index = build_index(bank)
    _, plain = score_images(index, test, SIZE, sigma=0)
    _, soft = score_images(index, test, SIZE, sigma=0, row_weights=weights)
    assert soft[1] > 1.5 * plain[1]  # the stained test image matches stain rows: its score rises
    assert soft[0] == pytest.approx(plain[0], rel=0.1)  # the good one matches typical rows (weight ~1)
    assert soft[1] - soft[0] > plain[1] - plain[0]
