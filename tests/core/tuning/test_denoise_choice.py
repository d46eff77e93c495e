"""Choosing the denoising method per category on a training folder with planted pseudo-anomalies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpatchcore.core.coreset.denoise import DenoiseSettings
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.features.backbones import load_backbone
from fedpatchcore.core.features.embedding import PatchEmbedder
from fedpatchcore.core.tuning.denoise_choice import _planted_patches, choose_denoising, planted_images
from fedpatchcore.core.tuning.split import split_validation
from fedpatchcore.core.tuning.tuner import BankConfig


def test_a_known_share_of_the_bank_images_is_planted_reproducibly():
    keys = [f"k{i:02d}" for i in range(20)]
    first = planted_images(keys, 0.15, seed=0, category="plate")
    assert len(first) == 3 and set(first) <= set(keys)
    assert planted_images(list(reversed(keys)), 0.15, seed=0, category="plate") == first  # order-free
    assert planted_images(keys, 0.15, seed=1, category="plate") != first
    assert planted_images(keys[:3], 0.05, seed=0, category="plate") != []  # at least one
    assert planted_images(keys, 0.0, seed=0, category="plate") == []
    with pytest.raises(ValueError, match="tune.planted_share"):
        planted_images(keys, 1.0, seed=0, category="plate")


def test_planted_masks_map_onto_the_patch_grid():
    mask = np.zeros((16, 16), dtype=bool)
    mask[0:3, 12:16] = True  # top right corner: patch (0, 3) of a 4x4 grid
    truth = _planted_patches(["a", "b"], {"b": mask}, (4, 4)).reshape(2, 4, 4)
    assert not truth[0].any()
    assert truth[1].sum() == 1 and truth[1, 0, 3]


@pytest.fixture(scope="module")
def choice(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(
        root, seed=0, image_size=(64, 64), n_train=12, n_test_good=1, n_test_per_defect=1,
        categories=["woven_fabric"],
    )
    samples, infos, _ = index_dataset("synthetic", root, "all")
    split = split_validation(samples, 0.25, seed=0)
    torch.set_num_threads(1)
    embedder = PatchEmbedder(load_backbone("efficientnet_lite0"), neighbourhood=3)
    config = BankConfig(coreset_ratio=0.25, projection_dim=64, num_workers=0)
    return choose_denoising(
        split, infos, embedder, config, ["none", "knn", "lof"], DenoiseSettings(share=0.05), 0.25,
        per_image=2, scratch_dir=tmp_path_factory.mktemp("scratch"),
    )


def test_every_method_is_scored_on_the_same_planted_folder(choice):
    table = choice.table
    assert table["denoise"].tolist() == ["none", "knn", "lof"]
    assert (table["planted_images"] == 2).all() and (table["bank_images"] == 9).all()  # 25% of 9, rounded
    assert table["planted_patch_share"].nunique() == 1 and 0 < table["planted_patch_share"].iloc[0] < 0.5
    assert table["val_auroc"].between(0, 1).all()
    assert np.isnan(table.loc[0, "drop_precision"])  # none drops nothing
    # what denoising drops is mostly planted: far more than the planted share of all patches
    assert (table.loc[1:, "drop_precision"] > 2 * table["planted_patch_share"].iloc[0]).all()
    assert table["bank_rows"].nunique() == 1  # the same budget whatever was dropped


def test_the_best_method_is_chosen_and_the_default_kept_on_ties(choice):
    table = choice.table
    best = table.loc[table["val_auroc"].idxmax(), "denoise"]
    baseline = table.loc[table["denoise"] == "none", "val_auroc"].iloc[0]
    expected = best if table["val_auroc"].max() > baseline else "none"
    assert choice.chosen == {"woven_fabric": expected}
    assert table.loc[table["chosen"], "denoise"].tolist() == [expected]
    assert choice.parameters() == {"coreset": {"denoise_by_category": {"woven_fabric": expected}}}
