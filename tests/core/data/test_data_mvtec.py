"""MVTec AD reader: <id>_mask.png ground truth, folders without ground truth, category discovery."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.loading import DatasetLayoutError, load_defect_channels, load_image, load_mask
from fedpatchcore.core.data.mvtec import MVTEC_DEFAULT_IMAGE_SIZE, index_mvtec


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _category(root, name, with_gt=True):
    rgb = np.full((24, 32, 3), 100, dtype=np.uint8)
    for i in (2, 10, 1):  # natural order: 1, 2, 10
        _png(root / name / "train" / "good" / f"{i}.png", rgb)
    _png(root / name / "test" / "good" / "000.png", rgb)
    _png(root / name / "test" / "crack" / "000.png", rgb)
    if with_gt:
        mask = np.zeros((24, 32), dtype=np.uint8)
        mask[4:8, 4:12] = 255
        _png(root / name / "ground_truth" / "crack" / "000_mask.png", mask)


def test_mvtec_layout_masks_and_sizes(tmp_path):
    _category(tmp_path, "bottle")
    _category(tmp_path, "wood", with_gt=False)
    (tmp_path / "docs").mkdir()  # not a category: ignored by "all"
    (tmp_path / "license.txt").write_text("x")
    samples, infos, skipped = index_mvtec(tmp_path, "all", image_sizes={"bottle": (16, 12)})
    assert skipped == [] and list(infos) == ["bottle", "wood"]
    bottle = [s for s in samples if s.category == "bottle"]
    assert [s.image_id for s in bottle] == ["1", "2", "10", "000", "000"]
    assert [s.defect_type for s in bottle] == ["good"] * 4 + ["crack"]
    crack = bottle[-1]
    assert crack.label == 1 and crack.mask_paths[0].endswith("000_mask.png")
    info = infos["bottle"]
    assert info.has_pixel_ground_truth and info.image_size == (16, 12)
    mask = load_mask(crack, info)
    assert mask.shape == (12, 16) and mask.sum() == 2 * 4
    assert load_defect_channels(crack, info)[0][1] is None  # MVTec has no defects config
    assert load_image(crack.image_path, info.image_size).shape == (12, 16, 3)


def test_folder_without_ground_truth(tmp_path):
    _category(tmp_path, "wood", with_gt=False)
    samples, infos, _ = index_dataset("mvtec", tmp_path, ["wood"])
    info = infos["wood"]
    assert not info.has_pixel_ground_truth and info.image_size == MVTEC_DEFAULT_IMAGE_SIZE
    crack = [s for s in samples if s.defect_type == "crack"][0]
    assert crack.label == 1 and crack.mask_paths == ()
    assert load_mask(crack, info).shape == (256, 256) and not load_mask(crack, info).any()


def test_mvtec_errors(tmp_path):
    _category(tmp_path, "bottle")
    with pytest.raises(ValueError, match=r"bottle") as err:
        index_mvtec(tmp_path, ["screw"])
    assert "screw" in str(err.value)
    (tmp_path / "cable" / "train").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="cable"):
        index_mvtec(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="empty"):
        index_mvtec(empty)
