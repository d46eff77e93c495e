"""Explanations: nearest rows against brute force, provenance, the differentiated score, SHAP."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.explain.attribution import (
    nearest_bank_rows,
    patch_crop,
    patch_window,
    row_provenance,
    score_gradients,
    shap_dimensions,
    smoothing_row,
    top_patches,
)
from fedpatchcore.core.features.extraction import make_embedder
from fedpatchcore.core.scoring.patch_scores import score_images


def test_top_patches_are_the_highest_scores_first_ties_in_row_major_order():
    scores = np.array([[0.1, 0.9, 0.3], [0.9, 0.2, 0.8]])
    assert top_patches(scores, 3).tolist() == [[0, 1], [1, 0], [1, 2]]
    assert top_patches(scores, 10).shape == (6, 2)


def test_nearest_rows_are_a_brute_force_search_over_the_bank():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(7, 24)).astype(np.float32)
    distances, rows = nearest_bank_rows(bank, queries, k=5)
    brute = np.linalg.norm(queries[:, None, :] - bank[None, :, :], axis=2)
    assert rows.tolist() == np.argsort(brute, axis=1)[:, :5].tolist()
    assert distances == pytest.approx(np.sort(brute, axis=1)[:, :5], rel=1e-4)


def test_provenance_goes_bank_row_to_client_row_to_image_and_position():
    origin = np.array(["a", "b", "a", "c"])
    origin_row = np.array([2, 0, 0, 5])
    sources = {
        "a": np.array([[0, 1, 1], [0, 2, 2], [3, 4, 5]]),  # client a's local coreset: (image, y, x)
        "b": np.array([[1, 7, 6]]),
    }
    found = row_provenance(origin, origin_row, sources, [0, 1, 2, 3])
    assert [(p.client, p.client_row, p.image_index, p.y, p.x) for p in found] == [
        ("a", 2, 3, 4, 5),
        ("b", 0, 1, 7, 6),
        ("a", 0, 0, 1, 1),
        ("c", 5, None, None, None),  # no local coreset of c at hand: position unknown
    ]
    with pytest.raises(ValueError, match="different runs"):
        row_provenance(np.array(["b"]), np.array([3]), sources, [0])


def test_patch_window_is_centred_on_the_patch_and_inside_the_image():
    assert patch_window(2, 3, stride=8, size=24, image_hw=(64, 64)) == (8, 16, 32, 40)
    assert patch_window(0, 7, stride=8, size=24, image_hw=(64, 64)) == (0, 40, 24, 64)  # shifted inside
    image = np.arange(64 * 64).reshape(64, 64)
    assert patch_crop(image, 2, 3, 8, 24).shape == (24, 24)


@pytest.mark.parametrize("sigma", [0.0, 1.5, 4.0])
def test_smoothing_row_is_the_row_of_the_gaussian_the_maps_use(sigma):
    values = np.random.default_rng(2).random(40)
    smoothed = gaussian_filter1d(values, sigma) if sigma else values
    for index in (0, 3, 20, 39):
        assert smoothing_row(40, sigma, index) @ values == pytest.approx(smoothed[index])


@pytest.fixture(scope="module")
def embedder():
    return make_embedder({"name": "efficientnet_lite0", "device": "cpu"}, {"num_threads": 2, "neighbourhood": 3})


def test_the_differentiated_score_is_the_score_scoring_reports(embedder):
    rng = np.random.default_rng(0)
    normal = rng.integers(90, 110, size=(2, 64, 64, 3), dtype=np.uint8)
    bank = embedder.embed(normal).reshape(-1, embedder.feature_dim)
    image = normal[0].copy()
    image[20:32, 36:48] = 250  # a bright defect
    gradients = score_gradients(embedder, image, bank, sigma=4.0)
    maps, scores = score_images(build_index(bank), embedder.embed(image[None]), (64, 64), sigma=4.0)
    assert gradients.image_score == pytest.approx(float(scores[0]), rel=1e-4)
    assert np.abs(gradients.anomaly_map - maps[0]).max() < 1e-3 * float(scores[0])
    assert gradients.anomaly_map[gradients.peak] == gradients.anomaly_map.max()
    for saliency in (gradients.gradcam, gradients.input_gradient):
        assert saliency.shape == (64, 64) and saliency.min() >= 0 and saliency.max() == pytest.approx(1.0)
    # The score's gradient lives around the defect, not in the far corner.
    assert gradients.input_gradient[16:36, 32:52].mean() > gradients.input_gradient[50:, :14].mean()


def test_shap_values_sum_to_the_distance_and_find_the_shifted_dimension():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(200, 12)).astype(np.float32)
    feature = bank[0].copy()
    feature[5] += 8.0  # a normal row pushed away from the bank along dimension 5
    background = bank[nearest_bank_rows(bank, feature[None], 6)[1][0]]
    attribution = shap_dimensions(feature, bank, background, max_evals=None, seed=0)
    assert int(np.argmax(attribution.values)) == 5
    assert attribution.base_value + attribution.values.sum() == pytest.approx(attribution.patch_distance, rel=1e-5)


def test_against_a_private_bank_the_score_goes_through_the_public_projection_and_clipping(embedder):
    from fedpatchcore.core.privacy.release import PrivacySettings, public_transform, with_public_transform

    settings = PrivacySettings.from_parameters({"enabled": True, "projection_dim": 24, "clip_norm": 20.0}, seed=0)
    public_map = public_transform(settings, embedder.feature_dim)
    rng = np.random.default_rng(1)
    normal = rng.integers(90, 110, size=(2, 64, 64, 3), dtype=np.uint8)
    private = with_public_transform(embedder, settings)
    bank = private.embed(normal).reshape(-1, 24)  # released rows live in the projected, clipped space
    image = normal[0].copy()
    image[20:32, 36:48] = 250
    gradients = score_gradients(embedder, image, bank, sigma=4.0, public_map=public_map)
    _, scores = score_images(build_index(bank), private.embed(image[None]), (64, 64), sigma=4.0)
    assert gradients.image_score == pytest.approx(float(scores[0]), rel=1e-4)
    # Without the map the raw 152-d patches cannot even be compared with the 24-d rows.
    with pytest.raises(Exception):  # noqa: B017 - faiss raises a plain AssertionError/RuntimeError
        score_gradients(embedder, image, bank, sigma=4.0)
