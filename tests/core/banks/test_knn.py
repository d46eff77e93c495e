"""Exact nearest-neighbour search with torch (the GPU scoring path) against faiss."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from fedpatchcore.core.banks import knn
from fedpatchcore.core.banks.knn import (
    IndexSpec,
    build_index,
    exact_nearest_distances,
    nearest_distances,
    nearest_neighbours,
    torch_nearest_neighbours,
)
from fedpatchcore.core.scoring.patch_scores import score_images


def _data(seed: int = 0, m: int = 700, n: int = 259, d: int = 24):
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(m, d)).astype(np.float32)
    queries = rng.normal(size=(n, d)).astype(np.float32) * 1.3
    return bank, queries


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("block", [None, 5, 333, 10_000])
def test_torch_search_equals_faiss_exact(k, block):
    bank, queries = _data()
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    d2, ids = index.search(queries, k)
    dist, got = torch_nearest_neighbours(bank, queries, k=k, device="cpu", block=block)
    assert dist.shape == ids.shape == (len(queries), k)
    assert dist.dtype == np.float32 and got.dtype == np.int64
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_allclose(dist, np.sqrt(np.maximum(d2, 0)), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)  # nearest first


def test_torch_search_takes_tensors_and_checks_k():
    bank, queries = _data(1, m=50, n=7)
    dist, ids = torch_nearest_neighbours(torch.from_numpy(bank), torch.from_numpy(queries), k=50)
    assert sorted(ids[0].tolist()) == list(range(50))
    brute = np.sort(np.linalg.norm(queries[:, None] - bank[None], axis=-1), axis=1)
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        torch_nearest_neighbours(bank, queries, k=51)


def test_cpu_only_machine_keeps_faiss_path(monkeypatch):
    bank, queries = _data(2)
    index = build_index(bank)
    calls = []
    monkeypatch.setattr(knn, "torch_nearest_neighbours", lambda *a, **kw: calls.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nearest_distances(index, queries, k=2)
    assert not calls


def test_auto_device_routes_exact_index_through_torch(monkeypatch):
    """With a (pretend) GPU, exact indexes are searched with torch; IVF stays on faiss."""
    bank, queries = _data(3, m=2000, d=8)
    exact = build_index(bank)
    expected = nearest_neighbours(exact, queries, k=3, device="cpu")
    used = []

    def fake_device(index, device):
        if isinstance(index, faiss.IndexFlat):
            used.append(type(index).__name__)
            return torch.device("cpu")  # stands in for cuda: the same torch code runs
        return None

    monkeypatch.setattr(knn, "_search_device", fake_device)
    got = nearest_neighbours(exact, queries, k=3)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    # the scores of score_images agree with the faiss path within float32 rounding
    feats = queries[: 2 * 3 * 4].reshape(2, 3, 4, 8)
    maps, scores = score_images(exact, feats, (16, 12), sigma=1.0)
    monkeypatch.setattr(knn, "_search_device", lambda index, device: None)
    maps_cpu, scores_cpu = score_images(exact, feats, (16, 12), sigma=1.0)
    np.testing.assert_allclose(maps, maps_cpu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, scores_cpu, rtol=1e-5, atol=1e-5)
    ivf = build_index(bank, approximate=True, nprobe=4, seed=0)
    nearest_neighbours(ivf, queries, k=1)
    assert used == ["IndexFlatL2"] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_search_equals_faiss():  # pragma: no cover - GPU machines only
    bank, queries = _data(4, m=5000, n=3000, d=64)
    index = build_index(bank)
    cpu = nearest_neighbours(index, queries, k=3, device="cpu")
    gpu = nearest_neighbours(index, queries, k=3, device="cuda")
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-5, atol=1e-5)


def test_exact_nearest_distance_does_not_depend_on_the_batch():
    rng = np.random.default_rng(3)
    bank = (rng.standard_normal((500, 96)) * 30 + 40).astype(np.float32)  # large norms: cancellation
    queries = (rng.standard_normal((64, 96)) * 30 + 40).astype(np.float32)
    index = build_index(bank)
    batched = exact_nearest_distances(index, bank, queries)
    alone = np.array([exact_nearest_distances(index, bank, q[None])[0] for q in queries])
    assert np.array_equal(batched, alone)
    brute = np.sqrt(((queries[:, None].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)).min(1)
    assert batched == pytest.approx(brute, rel=1e-12)


# --- the scoring index: exact | ivf | hnsw ------------------------------------------------------


def _clustered(seed: int = 0, m: int = 3000, n: int = 400, d: int = 32):
    """Bank rows around 40 centres (what k-means cells and graphs are for) and queries among them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d)).astype(np.float32) * 4.0
    bank = centres[rng.integers(0, 40, m)] + rng.normal(size=(m, d)).astype(np.float32)
    queries = centres[rng.integers(0, 40, n)] + rng.normal(size=(n, d)).astype(np.float32) * 1.2
    return bank, queries


