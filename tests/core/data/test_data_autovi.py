"""AutoVI reader, index entry point and image/mask loading, on tiny hand-made folders."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.data.autovi import AUTOVI_CATEGORIES, AUTOVI_IMAGE_SIZES, index_autovi
from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.loading import (
    DatasetLayoutError,
    ImageReadError,
    MaskSizeError,
    load_defect_channels,
    load_image,
    load_mask,
    original_size,
)

SIZE = (40, 30)  # (width, height) of the files on disk


def _png(path, size=SIZE, value=None, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        rng = np.random.default_rng(len(str(path)))
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        array = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        array = value
    Image.fromarray(array).save(path)


def _channel(value, box, size=SIZE):
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    return mask


def _autovi(root, category="pipe_clip"):
    cat = root / category
    for i in range(2):
        _png(cat / "train" / "good" / f"{i:04d}.png")
    _png(cat / "test" / "good" / "0000.png", mode="L")
    _png(cat / "test" / "missing" / "0000.png")
    _png(cat / "ground_truth" / "missing" / "0000" / "0000.png", value=_channel(255, (0, 0, 10, 10)))
    _png(cat / "ground_truth" / "missing" / "0000" / "0001.png", value=_channel(128, (20, 20, 30, 30)))
    (cat / "defects_config.json").write_text(
        json.dumps(
            [
                {
                    "defect_name": "missing",
                    "pixel_value": 255,
                    "saturation_threshold": 100,
                    "relative_saturation": False,
                },
                {
                    "defect_name": "extra",
                    "pixel_value": 128,
                    "saturation_threshold": 1.0,
                    "relative_saturation": True,
                },
            ]
        )
    )
    return cat


def test_layout_labels_and_multichannel_ground_truth(tmp_path):
    _autovi(tmp_path)
    samples, infos, skipped = index_autovi(tmp_path, "all")
    assert skipped == []
    assert [s.key for s in samples] == [
        "pipe_clip/train/good/0000",
        "pipe_clip/train/good/0001",
        "pipe_clip/test/good/0000",
        "pipe_clip/test/missing/0000",
    ]
    assert [s.label for s in samples] == [0, 0, 0, 1]
    assert all(isinstance(s.image_path, str) for s in samples)
    defective = samples[-1]
    assert [p.rsplit("/", 1)[-1] for p in defective.mask_paths] == ["0000.png", "0001.png"]
    info = infos["pipe_clip"]
    assert info.image_size == AUTOVI_IMAGE_SIZES["pipe_clip"] == (400, 400)
    assert info.has_pixel_ground_truth
    assert [d.defect_name for d in info.defects] == ["missing", "extra"]
    assert info.defects[0].relative_saturation is False


def test_resize_and_mask_channels(tmp_path):
    _autovi(tmp_path)
    samples, infos, _ = index_autovi(tmp_path, ["pipe_clip"], image_sizes={"pipe_clip": [20, 16]})
    info = infos["pipe_clip"]
    assert info.image_size == (20, 16)
    good_gray, defective = samples[2], samples[3]
    image = load_image(good_gray.image_path, info.image_size)
    assert image.shape == (16, 20, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])  # grayscale expanded
    assert not load_mask(good_gray, info).any()
    channels = load_defect_channels(defective, info)
    assert [d.defect_name for _, d in channels] == ["missing", "extra"]
    assert all(m.shape == (16, 20) and m.dtype == bool for m, _ in channels)
    merged = load_mask(defective, info)
    assert np.array_equal(merged, channels[0][0] | channels[1][0])
    assert merged[0, 0] and merged[-3, -6] and not merged[0, -1]
    assert original_size(defective.image_path) == SIZE


def test_corrupt_image_skipped_and_reported(tmp_path, caplog):
    cat = _autovi(tmp_path)
    bad = cat / "train" / "good" / "0002.png"
    bad.write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        samples, _, skipped = index_autovi(tmp_path)
    assert [s["path"] for s in skipped] == [str(bad)]
    assert "unreadable" in skipped[0]["reason"]
    assert (skipped[0]["category"], skipped[0]["split"]) == (cat.name, "train")  # where the metrics place it
    assert str(bad) in caplog.text
    assert str(bad) not in [s.image_path for s in samples]
    with pytest.raises(ImageReadError, match="0002.png"):
        load_image(bad, (8, 8))


def test_mask_size_mismatch_names_files(tmp_path):
    cat = _autovi(tmp_path)
    mask = cat / "ground_truth" / "missing" / "0000" / "0001.png"
    _png(mask, value=_channel(128, (0, 0, 2, 2), size=(20, 20)))
    with pytest.raises(MaskSizeError, match="0001.png") as err:
        index_autovi(tmp_path)
    assert "missing/0000.png" in str(err.value)


def test_missing_train_good_and_missing_root(tmp_path):
    _autovi(tmp_path)
    (tmp_path / "tank_screw" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="tank_screw"):
        index_autovi(tmp_path, "all")
    with pytest.raises(FileNotFoundError, match="dataset.root"):
        index_autovi(tmp_path / "nowhere")


def test_index_dataset_errors_and_sizes(tmp_path):
    _autovi(tmp_path)
    with pytest.raises(ValueError, match="dataset.format"):
        index_dataset("visa", tmp_path, "all")
    with pytest.raises(ValueError, match="pipe_clip") as err:
        index_dataset("autovi", tmp_path, ["engine_wiring"])
    assert "engine_wiring" in str(err.value)
    _, infos, _ = index_dataset("autovi", tmp_path, "pipe_clip", image_sizes={"default": (8, 6)})
    assert infos["pipe_clip"].image_size == (8, 6)
    assert set(AUTOVI_IMAGE_SIZES) == set(AUTOVI_CATEGORIES)
