"""Inspecting new images: scores, OK/NOK at a calibrated threshold, masks, tiles, files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedpatchcore.core.data.index import index_dataset
from fedpatchcore.core.data.synthetic import generate_synthetic_dataset
from fedpatchcore.core.data.types import TEST, TRAIN, CategoryInfo, Sample
from fedpatchcore.core.features.setting import EmbedderCache, Setting
from fedpatchcore.core.scoring.predict import (
    PREDICTION_COLUMNS,
    UNREADABLE,
    build_category_models,
    calibrate_from_validation,
    list_images,
    predict_folder,
    save_predictions,
    tile_boxes,
    training_image_sizes,
)
from fedpatchcore.core.scoring.thresholds import calibrate
from fedpatchcore.core.tuning.split import split_validation
from fedpatchcore.core.tuning.tuner import BankConfig, build_category_bank, embed_images
from tests.core.tuning.test_tuner import PoisonedTestSample, _forbid_test_files

SIZE = 64
PHASES = (0, 16, 32, 48, 64)


def _stripes(seed: int, size: int = SIZE, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + offset
    base = 128 + 60 * np.sin((xx + yy) / 4.0)
    img = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 3, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _checks(seed: int, size: int = SIZE, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + offset
    base = np.where(((xx // 8) + (yy // 8)) % 2 == 0, 60.0, 190.0)
    img = np.stack([base, base, base * 0.5], axis=-1) + rng.normal(0, 3, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _with_square(img: np.ndarray, y: int, x: int, side: int) -> np.ndarray:
    out = img.copy()
    out[y : y + side, x : x + side] = (255, 0, 0)
    return out


def _save(array: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def models_and_calibrations():
    """Two categories with banks of their own textures; thresholds from held-out good images."""
    torch.set_num_threads(1)
    setting = Setting()
    embedders = EmbedderCache()
    embedder = embedders.get(setting)
    makers = {"stripes": _stripes, "checks": _checks}
    banks, infos, calibrations = {}, {}, {}
    for name, make in makers.items():
        # textures at several phases (every phase a 64 px tile of a 128 px image can have)
        train = np.stack([make(seed, offset=PHASES[seed % 5]) for seed in range(10)])
        banks[name] = embed_images(embedder, train).reshape(-1, embedder.feature_dim)
        infos[name] = CategoryInfo(name, (SIZE, SIZE), False)
    models = build_category_models(banks, infos, setting, embedders=embedders)
    for name, make in makers.items():
        good = np.stack([make(seed, offset=PHASES[seed % 5]) for seed in range(100, 110)])
        _, scores = models[name].score(good)
        calibrations[name] = calibrate(scores, 0.0, "quantile", category=name)
    return models, calibrations


def test_predict_folder_labels_masks_and_files(models_and_calibrations, tmp_path):
    models, calibrations = models_and_calibrations
    inbox = tmp_path / "inbox"
    for seed in (200, 201, 202):
        _save(_stripes(seed), inbox / "stripes" / f"good_{seed}.png")
    _save(_with_square(_stripes(203), 32, 16, 12), inbox / "stripes" / "bad_1.png")
    _save(_with_square(_checks(204), 8, 40, 12), inbox / "checks" / "bad_2.png")
    _save(_checks(205), inbox / "checks" / "good_205.png")

    predictions = predict_folder(inbox, models, calibrations)
    by_name = {p.image: p for p in predictions}
    assert sorted(by_name) == sorted(p.relative_to(inbox).as_posix() for p in list_images(inbox))
    assert (
        by_name["stripes/bad_1.png"].category == "stripes"
        and by_name["checks/bad_2.png"].category == "checks"
    )
    for name, p in by_name.items():
        assert p.label == ("NOK" if "bad" in name else "OK"), (name, p.normalised_score)
        assert (p.score > p.threshold) == (p.label == "NOK")
        assert p.mask.shape == p.anomaly_map.shape == (SIZE, SIZE)
        assert p.mask.any() == (p.label == "NOK")
    square = np.zeros((SIZE, SIZE), bool)
    square[32:44, 16:28] = True
    bad = by_name["stripes/bad_1.png"]
    assert (bad.mask & square).sum() >= 0.5 * square.sum()
    assert bad.anomaly_map[square].mean() > bad.anomaly_map[~square].mean()
    assert (
        bad.normalised_score
        > 1.0
        > max(by_name[f"stripes/good_{s}.png"].normalised_score for s in (200, 201))
    )

    out = tmp_path / "out"
    frame = save_predictions(predictions, inbox, out, calibrations)
    written = pd.read_csv(out / "predictions.csv", keep_default_na=False)  # an empty note stays ""
    assert list(written.columns) == PREDICTION_COLUMNS
    assert set(written["category_from"]) == {"folder"} and (written["note"] == "").all()
    assert (written[["width", "height"]] == SIZE).all().all()
    assert list(written.columns[:4]) == ["image", "category", "score", "label"]
    assert len(written) == 6 and set(written["label"]) == {"OK", "NOK"}
    pd.testing.assert_frame_equal(written, frame, check_dtype=False)
    mask_png = np.asarray(Image.open(out / "masks" / "stripes" / "bad_1.png"))
    np.testing.assert_array_equal(mask_png > 0, bad.mask)
    assert Image.open(out / "overlays" / "checks" / "bad_2.png").size == (SIZE, SIZE)


def test_category_by_nearest_bank_when_folder_says_nothing(models_and_calibrations, tmp_path):
    models, calibrations = models_and_calibrations
    _save(_checks(300), tmp_path / "flat" / "a.png")
    _save(_stripes(301), tmp_path / "flat" / "b.png")
    predictions = {p.image: p for p in predict_folder(tmp_path / "flat", models, calibrations)}
    assert predictions["a.png"].category == "checks" and predictions["b.png"].category == "stripes"
    forced = predict_folder(tmp_path / "flat", models, calibrations, category="stripes")
    assert {p.category for p in forced} == {"stripes"}
    with pytest.raises(ValueError, match="predict.category"):
        predict_folder(tmp_path / "flat", models, calibrations, category="nope")


def test_an_unreadable_image_is_a_row_labelled_unreadable_not_dropped(models_and_calibrations, tmp_path):
    models, calibrations = models_and_calibrations
    inbox = tmp_path / "inbox"
    _save(_stripes(500), inbox / "stripes" / "good.png")
    (inbox / "stripes" / "broken.png").write_bytes(b"not a png")  # category from its folder
    (inbox / "lost.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # flat: no category can be told
    predictions = {p.image: p for p in predict_folder(inbox, models, calibrations)}
    assert sorted(predictions) == ["lost.png", "stripes/broken.png", "stripes/good.png"]
    broken, lost = predictions["stripes/broken.png"], predictions["lost.png"]
    assert (broken.label, broken.category, broken.category_from) == (UNREADABLE, "stripes", "folder")
    assert (lost.label, lost.category, lost.category_from) == (UNREADABLE, None, "best fit")
    assert "broken.png" in broken.note and np.isnan(broken.score) and broken.tiles == 0
    assert predictions["stripes/good.png"].label == "OK"

    out = tmp_path / "out"
    save_predictions(list(predictions.values()), inbox, out, calibrations)
    written = pd.read_csv(out / "predictions.csv").set_index("image")
    assert written.loc["stripes/broken.png", "label"] == UNREADABLE and "broken.png" in written.loc["stripes/broken.png", "note"]
    assert written.loc["stripes/good.png", "width"] == SIZE
    assert written.loc[["lost.png", "stripes/broken.png"], "width"].isna().all()
    assert sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png")) == ["stripes/good.png"]


def test_an_image_of_a_size_its_category_was_not_trained_at_is_warned_and_noted(models_and_calibrations, tmp_path, caplog):
    models, calibrations = models_and_calibrations
    inbox = tmp_path / "inbox"
    _save(_checks(600), inbox / "checks" / "same.png")
    _save(_checks(601, size=96), inbox / "wide.png")  # flat folder: category by best fit, 96x96
    trained = {"stripes": {(SIZE, SIZE)}, "checks": {(SIZE, SIZE)}}
    with caplog.at_level("WARNING", logger="fedpatchcore.core.scoring.predict"):
        predictions = {p.image: p for p in predict_folder(inbox, models, calibrations, training_sizes=trained)}
    same, wide = predictions["checks/same.png"], predictions["wide.png"]
    assert (same.width, same.height, same.category_from, same.note) == (SIZE, SIZE, "folder", "")
    assert (wide.width, wide.height, wide.category, wide.category_from) == (96, 96, "checks", "best fit")
    assert wide.note == (
        f"image is 96x96 but checks's training images are {SIZE}x{SIZE}: resized to the model's {SIZE}x{SIZE} "
        "input, its score may not compare"
    )
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("wide.png (category checks by best fit): image is 96x96")
    # Without training sizes nothing is claimed about size.
    assert all(p.note == "" for p in predict_folder(inbox, models, calibrations))


def test_training_image_sizes_come_from_training_images_only(tmp_path):
    def sample(category, split, name, size):
        path = tmp_path / f"{name}.png"
        if size is not None:
            _save(np.zeros((size[1], size[0], 3), np.uint8), path)
        return Sample(category, split, "good", name, str(path), ())

    samples = [
        sample("a", TRAIN, "a1", (30, 20)),
        sample("a", TRAIN, "a2", (30, 20)),
        sample("a", TRAIN, "a3", (40, 20)),
        sample("a", TEST, "a4", None),  # no file: opening it would raise; a test image is never read
        sample("b", TRAIN, "b1", (8, 9)),
    ]
    assert training_image_sizes(samples) == {"a": {(30, 20), (40, 20)}, "b": {(8, 9)}}


def test_tile_boxes_cover_the_image():
    boxes = tile_boxes(100, 70, (40, 40), overlap=0.25)
    covered = np.zeros((70, 100), int)
    for left, top, right, bottom in boxes:
        assert right - left == 40 and bottom - top == 40
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    assert tile_boxes(30, 30, (40, 40)) == [(0, 0, 30, 30)]
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_boxes(10, 10, (5, 5), overlap=1.0)


def test_large_image_is_tiled(models_and_calibrations, tmp_path):
    models, calibrations = models_and_calibrations
    big = _stripes(400, size=2 * SIZE)  # the same texture at the same scale, four times the area
    _save(big, tmp_path / "big" / "good.png")
    _save(_with_square(big, 90, 96, 12), tmp_path / "big" / "bad.png")
    predictions = {
        p.image: p
        for p in predict_folder(
            tmp_path / "big", models, calibrations, category="stripes", tile=(SIZE, SIZE), tile_overlap=0.5
        )
    }
    good, bad = predictions["good.png"], predictions["bad.png"]
    assert good.tiles == bad.tiles == 9  # 3 x 3 tiles of 64 px, 32 px apart
    assert good.anomaly_map.shape == bad.mask.shape == (2 * SIZE, 2 * SIZE)
    assert good.label == "OK" and bad.label == "NOK"
    square = np.zeros(bad.mask.shape, bool)
    square[90:102, 96:108] = True
    assert (bad.mask & square).sum() >= 0.5 * square.sum()  # found where it is, at full resolution
    # the deep stage's receptive field spreads a defect's influence, but not across the image
    assert bad.mask[square].mean() > 2 * bad.mask[~square].mean()
    peak = np.unravel_index(bad.anomaly_map.argmax(), bad.anomaly_map.shape)
    assert 84 <= peak[0] < 108 and 90 <= peak[1] < 114


def test_calibration_never_reads_test_images_or_labels(monkeypatch, tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "synthetic"
    generate_synthetic_dataset(
        root,
        seed=0,
        image_size=(48, 48),
        n_train=8,
        n_test_good=2,
        n_test_per_defect=1,
        categories=["metal_plate"],
    )
    samples, infos, _ = index_dataset("synthetic", root, "all")
    opened = _forbid_test_files(monkeypatch)
    split = split_validation([*samples, PoisonedTestSample()], fraction=0.5, seed=0)
    setting = Setting()
    embedders = EmbedderCache()
    bank = build_category_bank(
        split.train, infos["metal_plate"], embedders.get(setting), BankConfig(coreset_ratio=0.5), tmp_path
    )
    models = build_category_models({"metal_plate": bank}, infos, setting, embedders=embedders)
    calibrations = calibrate_from_validation(models, split.validation, max_false_alarm_rate=0.2)
    cal = calibrations["metal_plate"]
    assert cal.n_good == 4 and cal.calibration_false_alarm_rate <= 0.2
    assert {s.image_path for s in split.validation} <= set(opened)
    test_sample = next(s for s in samples if s.split == "test")
    with pytest.raises(ValueError, match="training split only"):
        calibrate_from_validation(models, [*split.validation, test_sample])
    with pytest.raises(ValueError, match="no readable validation image"):
        calibrate_from_validation(models, [])


def test_bank_of_another_setting_is_refused(models_and_calibrations):
    models, _ = models_and_calibrations
    with pytest.raises(ValueError, match="another setting"):
        build_category_models(
            {"stripes": np.zeros((4, 7), np.float32)},
            {"stripes": CategoryInfo("stripes", (SIZE, SIZE), False)},
            Setting(),
        )
    assert isinstance(models["stripes"].setting, Setting)
