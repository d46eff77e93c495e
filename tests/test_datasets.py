"""The project's custom Kedro datasets: round trips, versioning, atomic saves, ``exists()``."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version

from fedpatchcore.core.banks import bank_fingerprint
from fedpatchcore.core.banks.knn import IndexSpec, build_index, nearest_neighbours
from fedpatchcore.core.features.extraction import SCRATCH_MARKER, ExtractedFeatures
from fedpatchcore.core.features.feature_store import PatchFeatureWriter
from fedpatchcore.datasets import (
    AnomalyMapsDataset,
    FaissIndexDataset,
    FaissIndexes,
    NpzDataset,
    PatchFeaturesDataset,
)


def _bank(seed: int = 0, rows: int = 20, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "bank/metal": rng.normal(size=(rows, dim)).astype(np.float32),
        "n_images/metal": np.asarray(3),
        "origin/metal": np.asarray(["a", "bb"] * (rows // 2)),
    }


def _maps(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {
        "metal": {"keys": ["metal/test/good/0", "metal/test/dent/0"], "maps": rng.random((2, 6, 5))},
        "fabric": {"keys": ["fabric/test/good/0"], "maps": 10 * rng.random((1, 4, 4))},
    }


def _versioned(cls, path):
    return cls(filepath=str(path), version=Version(None, None))


def _versions(path) -> list[str]:
    """Version folders that hold a saved artifact (``<path>/<version>/<name>``)."""
    return sorted(v.name for v in path.iterdir() if (v / path.name).exists()) if path.is_dir() else []


def _save_twice(dataset, first, second) -> None:
    dataset.save(first)
    time.sleep(0.002)  # versions are millisecond timestamps
    dataset.save(second)


# --- NpzDataset ---------------------------------------------------------------------------------


def test_npz_round_trip_and_exists(tmp_path):
    dataset = NpzDataset(filepath=str(tmp_path / "models" / "bank.npz"))
    assert not dataset.exists()
    data = _bank()
    dataset.save(data)
    assert dataset.exists()
    loaded = dataset.load()
    assert set(loaded) == set(data)
    for key, value in data.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype
    # A plain .npz any tool can open, no pickles.
    with np.load(tmp_path / "models" / "bank.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(data)


def test_npz_versioned_save_twice_loads_latest(tmp_path):
    path = tmp_path / "bank.npz"
    dataset = _versioned(NpzDataset, path)
    assert not dataset.exists()
    _save_twice(dataset, _bank(0), _bank(1))
    assert len(_versions(path)) == 2
    np.testing.assert_array_equal(dataset.load()["bank/metal"], _bank(1)["bank/metal"])
    # A fresh instance (a later run) also finds the newest version, and can pin the older one.
    np.testing.assert_array_equal(_versioned(NpzDataset, path).load()["bank/metal"], _bank(1)["bank/metal"])
    oldest = NpzDataset(filepath=str(path), version=Version(_versions(path)[0], None))
    np.testing.assert_array_equal(oldest.load()["bank/metal"], _bank(0)["bank/metal"])


def test_npz_rejects_non_dict_and_leaves_nothing(tmp_path):
    path = tmp_path / "bank.npz"
    dataset = NpzDataset(filepath=str(path))
    with pytest.raises(DatasetError, match="dict of arrays"):
        dataset.save([np.zeros(3)])
    assert not dataset.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_load_before_save_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="nothing saved|not found|No such file|Did not find"):
        NpzDataset(filepath=str(tmp_path / "missing.npz")).load()
    with pytest.raises(DatasetError):
        _versioned(NpzDataset, tmp_path / "missing_versioned.npz").load()


# --- AnomalyMapsDataset -------------------------------------------------------------------------


def test_anomaly_maps_round_trip_keeps_raw_values(tmp_path):
    path = tmp_path / "anomaly_maps"
    dataset = AnomalyMapsDataset(filepath=str(path))
    assert not dataset.exists()
    data = _maps()
    dataset.save(data)
    assert dataset.exists()
    loaded = dataset.load()
    assert set(loaded) == {"metal", "fabric"}
    for category, entry in data.items():
        assert loaded[category]["keys"] == entry["keys"]
        assert loaded[category]["maps"].dtype == np.float32
        # Exactly the values given (as float32): no per-image or per-category normalisation.
        np.testing.assert_array_equal(loaded[category]["maps"], entry["maps"].astype(np.float32))
    assert loaded["fabric"]["maps"].max() > 1.0
    assert json.loads((path / "metal.keys.json").read_text()) == data["metal"]["keys"]


def test_anomaly_maps_keep_the_skipped_test_images_and_bank_fingerprint(tmp_path):
    # Case 6 of issue 9: unreadable test images were skipped at scoring but not recorded in any
    # saved file. They now travel with the maps of their category (and into the metrics).
    data = _maps()
    data["metal"]["skipped"] = [{"path": "metal/test/dent/7.png", "reason": "image file is truncated"}]
    data["metal"]["bank_fingerprint"] = "abc123"
    path = tmp_path / "anomaly_maps"
    AnomalyMapsDataset(filepath=str(path)).save(data)
    loaded = AnomalyMapsDataset(filepath=str(path)).load()
    assert loaded["metal"]["skipped"] == data["metal"]["skipped"]
    assert loaded["metal"]["bank_fingerprint"] == "abc123"
    assert set(loaded["fabric"]) == {"keys", "maps"}  # nothing extra given, nothing extra saved
    assert not (path / "fabric.meta.json").exists()


def test_anomaly_maps_versioned_save_twice_loads_latest(tmp_path):
    path = tmp_path / "anomaly_maps"
    dataset = _versioned(AnomalyMapsDataset, path)
    assert not dataset.exists()
    _save_twice(dataset, _maps(0), _maps(1))
    assert dataset.exists()
    assert len(_versions(path)) == 2
    np.testing.assert_array_equal(
        dataset.load()["metal"]["maps"], _maps(1)["metal"]["maps"].astype(np.float32)
    )


def test_anomaly_maps_failed_save_leaves_no_partial_artifact(tmp_path):
    path = tmp_path / "anomaly_maps"
    dataset = _versioned(AnomalyMapsDataset, path)
    bad = _maps()
    bad["fabric"]["keys"] = ["only/one", "but/two"]  # written after metal: the save fails midway
    with pytest.raises(DatasetError, match="1 maps but 2 keys"):
        dataset.save(bad)
    assert not dataset.exists()
    assert _versions(path) == []
    assert not list(path.rglob("*.npy")) and not list(path.rglob("*.json"))
    assert not path.exists() or not any(path.iterdir())  # not even an empty version folder

    # With an earlier good version, a failed save leaves that version as the one loaded.
    good = _versioned(AnomalyMapsDataset, path)
    good.save(_maps(2))
    time.sleep(0.002)
    with pytest.raises(DatasetError):
        _versioned(AnomalyMapsDataset, path).save(bad)
    assert len(_versions(path)) == 1
    reloaded = _versioned(AnomalyMapsDataset, path).load()
    assert reloaded["metal"]["keys"] == _maps(2)["metal"]["keys"]
    np.testing.assert_array_equal(reloaded["fabric"]["maps"], _maps(2)["fabric"]["maps"].astype(np.float32))


def test_unversioned_failed_overwrite_keeps_the_previous_artifact(tmp_path):
    path = tmp_path / "anomaly_maps"
    dataset = AnomalyMapsDataset(filepath=str(path))
    dataset.save(_maps(0))
    bad = _maps(1)
    bad["metal"]["keys"] = ["just/one"]
    with pytest.raises(DatasetError):
        dataset.save(bad)
    loaded = dataset.load()
    assert set(loaded) == {"metal", "fabric"}
    np.testing.assert_array_equal(loaded["metal"]["maps"], _maps(0)["metal"]["maps"].astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["anomaly_maps"]  # no staging folder left


# --- FaissIndexDataset --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_faiss_index_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    banks = {"metal": rng.normal(size=(300, 8)).astype(np.float32), "fabric": rng.normal(size=(100, 8))}
    spec = IndexSpec(kind, ivf_nlist=2, ivf_nprobe=1, hnsw_m=4, hnsw_ef_search=3)
    indexes = {name: spec.build(bank) for name, bank in banks.items()}
    dataset = FaissIndexDataset(filepath=str(tmp_path / "faiss_index"))
    assert not dataset.exists()
    dataset.save(indexes)
    assert dataset.exists()
    loaded = dataset.load()
    assert set(loaded) == {"metal", "fabric"}
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    for name, bank in banks.items():
        assert loaded[name].ntotal == len(bank) and type(loaded[name]) is type(indexes[name])
        expected = nearest_neighbours(indexes[name], queries, k=2)
        got = nearest_neighbours(loaded[name], queries, k=2)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
        np.testing.assert_array_equal(got[1], expected[1])


def test_faiss_index_records_the_bank_it_was_built_from(tmp_path):
    bank = _bank()
    indexes = FaissIndexes(
        {"metal": build_index(bank["bank/metal"], seed=0)},
        bank_fingerprint=bank_fingerprint(bank),
        build={"index": "exact"},
    )
    path = tmp_path / "faiss_index"
    FaissIndexDataset(filepath=str(path)).save(indexes)
    loaded = FaissIndexDataset(filepath=str(path)).load()
    assert isinstance(loaded, FaissIndexes) and set(loaded) == {"metal"}
    assert loaded.bank_fingerprint == bank_fingerprint(bank)
    assert loaded.build == {"index": "exact"}
    assert json.loads((path / "index_info.json").read_text())["categories"] == ["metal"]

    # A plain dict (or an index saved before fingerprints existed) loads with fingerprint None.
    FaissIndexDataset(filepath=str(path)).save({"metal": build_index(bank["bank/metal"], seed=0)})
    (path / "index_info.json").unlink()
    assert FaissIndexDataset(filepath=str(path)).load().bank_fingerprint is None


def test_bank_fingerprint_covers_the_indexed_rows_only():
    bank = _bank()
    fingerprint = bank_fingerprint(bank)
    assert len(fingerprint) == 64 and fingerprint == bank_fingerprint(dict(reversed(bank.items())))
    # n_images and origin do not change an index; the rows (as float32) do.
    assert (
        bank_fingerprint(
            {**bank, "n_images/metal": np.asarray(9), "origin/metal": bank["origin/metal"][::-1]}
        )
        == fingerprint
    )
    assert bank_fingerprint({**bank, "bank/metal": bank["bank/metal"].astype(np.float64)}) == fingerprint
    changed = bank["bank/metal"].copy()
    changed[3, 2] += 1e-3
    assert bank_fingerprint({**bank, "bank/metal": changed}) != fingerprint
    assert bank_fingerprint({**bank, "bank/metal": bank["bank/metal"][:-1]}) != fingerprint
    renamed = {"bank/fabric": bank["bank/metal"]}
    assert bank_fingerprint(renamed) != fingerprint


def test_faiss_index_versioned_save_twice_loads_latest(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "faiss_index"
    dataset = _versioned(FaissIndexDataset, path)
    _save_twice(
        dataset,
        {"metal": build_index(rng.normal(size=(4, 8)).astype(np.float32), seed=0)},
        {"metal": build_index(rng.normal(size=(7, 8)).astype(np.float32), seed=0)},
    )
    assert len(_versions(path)) == 2
    assert dataset.load()["metal"].ntotal == 7


# --- PatchFeaturesDataset -----------------------------------------------------------------------


def _extracted(scratch, seed: int = 0, rows: int = 12) -> tuple[ExtractedFeatures, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    files, written = {}, {}
    for category in ("metal", "fabric"):
        vectors = rng.normal(size=(rows, 6)).astype(np.float32)
        writer = PatchFeatureWriter(scratch / f"{category}.npy", dim=6, projection_dim=3, seed=seed)
        writer.append(vectors[: rows // 2])
        writer.append(vectors[rows // 2 :])
        files[category] = writer.close()
        written[category] = vectors
    skipped = [{"path": "metal/train/good/bad.png", "reason": "truncated"}]
    # 12 rows = 2 images of a 2x3 grid (metal) or 3 images of a 2x2 grid (fabric).
    keys = {"metal": ["metal/a", "metal/b"], "fabric": ["fabric/a", "fabric/b", "fabric/c"]}
    grid = {"metal": (2, rows // 4), "fabric": (2, rows // 6)}
    return ExtractedFeatures(files, keys, grid, skipped), written


def test_patch_features_round_trip_moves_the_scratch_files(tmp_path):
    scratch = tmp_path / "scratch" / "client_a_xyz"
    features, written = _extracted(scratch)
    projected = {c: f.projected.copy() for c, f in features.files.items()}
    dataset = PatchFeaturesDataset(filepath=str(tmp_path / "features"))
    assert not dataset.exists()
    dataset.save(features)
    assert dataset.exists()
    assert not scratch.exists()  # moved, not copied; the emptied scratch folder is removed

    loaded = dataset.load()
    assert loaded.n_images == {"metal": 2, "fabric": 3}
    assert loaded.image_keys == features.image_keys and loaded.grid == features.grid
    assert loaded.skipped == features.skipped
    assert set(loaded.files) == {"metal", "fabric"}
    for category, vectors in written.items():
        feature_file = loaded.files[category]
        assert feature_file.shape == (12, 6)
        np.testing.assert_allclose(feature_file.gather(np.arange(12)), vectors, atol=1e-2)  # stored fp16
        # The projection chosen at extraction comes back as it was: no recomputation.
        np.testing.assert_array_equal(feature_file.projected, projected[category])


def test_patch_features_save_removes_the_extraction_scratch_folder(tmp_path):
    scratch = tmp_path / "scratch" / "client_qc_abc"
    features, _ = _extracted(scratch)
    (scratch / SCRATCH_MARKER).touch()  # as extract_patch_features leaves it
    PatchFeaturesDataset(filepath=str(tmp_path / "features")).save(features)
    assert not scratch.exists()


def test_patch_features_versioned_save_twice_loads_latest(tmp_path):
    path = tmp_path / "features"
    dataset = _versioned(PatchFeaturesDataset, path)
    first, _ = _extracted(tmp_path / "s1", seed=0, rows=4)
    second, written = _extracted(tmp_path / "s2", seed=1, rows=8)
    _save_twice(dataset, first, second)
    assert len(_versions(path)) == 2
    loaded = dataset.load()
    assert loaded.files["metal"].n_rows == 8
    np.testing.assert_allclose(loaded.files["metal"].gather([0, 7]), written["metal"][[0, 7]], atol=1e-2)


def test_patch_features_rejects_other_types(tmp_path):
    dataset = PatchFeaturesDataset(filepath=str(tmp_path / "features"))
    with pytest.raises(DatasetError, match="ExtractedFeatures"):
        dataset.save({"metal": np.zeros((2, 2))})
    assert not dataset.exists()
    assert list(tmp_path.iterdir()) == []