@pytest.mark.parametrize("nlist", [7, 30])
def test_ivf_probing_every_list_returns_the_exact_neighbours(nlist):
    bank, queries = _clustered()
    exact_dist, exact_ids = nearest_neighbours(IndexSpec("exact").build(bank), queries, k=3, device="cpu")
    few = IndexSpec("ivf", ivf_nlist=nlist, ivf_nprobe=1).build(bank)
    assert few.nlist == nlist and few.nprobe == 1
    _, few_ids = nearest_neighbours(few, queries, k=3, device="cpu")
    assert not np.array_equal(few_ids, exact_ids)  # one cell of several misses some neighbours
    every = IndexSpec("ivf", ivf_nlist=nlist, ivf_nprobe=nlist).configure(few)
    assert every.nprobe == nlist
    dist, ids = nearest_neighbours(every, queries, k=3, device="cpu")
    np.testing.assert_array_equal(ids, exact_ids)
    # IVF computes ||q - b||² directly, the flat index by the norm expansion: float32 rounding apart.
    np.testing.assert_allclose(dist, exact_dist, rtol=1e-5, atol=1e-5)
    # nprobe above nlist is clipped to nlist (the same search)
    assert IndexSpec("ivf", ivf_nprobe=10 * nlist).configure(every).nprobe == nlist


def test_hnsw_is_reproducible_and_near_exact_with_a_wide_search():
    bank, queries = _clustered(1)
    _, exact_ids = nearest_neighbours(IndexSpec("exact").build(bank), queries, k=1, device="cpu")
    narrow = IndexSpec("hnsw", hnsw_m=8, hnsw_ef_construction=16, hnsw_ef_search=1)
    wide = IndexSpec("hnsw", hnsw_m=8, hnsw_ef_construction=16, hnsw_ef_search=256)
    index = narrow.build(bank)
    _, narrow_ids = nearest_neighbours(index, queries, k=1)
    _, wide_ids = nearest_neighbours(wide.configure(index), queries, k=1)
    narrow_recall = float((narrow_ids == exact_ids).mean())
    wide_recall = float((wide_ids == exact_ids).mean())
    assert narrow_recall < 0.9 and wide_recall >= 0.995, (narrow_recall, wide_recall)
    # built on one thread: the same graph, hence the same answers, every time
    _, again = nearest_neighbours(wide.build(bank), queries, k=1)
    np.testing.assert_array_equal(again, wide_ids)


def test_index_spec_from_the_scoring_block():
    spec = IndexSpec.from_params({"index": "hnsw", "hnsw": {"m": 16, "ef_search": 128}}, seed=3)
    assert (spec.kind, spec.hnsw_m, spec.hnsw_ef_construction, spec.hnsw_ef_search) == ("hnsw", 16, 40, 128)
    # the record names what the built index depends on, not the search-time settings
    assert spec.record() == {"index": "hnsw", "m": 16, "ef_construction": 40}
    assert IndexSpec.from_params({"index": "ivf", "ivf": {"nlist": None, "nprobe": 2}}, 5).record() == {
        "index": "ivf",
        "nlist": None,
        "seed": 5,
    }
    assert IndexSpec.from_params({}, 9).record() == {"index": "exact"}  # the seed changes nothing exact
    with pytest.raises(ValueError, match="unknown scoring.index 'annoy'"):
        IndexSpec("annoy")
    assert IndexSpec("hnsw").matches(IndexSpec("hnsw").build(np.eye(4, dtype=np.float32)))
    assert not IndexSpec("hnsw").matches(build_index(np.eye(4, dtype=np.float32)))
