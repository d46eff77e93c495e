"""The scoring entry: plans resolved up front, test patches of many images in one search, float16 queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fedpatchcore.core.banks.knn import build_index, nearest_neighbours
from fedpatchcore.core.data.types import TEST, CategoryInfo, Sample
from fedpatchcore.core.features.backbones import load_backbone
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.privacy.release import PrivacySettings
from fedpatchcore.core.scoring import category as category_module
from fedpatchcore.core.scoring.category import CategoryPlan, SearchBatches, score_category, score_test_set
from fedpatchcore.core.scoring.patch_scores import PatchScorer, resize_maps

WIDTH, HEIGHT = 64, 48
INFO = CategoryInfo(name="widget", image_size=(WIDTH, HEIGHT), has_pixel_ground_truth=False)
BACKBONE = {"name": "efficientnet_lite0", "device": "cpu", "weights_path": None, "layers": None}
EXTRACTION = {"num_threads": 1, "neighbourhood": 3, "num_workers": 0, "batch_size": 2}


@pytest.fixture(scope="module")
def embedder():
    torch.set_num_threads(1)
    return PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3)


def _texture(seed: int, stain: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 128 + 60 * np.sin((xx + 0.5 * yy + seed) / 4.0)
    image = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    if stain:
        image[10:26, 20:40] = (250, 250, 20)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bank(embedder):
    features = embedder.embed(np.stack([_texture(seed) for seed in range(4)]))
    return np.ascontiguousarray(features.reshape(-1, features.shape[-1]), dtype=np.float32)


@pytest.fixture
def samples(tmp_path):
    """Seven test images (every third stained) and an unreadable one among them."""
    out = []
    for i in range(8):
        path = tmp_path / f"{i:03d}.png"
        if i == 4:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(_texture(10 + i, stain=i % 3 == 0)).save(path)
        out.append(Sample("widget", TEST, "stain" if i % 3 == 0 else "good", f"{i:03d}", str(path)))
    return out


def test_many_images_in_one_search_give_what_one_image_at_a_time_gives(embedder, bank):
    features = embedder.embed(np.stack([_texture(20 + i, stain=i == 1) for i in range(5)]))
    index = build_index(bank)
    for scorer in (PatchScorer(), PatchScorer(image_score="topk_mean", topk=3), PatchScorer(reweight=True)):
        maps, scores = scorer.score(index, features, (WIDTH, HEIGHT), bank=bank)
        one_by_one = [scorer.score(index, f[None], (WIDTH, HEIGHT), bank=bank) for f in features]
        np.testing.assert_array_equal(maps, np.concatenate([m for m, _ in one_by_one]))
        np.testing.assert_array_equal(scores, np.concatenate([s for _, s in one_by_one]))
    assert maps.shape == (5, HEIGHT, WIDTH) and scores.argmax() == 1


def test_score_category_searches_one_pass_or_many_at_once(embedder, bank, samples):
    index = build_index(bank)
    one_pass = score_category(samples, INFO, embedder, index, search=SearchBatches(2, num_workers=0))
    many = score_category(samples, INFO, embedder, index, search=SearchBatches(2, query_patches=10**6, num_workers=0))
    # the unreadable image is skipped and reported either way; the rest keep their order
    for result in (one_pass, many):
        assert [s.image_id for s in result.samples] == ["000", "001", "002", "003", "005", "006", "007"]
        assert [entry["path"] for entry in result.skipped] == [samples[4].image_path]
    # query_patches=None: each forward pass searched alone, exactly what scoring its images gives
    passes = [samples[0:2], samples[2:4], samples[5:6], samples[6:8]]  # the unreadable 4 leaves 5 alone
    expected = [PatchScorer().score(index, embedder.embed(_pixels(group)), (WIDTH, HEIGHT)) for group in passes]
    np.testing.assert_array_equal(one_pass.maps, np.concatenate([m for m, _ in expected]))
    np.testing.assert_array_equal(one_pass.image_scores, np.concatenate([s for _, s in expected]))
    # many passes in one search: BLAS blocks the queries differently, so float32 rounding apart
    np.testing.assert_allclose(many.maps, one_pass.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.image_scores, one_pass.image_scores, rtol=1e-5)
    stained = np.array([s.defect_type == "stain" for s in many.samples])
    assert many.image_scores[stained].min() > many.image_scores[~stained].max()


def _pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(Image.open(s.image_path).convert("RGB")) for s in samples])


def test_float16_queries_keep_the_nearest_row_unless_the_best_two_are_closer_than_the_rounding(embedder, bank, samples):
    features = embedder.embed(np.stack([_texture(30 + i, stain=i == 0) for i in range(6)]))
    queries = features.reshape(-1, features.shape[-1]).astype(np.float32)
    rounded = queries.astype(np.float16).astype(np.float32)
    index = build_index(bank)
    dist32, ids32 = nearest_neighbours(index, queries, k=2, device="cpu")
    dist16, ids16 = nearest_neighbours(index, queries.astype(np.float16), k=1, device="cpu")
    # Moving a query by e = |q16 - q| moves every distance by at most e (triangle inequality): the
    # nearest row can only change where the best two rows are within 2e; faiss' float32 norm
    # expansion adds its own rounding, allowed for here as 1e-4 of the distance.
    error = np.linalg.norm(rounded - queries, axis=1)
    allowance = 1e-4 * dist32[:, 1]
    decided = dist32[:, 1] - dist32[:, 0] > 2 * error + 2 * allowance
    assert decided.mean() > 0.9  # the statement below covers almost every query
    np.testing.assert_array_equal(ids16[decided, 0], ids32[decided, 0])
    assert np.all(np.abs(dist16[:, 0] - dist32[:, 0]) <= error + allowance)
    # A map value is a weighted mean of patch scores (bilinear and Gaussian weights sum to 1):
    # image scores move by at most the largest distance change.
    index = build_index(bank)
    half = score_category(samples, INFO, embedder, index, search=SearchBatches(2, query_dtype="float16", num_workers=0))
    full = score_category(samples, INFO, embedder, index, search=SearchBatches(2, num_workers=0))
    bound = 2.0 ** -11 * float(np.linalg.norm(queries, axis=1).max()) * 1.01 + 1e-4 * float(full.maps.max())
    assert 0 < np.abs(half.image_scores - full.image_scores).max() <= bound
    np.testing.assert_array_equal(np.argsort(half.image_scores), np.argsort(full.image_scores))
    with pytest.raises(ValueError, match="unknown scoring.query_dtype 'int8'"):
        SearchBatches(query_dtype="int8")


def test_score_test_set_scores_each_category_from_its_plan(embedder, bank, samples, monkeypatch):
    loaded = []

    def make_embedder(backbone, extraction):  # the network is loaded once per distinct plan network
        loaded.append(extraction["neighbourhood"])
        return embedder

    monkeypatch.setattr(category_module, "make_embedder", make_embedder)
    other = CategoryInfo("other", (WIDTH, HEIGHT), False)
    tuned = CategoryInfo("tuned", (WIDTH, HEIGHT), False)
    as_other = [Sample("other", s.split, s.defect_type, s.image_id, s.image_path) for s in samples]
    as_tuned = [Sample("tuned", s.split, s.defect_type, s.image_id, s.image_path) for s in samples]
    scoring = {"sigma": 4.0, "reweight": False, "reweight_neighbours": 9, "batch_size": 2}
    plans = {
        "widget": CategoryPlan.from_blocks(INFO, BACKBONE, EXTRACTION, scoring),
        "other": CategoryPlan.from_blocks(other, BACKBONE, EXTRACTION, {**scoring, "sigma": 0.0}),
        # a tuned setting: another neighbourhood, seen by the network at 32x24, maps published at 64x48
        "tuned": CategoryPlan.from_blocks(tuned, BACKBONE, {**EXTRACTION, "neighbourhood": 1}, scoring, (32, 24)),
    }
    assert plans["widget"].network_key == plans["other"].network_key != plans["tuned"].network_key
    index = build_index(bank)
    search = SearchBatches.from_params(scoring, EXTRACTION)
    assert search == SearchBatches(2, num_workers=0)
    got = score_test_set(
        plans,
        {"other": as_other, "tuned": as_tuned, "widget": samples},
        {"widget": index, "other": index, "tuned": index},
        {},
        PrivacySettings.from_parameters({"enabled": False}, 0),
        search,
    )
    assert loaded == [3, 1]
    assert list(got) == ["other", "tuned", "widget"]
    widget = score_category(samples, INFO, embedder, index, search=search)
    np.testing.assert_array_equal(got["widget"].maps, widget.maps)
    sharp = score_category(samples, INFO, embedder, index, PatchScorer(sigma=0.0), search=search)
    np.testing.assert_array_equal(got["other"].maps, sharp.maps)
    small = CategoryInfo("tuned", (32, 24), False)
    at_input = score_category(samples, small, embedder, index, search=search)
    assert got["tuned"].maps.shape == (7, HEIGHT, WIDTH)
    np.testing.assert_array_equal(got["tuned"].maps, resize_maps(at_input.maps, (WIDTH, HEIGHT)))
    np.testing.assert_array_equal(got["tuned"].image_scores, at_input.image_scores)  # scored before resizing
    with pytest.raises(KeyError, match="no memory bank for category 'other'"):
        score_test_set(plans, {"other": as_other}, {}, {}, PrivacySettings.from_parameters({}, 0), search)
