"""Export step: persisted raw maps -> official-format files in a new versioned folder; conf envs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from kedro.io import DatasetError
from kedro.io.core import Version
from PIL import Image

from fedpatchcore import structure
from fedpatchcore.config_loader import ProjectConfigLoader
from fedpatchcore.core.data.types import Sample, samples_to_frame
from fedpatchcore.core.evaluation.export import (
    PNG_MAX,
    SCALE_FILE,
    encode_uint16,
    read_autovi_maps,
    resize_map,
)
from fedpatchcore.core.federation.partition import AUTOVI_DEFAULT_CLIENTS
from fedpatchcore.datasets.exported_maps import SUMMARY_FILE, ExportedMapsDataset, MapsExport
from fedpatchcore.pipelines.export.nodes import export_anomaly_maps
from fedpatchcore.pipelines.export.pipeline import export_maps

CONF = Path(__file__).resolve().parents[2] / "conf"

# category -> original (width, height); maps come at the model's 16x16
ORIGINAL_SIZES = {"engine_wiring": (40, 30), "tank_screw": (24, 24)}
MODEL_SHAPE = (16, 16)


def make_dataset(tmp_path):
    """Train + test samples whose image files exist (the exporter reads their headers)."""
    samples = []
    for category, size in ORIGINAL_SIZES.items():
        for split, defect, n in [("train", "good", 2), ("test", "good", 2), ("test", "missing", 3)]:
            for i in range(n):
                path = tmp_path / "raw" / category / split / defect / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", size).save(path)
                samples.append(Sample(category, split, defect, f"{i:04d}", str(path)))
    return samples, samples_to_frame(samples)


def make_anomaly_maps(samples, seed=0):
    """What ``<variant>.anomaly_maps`` loads: category -> {keys, (n, H, W) raw maps}.

    The categories live on very different score ranges, so one global or per-image scale
    would show up in the exported values.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for k, category in enumerate(ORIGINAL_SIZES):
        test = [s for s in samples if s.category == category and s.split == "test"]
        maps = rng.uniform(0.0, 1.0, (len(test), *MODEL_SHAPE)).astype(np.float32) * (10.0**k)
        for i, s in enumerate(test):
            if s.label:
                maps[i, 4:8, 4:8] += (2.0 + i) * (10.0**k)
        result[category] = {"keys": [s.key for s in test], "maps": maps}
    return result


def saved(tmp_path, data, save_version):
    dataset = ExportedMapsDataset(
        filepath=str(tmp_path / "out" / "exported_maps"), version=Version(None, save_version)
    )
    dataset.save(data)
    return tmp_path / "out" / "exported_maps" / save_version / "exported_maps"


def test_autovi_export_writes_16bit_pngs_with_one_scale_per_category(tmp_path):
    samples, index = make_dataset(tmp_path)
    anomaly_maps = make_anomaly_maps(samples)
    export = export_anomaly_maps(anomaly_maps, index, {"enabled": True, "format": "autovi"})
    assert isinstance(export, MapsExport) and set(export.categories) == set(ORIGINAL_SIZES)
    maps_dir = saved(tmp_path, export, "2026-01-01T00.00.00.000Z")

    by_key = {s.key: s for s in samples}
    for category, entry in anomaly_maps.items():
        test = [by_key[key] for key in entry["keys"]]
        files = sorted((maps_dir / category / "test").glob("*/*.png"))
        assert [f.relative_to(maps_dir).as_posix() for f in files] == sorted(
            f"{s.category}/test/{s.defect_type}/{s.image_id}.png" for s in test
        )
        info = json.loads((maps_dir / category / SCALE_FILE).read_text())
        raw = np.asarray(entry["maps"])
        # One scale per category: offset/scale come from ALL of the category's raw maps.
        assert info["offset"] == pytest.approx(float(raw.min()))
        assert info["scale"] == pytest.approx(float(raw.max() - raw.min()))
        peaks = []
        for s, raw_map in zip(test, raw, strict=True):
            with Image.open(maps_dir / category / "test" / s.defect_type / f"{s.image_id}.png") as im:
                assert im.size == ORIGINAL_SIZES[category]  # original image size, not the model's
                arr = np.asarray(im)
            assert arr.dtype == np.uint16
            resized = resize_map(raw_map, ORIGINAL_SIZES[category])
            np.testing.assert_array_equal(arr, encode_uint16(resized, info["offset"], info["scale"]))
            peaks.append(int(arr.max()))
        # Not per-image normalised: good images peak far below the anomalous ones, and the
        # ranking of image scores (max of the map) is the raw one.
        raw_peaks = [float(resize_map(m, ORIGINAL_SIZES[category]).max()) for m in raw]
        assert np.argsort(peaks, kind="stable").tolist() == np.argsort(raw_peaks, kind="stable").tolist()
        assert min(peaks) < 0.5 * PNG_MAX < max(peaks)
        # Decoded maps are the raw scores (resized to the original size) up to quantisation.
        back = read_autovi_maps(maps_dir, test)
        for i in range(len(test)):
            expected = resize_map(raw[i], ORIGINAL_SIZES[category])
            np.testing.assert_allclose(back[i], expected, atol=info["scale"] / PNG_MAX)

    summary = json.loads((maps_dir / SUMMARY_FILE).read_text())
    assert summary["format"] == "autovi"
    assert summary["n_maps"] == sum(len(e["keys"]) for e in anomaly_maps.values())
    assert set(summary["categories"]) == set(ORIGINAL_SIZES)


