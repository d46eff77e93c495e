"""The inspector of the embedded default: ONNX Runtime scores equal torch's (issue 26, part 3).

The embedded default (5 categories, 128x128) with the default backbone and
scoring; each category's bank is every 8th training patch vector (the bank's content does not
matter for parity, only that both runtimes search the same one). The inspector is written by the
export node through its catalog dataset and read back as a station would: from the folder only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from fedpatchcore.core.banks import CategoryBanks  # noqa: E402
from fedpatchcore.core.data.types import TEST, TRAIN, category_info_from_dict, frame_to_samples  # noqa: E402
from fedpatchcore.core.features.batches import iter_image_batches  # noqa: E402
from fedpatchcore.core.features.setting import EmbedderCache, Setting  # noqa: E402
from fedpatchcore.core.scoring.inspector import FILES, load_inspector  # noqa: E402
from fedpatchcore.core.scoring.predict import build_category_models  # noqa: E402
from fedpatchcore.core.scoring.thresholds import calibrate, calibrations_to_dict  # noqa: E402
from fedpatchcore.datasets.inspector import InspectorDataset  # noqa: E402
from fedpatchcore.pipelines.export.nodes import export_inspector  # noqa: E402
from tests.pipelines.conftest import project_parameters  # noqa: E402

BATCH = 16
BANK_STRIDE = 8  # every 8th training patch vector


def _images(samples, size):
    return [batch.images for batch in iter_image_batches(samples, size, BATCH, [], num_workers=0)]


@pytest.fixture(scope="module")
def default_inspector(default_dataset, tmp_path_factory):
    params = project_parameters()
    index = default_dataset["dataset_index"]
    info = default_dataset["category_info"]
    samples = frame_to_samples(index)
    setting = Setting.from_params(params["backbone"], params["extraction"], params["scoring"])
    embedder = EmbedderCache("cpu").get(setting)
    banks, n_images = {}, {}
    for category in sorted(info):
        train = [s for s in samples if s.category == category and s.split == TRAIN]
        size = category_info_from_dict(info[category]).image_size
        features = np.concatenate([embedder.embed(images) for images in _images(train, size)])
        banks[category] = features.reshape(-1, features.shape[-1])[::BANK_STRIDE]
        n_images[category] = len(train)
    memory_bank = CategoryBanks(banks, n_images).to_arrays()
    # One category calibrated (on training scores: enough to see the numbers travel), the rest not.
    calibration = calibrate([1.0, 2.0, 3.0, 4.0], 0.25, "quantile", category="circuit_board")
    thresholds = calibrations_to_dict({"circuit_board": calibration})
    export = export_inspector(
        memory_bank, info, params["backbone"], params["extraction"], params["scoring"], params["privacy"],
        params["seed"], params["export"], thresholds,
    )
    dataset = InspectorDataset(filepath=str(tmp_path_factory.mktemp("inspector") / "inspector"))
    dataset.save(export)
    return export, dataset.load(), samples, calibration


@pytest.mark.slow
def test_the_inspector_folder_holds_what_a_station_needs_and_nothing_else(default_inspector):
    export, manifests, _, calibration = default_inspector
    assert sorted(manifests) == ["assembly", "circuit_board", "metal_plate", "parts_tray", "woven_fabric"]
    for category, manifest in manifests.items():
        folder = manifest["folder"]
        assert sorted(p.name for p in Path(folder).iterdir()) == sorted(FILES.values())
        assert manifest["input_size"] == [128, 128] and manifest["opset"] == 17
        assert manifest["mean"] == [0.485, 0.456, 0.406] and manifest["std"] == [0.229, 0.224, 0.225]
        assert manifest["output"]["shape"] == ["batch", 16, 16, 152]
        assert manifest["project_version"] == "0.1.0" and manifest["category"] == category
        assert manifest["bank"]["rows"] == len(export.models[category].bank)
        bank = np.load(Path(folder) / "bank.npy")
        np.testing.assert_array_equal(bank, export.models[category].bank)
        saved = json.loads((Path(folder) / "thresholds.json").read_text())
        assert saved["scoring"]["sigma"] == 4.0 and saved["scoring"]["image_score"] == "max"
        assert saved["calibration"] == (calibration.to_dict() if category == "circuit_board" else None)


@pytest.mark.slow
def test_onnx_inspector_scores_equal_torch_scores_on_the_embedded_default(default_inspector):
    export, manifests, samples, calibration = default_inspector
    n_images = 0
    for category, manifest in sorted(manifests.items()):
        station, station_calibration, _ = load_inspector(manifest["folder"])
        torch_model = export.models[category]
        test = [s for s in samples if s.category == category and s.split == TEST]
        for images in _images(test, torch_model.image_size):
            torch_maps, torch_scores = torch_model.score(images)
            onnx_maps, onnx_scores = station.score(images)
            np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)
            np.testing.assert_allclose(onnx_maps, torch_maps, rtol=1e-3, atol=1e-3 * float(torch_maps.max()))
            n_images += len(images)
        assert station_calibration == (calibration if category == "circuit_board" else None)
    assert n_images == 164  # every test image of the embedded default


@pytest.mark.slow
def test_a_changed_bank_is_refused_by_its_fingerprint(default_inspector, tmp_path):
    import shutil

    _, manifests, _, _ = default_inspector
    folder = tmp_path / "metal_plate"
    shutil.copytree(manifests["metal_plate"]["folder"], folder)
    bank = np.load(folder / "bank.npy")
    np.save(folder / "bank.npy", bank[:-1])
    with pytest.raises(ValueError, match="does not match the fingerprint"):
        load_inspector(folder)


@pytest.mark.slow
def test_predict_runtime_onnx_builds_onnx_models_that_score_like_torch(default_inspector, default_dataset):
    export, _, samples, _ = default_inspector
    model = export.models["woven_fabric"]
    info = {"woven_fabric": category_info_from_dict(default_dataset["category_info"]["woven_fabric"])}
    onnx_models = build_category_models({"woven_fabric": model.bank}, info, model.setting, runtime="onnx")
    assert type(onnx_models["woven_fabric"].embedder).__name__ == "OnnxEmbedder"
    test = [s for s in samples if s.category == "woven_fabric" and s.split == TEST][:BATCH]
    images = _images(test, model.image_size)[0]
    np.testing.assert_allclose(onnx_models["woven_fabric"].score(images)[1], model.score(images)[1], rtol=1e-4)
    with pytest.raises(ValueError, match="Unknown predict.runtime 'tensorrt'"):
        build_category_models({"woven_fabric": model.bank}, info, model.setting, runtime="tensorrt")


@pytest.mark.slow
def test_denoising_weights_travel_with_the_inspector(default_inspector, tmp_path):
    # scoring.soft_weights: a station must multiply distances by the same row weights as predict.
    from dataclasses import replace

    from fedpatchcore.core.scoring.inspector import ROW_WEIGHTS_FILE, write_inspector

    export, _, samples, _ = default_inspector
    plain = export.models["metal_plate"]
    weights = np.random.default_rng(0).uniform(1.0, 3.0, len(plain.bank)).astype(np.float32)
    weighted = replace(plain, row_weights=weights)
    manifest = write_inspector(tmp_path / "metal_plate", weighted, None, project_version="test")
    assert manifest["files"]["row_weights"] == ROW_WEIGHTS_FILE
    station, _, _ = load_inspector(tmp_path / "metal_plate")
    np.testing.assert_array_equal(station.row_weights, weights)
    test = [s for s in samples if s.category == "metal_plate" and s.split == TEST][:BATCH]
    images = _images(test, plain.image_size)[0]
    _, weighted_scores = weighted.score(images)
    _, station_scores = station.score(images)
    np.testing.assert_allclose(station_scores, weighted_scores, rtol=1e-4)
    assert not np.allclose(weighted_scores, plain.score(images)[1], rtol=1e-3)  # the weights matter
