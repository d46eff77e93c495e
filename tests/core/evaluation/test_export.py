"""Exported anomaly maps read back to the same scores and the same metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import roc_auc_score

from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.evaluation.export import (
    PNG_MAX,
    SCALE_FILE,
    export_autovi_maps,
    export_mvtec_maps,
    read_autovi_maps,
    read_mvtec_maps,
    resize_map,
)

W, H = 40, 30  # original image size (width, height)


def make_samples(tmp_path, category="engine_wiring", n_good=3, n_bad=3, size=(W, H)):
    """Test samples whose image files exist (only their headers matter)."""
    samples = []
    for i in range(n_good + n_bad):
        defect = "good" if i < n_good else "fastening"
        path = tmp_path / "images" / category / "test" / defect / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(path)
        samples.append(Sample(category, "test", defect, f"{i:04d}", str(path)))
    return samples


def make_maps(samples, shape, seed=0):
    """Good images: low noise. Anomalous ones: a bright blob of a different strength each."""
    rng = np.random.default_rng(seed)
    h, w = shape
    maps = rng.uniform(0.0, 1.0, (len(samples), h, w)).astype(np.float32)
    for i, s in enumerate(samples):
        if s.label:
            maps[i, h // 4 : h // 2, w // 4 : w // 2] += 2.0 + i
    return maps


def image_scores(maps) -> np.ndarray:
    return np.array([float(np.max(m)) for m in maps])


def test_round_trip_same_size_keeps_scores_and_auroc(tmp_path):
    samples = make_samples(tmp_path)
    maps = make_maps(samples, (H, W))
    out = tmp_path / "maps"

    summary = export_autovi_maps(maps, samples, out)  # sizes read from the image headers
    back = read_autovi_maps(out, samples)

    scale = summary["categories"]["engine_wiring"]["scale"]
    assert back.shape == maps.shape and back.dtype == np.float32
    assert np.max(np.abs(back - maps)) <= scale / PNG_MAX / 2 + 1e-5
    labels = [s.label for s in samples]
    before, after = image_scores(maps), image_scores(back)
    assert roc_auc_score(labels, after) == roc_auc_score(labels, before) == 1.0
    assert np.array_equal(np.argsort(before), np.argsort(after))

    png = out / "engine_wiring" / "test" / "fastening" / "0005.png"
    with Image.open(png) as im:
        assert im.mode == "I;16" and im.size == (W, H)
    info = json.loads((out / "engine_wiring" / SCALE_FILE).read_text())
    assert info["offset"] == pytest.approx(float(maps.min()))
    assert info["scale"] == pytest.approx(float(maps.max() - maps.min()))


def test_maps_are_resized_back_to_original_size(tmp_path):
    samples = make_samples(tmp_path, n_good=4, n_bad=4)
    maps = make_maps(samples, (16, 16), seed=1)
    # overlapping scores so AUROC is not trivially 1
    maps[1] += 2.5
    out = tmp_path / "maps"

    summary = export_autovi_maps(maps, samples, out, original_sizes={s.key: (W, H) for s in samples})
    back = read_autovi_maps(out, samples)

    assert back.shape == (len(samples), H, W)
    expected = np.stack([resize_map(m, (W, H)) for m in maps])
    scale = summary["categories"]["engine_wiring"]["scale"]
    assert np.max(np.abs(back - expected)) <= scale / PNG_MAX / 2 + 1e-5
    labels = [s.label for s in samples]
    assert roc_auc_score(labels, image_scores(back)) == roc_auc_score(labels, image_scores(expected))
    assert np.array_equal(np.argsort(image_scores(back)), np.argsort(image_scores(expected)))


def test_one_scale_per_category_keeps_different_maxima(tmp_path):
    samples = make_samples(tmp_path, n_good=1, n_bad=1)
    maps = np.zeros((2, H, W), np.float32)
    maps[0, 5, 5] = 1.0
    maps[1, 5, 5] = 3.0
    out = tmp_path / "maps"
    export_autovi_maps(maps, samples, out)

    raw = [
        np.asarray(Image.open(out / s.category / s.split / s.defect_type / f"{s.image_id}.png"))
        for s in samples
    ]
    assert raw[1].max() == PNG_MAX
    assert raw[0].max() == round(PNG_MAX / 3)  # not stretched to 65535: no per-image normalisation
    back = read_autovi_maps(out, samples)
    assert back[0].max() == pytest.approx(1.0, abs=1e-4)
    assert back[1].max() == pytest.approx(3.0, abs=1e-4)


def test_categories_get_their_own_scale_and_size(tmp_path):
    a = make_samples(tmp_path, "pipe_clip", n_good=1, n_bad=1, size=(W, H))
    b = make_samples(tmp_path, "tank_screw", n_good=1, n_bad=1, size=(20, 10))
    samples = a + b
    maps = make_maps(samples, (8, 8))
    maps[2:] *= 10
    out = tmp_path / "maps"

    summary = export_autovi_maps(maps, samples, out)
    assert summary["categories"]["tank_screw"]["scale"] > 5 * summary["categories"]["pipe_clip"]["scale"]
    back = read_autovi_maps(out, samples)
    assert back.dtype == object and back[0].shape == (H, W) and back[2].shape == (10, 20)


def test_existing_export_is_never_overwritten_silently(tmp_path):
    samples = make_samples(tmp_path, n_good=1, n_bad=1)
    maps = make_maps(samples, (H, W))
    out = tmp_path / "maps"
    export_autovi_maps(maps, samples, out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_autovi_maps(maps * 2, samples, out)
    with pytest.raises(FileExistsError):
        export_mvtec_maps(maps, samples, out)
    export_autovi_maps(maps * 2, samples, out, overwrite=True)
    assert read_autovi_maps(out, samples).max() == pytest.approx(float(maps.max() * 2), rel=1e-4)


def test_mvtec_tiff_keeps_raw_float_scores(tmp_path):
    samples = make_samples(tmp_path, n_good=2, n_bad=2)
    maps = make_maps(samples, (H, W))
    out = tmp_path / "mvtec"
    export_mvtec_maps(maps, samples, out)

    tiff = out / "engine_wiring" / "test" / "fastening" / "0003.tiff"
    assert tifffile.imread(tiff).dtype == np.float32
    np.testing.assert_array_equal(read_mvtec_maps(out, samples), maps)

    small = make_maps(samples, (12, 12))
    export_mvtec_maps(small, samples, tmp_path / "mvtec2")
    assert read_mvtec_maps(tmp_path / "mvtec2", samples).shape == (4, H, W)


def test_bad_inputs_are_refused(tmp_path):
    samples = make_samples(tmp_path, n_good=1, n_bad=1)
    with pytest.raises(ValueError, match="2 samples"):
        export_autovi_maps(np.zeros((3, 4, 4), np.float32), samples, tmp_path / "m")
    bad = np.zeros((2, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        export_autovi_maps(bad, samples, tmp_path / "m")
    with pytest.raises(KeyError):
        export_autovi_maps(np.zeros((2, 4, 4), np.float32), samples, tmp_path / "m", original_sizes={})


def test_round_trip_keeps_image_auroc_and_aucspro(tmp_path):
    """The issue's round trip: export, read back, rescale; the benchmark metrics do not move."""
    from fedpatchcore.core.evaluation.metrics import DefectRegion, auc_spro, image_auroc

    samples = make_samples(tmp_path, n_good=4, n_bad=4)
    maps = make_maps(samples, (H, W), seed=2)
    maps[1] += 7.5  # a good image brighter than some defects: AUROC < 1, curves non-trivial
    regions = []
    for s in samples:
        if not s.label:
            regions.append([])
            continue
        mask = np.zeros((H, W), bool)
        mask[H // 4 : H // 2, W // 4 : W // 2] = True
        regions.append([DefectRegion(mask, saturation_area=float(mask.sum()) / 2, defect_name="fastening")])
    labels = [s.label for s in samples]

    export_autovi_maps(maps, samples, tmp_path / "maps")
    back = read_autovi_maps(tmp_path / "maps", samples)

    assert image_auroc(image_scores(back), labels) == image_auroc(image_scores(maps), labels) < 1.0
    spro_before, spro_after = auc_spro(maps, regions), auc_spro(back, regions)
    assert spro_before.keys() == spro_after.keys()
    for limit in spro_before:
        assert spro_after[limit] == pytest.approx(spro_before[limit], abs=2e-3), limit