def test_versioned_saves_never_overwrite(tmp_path):
    samples, index = make_dataset(tmp_path)
    first = export_anomaly_maps(make_anomaly_maps(samples, seed=0), index, {"format": "autovi"})
    second = export_anomaly_maps(make_anomaly_maps(samples, seed=1), index, {"format": "autovi"})
    v1, v2 = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"

    dir1 = saved(tmp_path, first, v1)
    before = {p: p.read_bytes() for p in dir1.rglob("*") if p.is_file()}
    dir2 = saved(tmp_path, second, v2)

    assert dir1 != dir2 and dir2.is_dir()
    assert {p: p.read_bytes() for p in dir1.rglob("*") if p.is_file()} == before
    # Re-using a version is refused by Kedro's versioning, the earlier result stays.
    with pytest.raises(DatasetError):
        saved(tmp_path, second, v1)
    assert {p: p.read_bytes() for p in dir1.rglob("*") if p.is_file()} == before

    latest = ExportedMapsDataset(
        filepath=str(tmp_path / "out" / "exported_maps"), version=Version(None, None)
    )
    assert latest.exists()
    loaded = latest.load()
    assert Path(loaded["maps_dir"]) == dir2
    assert loaded["format"] == "autovi"


def test_mvtec_export_writes_raw_float_tiffs(tmp_path):
    samples, index = make_dataset(tmp_path)
    anomaly_maps = make_anomaly_maps(samples)
    maps_dir = saved(
        tmp_path, export_anomaly_maps(anomaly_maps, index, {"format": "mvtec"}), "2026-01-01T00.00.00.000Z"
    )
    entry = anomaly_maps["tank_screw"]
    first_key = entry["keys"][0]
    category, split, defect, image_id = first_key.split("/")
    arr = tifffile.imread(maps_dir / category / split / defect / f"{image_id}.tiff")
    assert arr.dtype == np.float32
    np.testing.assert_allclose(arr, resize_map(entry["maps"][0], ORIGINAL_SIZES["tank_screw"]), rtol=1e-6)


def test_node_rejects_unknown_format_and_foreign_keys(tmp_path):
    samples, index = make_dataset(tmp_path)
    anomaly_maps = make_anomaly_maps(samples)
    with pytest.raises(ValueError, match="export.format"):
        export_anomaly_maps(anomaly_maps, index, {"format": "jpeg"})
    anomaly_maps["engine_wiring"]["keys"][0] = "engine_wiring/test/good/9999"
    with pytest.raises(KeyError, match="dataset_index"):
        export_anomaly_maps(anomaly_maps, index, {"format": "autovi"})
    with pytest.raises(DatasetError, match="MapsExport"):
        ExportedMapsDataset(filepath=str(tmp_path / "x")).save({"not": "a MapsExport"})


def test_export_pipeline_is_one_namespaced_node_per_variant():
    pipe = export_maps(["centralized", "federated"])
    assert sorted(n.name for n in pipe.nodes) == ["centralized.export_maps", "federated.export_maps"]
    assert pipe.inputs() == {
        "centralized.anomaly_maps",
        "federated.anomaly_maps",
        "dataset_index",
        "params:variants.centralized.export",
        "params:variants.federated.export",
    }
    assert pipe.outputs() == {"centralized.exported_maps", "federated.exported_maps"}


@pytest.mark.parametrize("enabled", [False, True])
def test_registry_adds_export_only_when_enabled(enabled):
    from fedpatchcore.pipeline_registry import create_pipelines

    params = ProjectConfigLoader(str(CONF), base_env="base", default_run_env="local")["parameters"]
    params = {**params, "export": {**params["export"], "enabled": enabled}}
    pipes = create_pipelines(params)
    variants = [v.name for v in structure.federated_variants(params)]
    expected = {f"{v}.export_maps" for v in variants} | (
        {"centralized.export_maps"} if structure.comparison_enabled(params) else set()
    )
    assert {n.name for n in pipes["export"].nodes} == expected
    federated_exports = {n.name for n in pipes["federated"].nodes if n.name.endswith("export_maps")}
    centralized_exports = {n.name for n in pipes["centralized"].nodes if n.name.endswith("export_maps")}
    assert federated_exports == (expected if enabled else set())
    assert centralized_exports == ({"centralized.export_maps"} if enabled else set())


def env_parameters(env: str) -> dict:
    return ProjectConfigLoader(str(CONF), base_env="base", default_run_env="local", env=env)["parameters"]


def test_autovi_environment_loads_with_five_clients():
    params = env_parameters("autovi")
    variants = structure.federated_variants(params)
    assert variants[0].name == "federated"
    assert variants[0].client_ids == list(AUTOVI_DEFAULT_CLIENTS)
    assert len(variants[0].client_ids) == 5
    assert params["dataset"]["format"] == "autovi"
    assert params["dataset"]["root"] == "data/01_raw/autovi"
    assert params["dataset"]["image_sizes"]["tank_screw"] == [1000, 750]
    assert params["dataset"]["image_sizes"]["pipe_clip"] == [400, 400]
    assert params["backbone"]["name"] == "wide_resnet50_2"
    assert params["coreset"]["ratio"] == 0.01
    assert params["export"] == {"enabled": True, "format": "autovi", "inspector": None, "onnx_opset": 17}


def test_autovi_image_sizes_match_the_reader_defaults():
    from fedpatchcore.core.data.autovi import AUTOVI_IMAGE_SIZES

    sizes = env_parameters("autovi")["dataset"]["image_sizes"]
    assert {k: tuple(v) for k, v in sizes.items()} == AUTOVI_IMAGE_SIZES


def test_mvtec_environment_loads():
    params = env_parameters("mvtec")
    assert params["dataset"]["format"] == "mvtec"
    assert params["export"]["format"] == "mvtec"
    assert params["federation"]["partition"] == "iid"
    assert structure.federated_variants(params)[0].client_ids == ["1", "2", "3", "4", "5"]
