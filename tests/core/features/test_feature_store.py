"""Tests for the streaming float16 feature store (tiny files under tmp_path)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.coreset.streaming import select_coreset_streaming
from fedpatchcore.core.features.feature_store import PatchFeatureFile, PatchFeatureWriter, projected_path
from fedpatchcore.core.features.projection import random_projection_matrix

DIM = 48
PROJ = 16


def make_data(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(10, DIM))
    return np.maximum(centres[rng.integers(0, 10, n)] + rng.normal(size=(n, DIM)), 0).astype(np.float32)


def write(path, data, batch_sizes=(1, 7, 250, 100), projection_dim=PROJ, seed=0) -> PatchFeatureFile:
    writer = PatchFeatureWriter(path, DIM, projection_dim=projection_dim, seed=seed)
    start, i = 0, 0
    while start < len(data):
        size = batch_sizes[i % len(batch_sizes)]
        writer.append(data[start : start + size])
        start += size
        i += 1
    return writer.close()


def test_round_trip_is_plain_npy_in_fp16(tmp_path):
    data = make_data()
    ff = write(tmp_path / "bank.npy", data)
    assert (ff.n_rows, ff.dim) == data.shape and len(ff) == len(data)
    loaded = np.load(tmp_path / "bank.npy")
    assert loaded.dtype == np.float16 and loaded.shape == data.shape
    np.testing.assert_array_equal(loaded, data.astype(np.float16))
    np.testing.assert_allclose(loaded.astype(np.float32), data, rtol=1e-3, atol=1e-3)
    mm = ff.load(mmap=True)
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(np.asarray(mm), loaded)
    np.testing.assert_array_equal(ff.load(mmap=False), loaded)


@pytest.mark.parametrize("grow_rows", [65536, 64])
def test_projection_kept_in_ram(tmp_path, monkeypatch, grow_rows):
    monkeypatch.setattr("fedpatchcore.core.features.feature_store._GROW_ROWS", grow_rows)  # 64: buffer grows often
    data = make_data()
    ff = write(tmp_path / "bank.npy", data, seed=4)
    assert ff.projected.shape == (len(data), PROJ) and ff.projected.dtype == np.float32
    np.testing.assert_allclose(
        ff.projected, data @ random_projection_matrix(DIM, PROJ, 4), rtol=1e-5, atol=1e-4
    )


def test_iter_chunks_and_gather(tmp_path):
    data = make_data(n=333)
    ff = write(tmp_path / "bank.npy", data)
    chunks = list(ff.iter_chunks(100))
    assert [len(c) for c in chunks] == [100, 100, 100, 33]
    assert all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), data.astype(np.float16).astype(np.float32))
    idx = np.array([5, 300, 6, 7, 5, 0, 332])
    got = ff.gather(idx)
    assert got.dtype == np.float32 and got.shape == (len(idx), DIM)
    np.testing.assert_array_equal(got, data.astype(np.float16)[idx].astype(np.float32))
    assert ff.gather([]).shape == (0, DIM)
    with pytest.raises(IndexError):
        ff.gather([333])


def test_streaming_selection_equals_in_memory(tmp_path):
    data = make_data()
    ff = write(tmp_path / "bank.npy", data, seed=2)
    streamed = select_coreset_streaming(ff, 40, seed=2)
    np.testing.assert_array_equal(
        streamed, greedy_kcenter(ff.projected, 40, seed=2, projection_dim=None, already_projected=True)
    )
    # same seed for projection and starts: the whole in-memory path gives the same choice
    np.testing.assert_array_equal(streamed, greedy_kcenter(data, 40, projection_dim=PROJ, seed=2))
    # in place on the projection: same choice, projection handed over
    np.testing.assert_array_equal(streamed, select_coreset_streaming(ff, 40, seed=2, keep_projection=False))
    assert ff.projected is None
    coreset = ff.gather(streamed)
    np.testing.assert_allclose(coreset, data[streamed], rtol=1e-3, atol=1e-3)


def test_projection_recomputed_when_missing(tmp_path):
    data = make_data()
    write(tmp_path / "bank.npy", data, seed=1)
    reopened = PatchFeatureFile.open(tmp_path / "bank.npy", projection_dim=PROJ, seed=1)
    assert reopened.projected is None
    idx = select_coreset_streaming(reopened, 30, seed=1, rows_per_chunk=64)
    assert reopened.projected is not None and len(np.unique(idx)) == 30
    expected = data.astype(np.float16).astype(np.float32) @ random_projection_matrix(DIM, PROJ, 1)
    np.testing.assert_allclose(reopened.projected, expected, rtol=1e-5, atol=1e-4)


def test_save_projected_and_reopen(tmp_path):
    ff = write(tmp_path / "bank.npy", make_data(), seed=3)
    target = ff.save_projected()
    assert target == projected_path(tmp_path / "bank.npy") and target.exists()
    reopened = PatchFeatureFile.open(tmp_path / "bank.npy")
    assert reopened.seed == 3 and reopened.projection_dim == PROJ
    np.testing.assert_array_equal(reopened.projected, ff.projected)


def test_without_projection_and_context_manager(tmp_path):
    data = make_data(n=200)
    with PatchFeatureWriter(tmp_path / "raw.npy", DIM, projection_dim=None) as writer:
        writer.append(data)
    ff = writer.result
    assert ff.projected is None and ff.projection_dim is None
    idx = select_coreset_streaming(ff, 20, seed=0)
    np.testing.assert_array_equal(
        idx, greedy_kcenter(data.astype(np.float16).astype(np.float32), 20, projection_dim=None)
    )


def test_writer_errors_and_abort(tmp_path):
    writer = PatchFeatureWriter(tmp_path / "x.npy", DIM)
    with pytest.raises(ValueError, match="shape"):
        writer.append(np.zeros((3, DIM + 1), np.float32))
    writer.append(np.zeros((0, DIM), np.float32))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.append(np.zeros((1, DIM), np.float32))
    assert np.load(tmp_path / "x.npy").shape == (0, DIM)
    with pytest.raises(RuntimeError), PatchFeatureWriter(tmp_path / "y.npy", DIM) as failing:
        failing.append(np.ones((2, DIM), np.float32))
        raise RuntimeError("extraction failed")
    assert not (tmp_path / "y.npy").exists()
