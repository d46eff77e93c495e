"""Choosing settings on a validation split of training images: never a test image."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.data import loading
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST, TRAIN, Sample
from fedpatchcore.core.features.batches import iter_image_batches
from fedpatchcore.core.features.setting import Setting, settings_per_category
from fedpatchcore.core.scoring.patch_scores import score_images, topk_mean
from fedpatchcore.core.tuning.split import build_validation_images, split_validation
from fedpatchcore.core.tuning.tuner import BankConfig, candidate_grid, choose_settings, tune

CATEGORIES = ["metal_plate", "parts_tray"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(
        root,
        seed=0,
        image_size=(48, 48),
        n_train=8,
        n_test_good=2,
        n_test_per_defect=1,
        categories=CATEGORIES,
    )
    samples, infos, _ = index_dataset("synthetic", root, "all")
    return samples, infos


class PoisonedTestSample:
    """A test sample whose label, path or anything but ``split`` must never be read."""

    split = TEST

    def __getattr__(self, name):
        raise AssertionError(f"read {name!r} of a test sample")


def _forbid_test_files(monkeypatch) -> list[str]:
    """Make every file open under a test/ or ground_truth/ folder fail; return the opened paths."""
    opened: list[str] = []
    pil_open, builtin_open = Image.open, builtins.open

    def check(path) -> None:
        if isinstance(path, str | os.PathLike):
            parts = os.path.normpath(os.fspath(path)).split(os.sep)
            if TEST in parts or "ground_truth" in parts:
                raise AssertionError(f"opened a test file: {path}")
            opened.append(os.fspath(path))

    def guarded_pil_open(fp, *args, **kwargs):
        check(fp)
        return pil_open(fp, *args, **kwargs)

    def guarded_open(file, *args, **kwargs):
        check(file)
        return builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded_pil_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    return opened


# --------------------------------------------------------------------------------------------
# split


def test_split_uses_training_images_only_and_is_seeded(dataset):
    samples, _ = dataset
    poisoned = [PoisonedTestSample() for _ in range(3)]
    split = split_validation(samples + poisoned, fraction=0.25, seed=0)
    for sample in split.train + split.validation:
        assert sample.split == TRAIN
    for category in CATEGORIES:
        assert sum(s.category == category for s in split.validation) == 2  # round(0.25 * 8)
        assert sum(s.category == category for s in split.train) == 6
    assert not {s.key for s in split.train} & {s.key for s in split.validation}
    again = split_validation(samples, fraction=0.25, seed=0)
    assert [s.key for s in again.validation] == [s.key for s in split.validation]
    other = split_validation(samples, fraction=0.25, seed=1)
    assert [s.key for s in other.validation] != [s.key for s in split.validation]
    # one category's split does not depend on the others
    alone = split_validation([s for s in samples if s.category == "metal_plate"], fraction=0.25, seed=0)
    assert [s.key for s in alone.validation] == [
        s.key for s in split.validation if s.category == "metal_plate"
    ]
    frame = split.to_frame()
    assert set(frame["role"]) == {"bank", "validation"} and len(frame) == 16


def test_split_errors():
    few = [Sample("c", TRAIN, "good", str(i), f"/x/{i}.png") for i in range(3)]
    with pytest.raises(ValueError, match="too few"):
        split_validation(few, fraction=0.5)
    with pytest.raises(ValueError, match="fraction"):
        split_validation(few, fraction=1.0)


# --------------------------------------------------------------------------------------------
# validation images


def test_validation_images_masks_and_sizes(dataset):
    samples, _ = dataset
    split = split_validation(samples, fraction=0.25, seed=0)
    val = [s for s in split.validation if s.category == "parts_tray"]
    images = build_validation_images(val, (48, 48), seed=0, per_image=3)
    assert images.good.shape == (2, 48, 48, 3) and images.anomalous.shape == (6, 48, 48, 3)
    assert list(images.labels) == [0, 0, 1, 1, 1, 1, 1, 1]
    for anomaly, mask, source in zip(images.anomalous, images.masks, images.sources, strict=True):
        np.testing.assert_array_equal(mask, (anomaly != images.good[source]).any(-1))
        assert mask.any()
    # another resolution: read at that size, the same kinds of anomaly in about the same places
    small = build_validation_images(val, (32, 24), seed=0, per_image=3)
    assert small.good.shape == (2, 24, 32, 3) and small.masks.shape == (6, 24, 32)
    assert small.kinds == images.kinds and small.sources == images.sources
    for anomaly, mask, source in zip(small.anomalous, small.masks, small.sources, strict=True):
        np.testing.assert_array_equal(mask, (anomaly != small.good[source]).any(-1))
    same = build_validation_images(val, (48, 48), seed=0, per_image=3)
    np.testing.assert_array_equal(same.anomalous, images.anomalous)
    test_sample = next(s for s in samples if s.split == TEST and s.category == "parts_tray")
    with pytest.raises(ValueError, match="never from test"):
        build_validation_images([*val, test_sample], (48, 48))


# --------------------------------------------------------------------------------------------
# settings and choice


def test_setting_names_params_round_trip():
    default = Setting()
    assert default.name == "efficientnet_lite0@default/max"
    s = Setting("efficientnet_lite1", ("stage2", "stage4"), (64, 48), "topk_mean", topk=5, neighbourhood=5)
    assert s.name == "efficientnet_lite1[stage2+stage4]@64x48/p5/topk_mean(k=5)"
    assert Setting.from_tuned(s.to_params()) == s
    assert Setting(reweight=True, num_neighbours=5).name.endswith("/max+reweight(b=5)")
    conf = Setting.from_params(
        {"name": "efficientnet_lite0", "weights_path": None, "device": "auto"},
        {"neighbourhood": 3, "batch_size": 8},
        {"sigma": 4.0, "reweight": False, "reweight_neighbours": 9},
    )
    assert conf == default
    with pytest.raises(ValueError, match="reweight"):
        Setting(image_score="topk_mean", reweight=True)
    with pytest.raises(ValueError, match="image_score"):
        Setting(image_score="median")


def test_settings_per_category_from_tuned_parameters():
    lite1 = Setting("efficientnet_lite1", image_size=(64, 64), image_score="topk_mean", topk=3)
    tuned = {"b": {"setting": lite1.name, "val_auroc": 0.9, **lite1.to_params()}}
    settings = settings_per_category(
        ["b", "a"], {"name": "efficientnet_lite0"}, {"neighbourhood": 3}, {}, tuned
    )
    assert settings == {"a": Setting(), "b": lite1}


def test_candidate_grid_default_first_no_duplicates():
    grid = candidate_grid(
        backbones=["efficientnet_lite0", "efficientnet_lite1"],
        layers={"efficientnet_lite1": [None, ["stage2", "stage4"]]},
        image_sizes=[None, [64, 64]],
        scorings=[{"image_score": "max"}, {"image_score": "topk_mean", "topk": 3}],
        default=Setting(),
    )
    assert grid[0] == Setting()
    assert len(grid) == len(set(grid)) == (1 + 2) * 2 * 2
    assert len({s.name for s in grid}) == len(grid)


def test_choose_settings_best_on_validation_ties_and_min_gain():
    table = pd.DataFrame(
        {
            "category": ["a", "a", "a", "b", "b", "c", "c"],
            "setting": ["d", "x", "y", "d", "x", "d", "x"],
            "val_auroc": [0.80, 0.95, 0.95, 0.90, 0.91, 0.7, np.nan],
        }
    )
    assert choose_settings(table) == {"a": "x", "b": "x", "c": "d"}  # tie a: first of x, y
    assert choose_settings(table, "d", min_gain=0.05) == {"a": "x", "b": "d", "c": "d"}
    assert choose_settings(table, "d", min_gain=0.0)["b"] == "x"


# --------------------------------------------------------------------------------------------
# image scores


def test_topk_mean_hand_computed():
    patch_scores = np.array([[[1.0, 5.0], [3.0, 4.0]], [[2.0, 2.0], [9.0, 0.0]]])
    np.testing.assert_allclose(topk_mean(patch_scores, 2), [4.5, 5.5])
    np.testing.assert_allclose(topk_mean(patch_scores, 1), [5.0, 9.0])
    np.testing.assert_allclose(topk_mean(patch_scores, 10), [3.25, 3.25])
    with pytest.raises(ValueError, match="topk"):
        topk_mean(patch_scores, 0)


def test_score_images_topk_mean_on_known_distances():
    # bank = the origin: every patch's score is its norm; norms laid out by hand
    norms = np.array([[1.0, 2.0, 3.0], [4.0, 8.0, 6.0]], dtype=np.float32)
    features = np.zeros((1, 2, 3, 4), np.float32)
    features[0, :, :, 0] = norms
    index = build_index(np.zeros((1, 4), np.float32))
    maps, scores = score_images(index, features, (12, 8), sigma=0.0, image_score="topk_mean", topk=3)
    assert scores[0] == pytest.approx((8 + 6 + 4) / 3, rel=1e-6)
    maps_max, scores_max = score_images(index, features, (12, 8), sigma=0.0)
    np.testing.assert_array_equal(maps, maps_max)
    assert scores_max[0] == maps_max[0].max()
    with pytest.raises(ValueError, match="reweight"):
        score_images(index, features, (12, 8), image_score="topk_mean", reweight=True)
    with pytest.raises(ValueError, match="image_score"):
        score_images(index, features, (12, 8), image_score="mean")


def test_max_score_is_unchanged_by_the_new_options():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    features = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
    index = build_index(bank)
    a = score_images(index, features, (16, 16))
    b = score_images(index, features, (16, 16), image_score="max", topk=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------
# the tuner


def test_tune_never_opens_a_test_image_and_chooses_the_best(dataset, monkeypatch, tmp_path):
    torch.set_num_threads(1)
    samples, infos = dataset
    opened = _forbid_test_files(monkeypatch)
    grid = candidate_grid(
        image_sizes=[None, [32, 32]],
        scorings=[{"image_score": "max"}, {"image_score": "topk_mean", "topk": 3}],
    )
    result = tune(
        samples,  # train AND test samples: the tuner must drop the test ones unread
        infos,
        grid,
        BankConfig(coreset_ratio=0.25, batch_size=4, seed=0),
        validation_fraction=0.25,
        per_image=2,
        scratch_dir=tmp_path,
    )
    train_paths = {s.image_path for s in samples if s.split == TRAIN}
    assert train_paths & set(opened), "the guard saw no image: it would not catch a test image either"
    # ... and the guard does catch a test image, by any of the project's read paths
    test_sample = next(s for s in samples if s.split == TEST)
    with pytest.raises(AssertionError, match="opened a test file"):
        loading.load_image(test_sample.image_path, (48, 48))
    with pytest.raises(AssertionError, match="opened a test file"):
        list(iter_image_batches([test_sample], (48, 48), 1, [], num_workers=0))
    table = result.table
    assert list(table.columns[:4]) == ["category", "setting", "val_auroc", "chosen"]
    assert len(table) == len(CATEGORIES) * len(grid)
    assert set(table["image_size"]) == {"48x48", "32x32"}
    assert table["val_auroc"].between(0, 1).all()
    assert (table["n_val_good"] == 2).all() and (table["n_val_anomalous"] == 4).all()
    for category, rows in table.groupby("category"):
        assert rows["chosen"].sum() == 1
        chosen = rows[rows["chosen"]].iloc[0]
        assert chosen["val_auroc"] == rows["val_auroc"].max()
        assert result.chosen[category].name == chosen["setting"]
    params = result.parameters()["tuned"]
    assert set(params) == set(CATEGORIES)
    for category, entry in params.items():
        assert Setting.from_tuned(entry) == result.chosen[category]
    report = result.report()
    for category in CATEGORIES:
        assert f"## {category}" in report
    assert "why:" in report
    # validation images were held out of the bank
    assert not {s.key for s in result.split.train} & {s.key for s in result.split.validation}
