"""Nearest-neighbour search over a memory bank (faiss, or torch on a GPU).

:func:`build_index` / :func:`nearest_neighbours` / :func:`nearest_distances`: exact
(``IndexFlatL2``) or IVF search, returning Euclidean (not squared) distances. With CUDA
present, exact searches run on the GPU with torch (:func:`torch_nearest_neighbours`: blocked
matmul + ``topk``, exact); the index itself stays a faiss index (it is what the catalog
persists).

:class:`IndexSpec` is the scoring index a run asks for (parameters ``scoring.index``,
``scoring.ivf``, ``scoring.hnsw``): ``exact`` (``IndexFlatL2``), ``ivf`` (``IndexIVFFlat``) or
``hnsw`` (``IndexHNSWFlat``). Its :meth:`~IndexSpec.record` names what the built index depends
on (kept beside a persisted index with the bank's fingerprint); the search-time settings
(``nprobe``, ``ef_search``) are applied to any index of the same build by
:meth:`~IndexSpec.configure`, so changing them needs no rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from fedpatchcore.core.common.runtime import resolve_device

__all__ = [
    "INDEX_KINDS",
    "IndexSpec",
    "build_index",
    "exact_nearest_distances",
    "nearest_distances",
    "nearest_neighbours",
    "torch_nearest_neighbours",
]


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(
    bank: np.ndarray,
    approximate: bool = False,
    nlist: int | None = None,
    nprobe: int = 8,
    seed: int = 0,
) -> faiss.Index:
    """Faiss L2 index over a bank ``(M, d)``.

    ``approximate=False``: exact ``IndexFlatL2``. ``approximate=True``: ``IndexIVFFlat``
    with ``nlist`` k-means cells (default ``~4*sqrt(M)``, at most ``M // 39`` so every
    centroid has enough training points), k-means seeded by ``seed``, searching ``nprobe``
    cells per query.
    """
    bank = _as_f32(bank)
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ValueError(f"bank must be a non-empty (M, d) array, got shape {bank.shape}")
    m, d = bank.shape
    if not approximate:
        index = faiss.IndexFlatL2(d)
        index.add(bank)
        return index
    if nlist is None:
        nlist = max(1, min(int(round(4 * math.sqrt(m))), m // 39))
    nlist = int(min(nlist, m))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    index.cp.seed = int(seed)
    index.train(bank)
    index.add(bank)
    index.nprobe = int(min(nprobe, nlist))
    return index


#: ``scoring.index`` values: exact search, an inverted file of k-means cells, a navigable small-world graph.
INDEX_KINDS = ("exact", "ivf", "hnsw")


@contextmanager
def _faiss_threads(count: int):
    """faiss' OpenMP threads limited to ``count`` for the duration."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(count))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class IndexSpec:
    """The search index of a memory bank: ``kind`` and its settings (``scoring.index`` / ``.ivf`` / ``.hnsw``).

    ``ivf_nlist=None``: ``~4*sqrt(M)`` cells, at most ``M // 39`` (see :func:`build_index`);
    ``ivf_nprobe`` cells are searched per query (``nprobe >= nlist`` searches every cell: exact
    results). ``hnsw_m``: graph neighbours per node; ``hnsw_ef_construction`` / ``hnsw_ef_search``:
    candidate lists while building / searching (larger: nearer to exact, slower).
    """

    kind: str = "exact"
    ivf_nlist: int | None = None
    ivf_nprobe: int = 8
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown scoring.index {self.kind!r}; choose one of {list(INDEX_KINDS)}")

    @classmethod
    def from_params(cls, scoring: Mapping[str, Any], seed: int = 0) -> IndexSpec:
        """From the ``scoring`` parameter block (missing keys: the defaults above) and the run's seed."""
        ivf, hnsw = scoring.get("ivf") or {}, scoring.get("hnsw") or {}
        return cls(
            kind=str(scoring.get("index", "exact")),
            ivf_nlist=None if ivf.get("nlist") is None else int(ivf["nlist"]),
            ivf_nprobe=int(ivf.get("nprobe", cls.ivf_nprobe)),
            hnsw_m=int(hnsw.get("m", cls.hnsw_m)),
            hnsw_ef_construction=int(hnsw.get("ef_construction", cls.hnsw_ef_construction)),
            hnsw_ef_search=int(hnsw.get("ef_search", cls.hnsw_ef_search)),
            seed=int(seed),
        )

    def record(self) -> dict[str, Any]:
        """What a built index depends on besides its bank (search-time settings left out)."""
        if self.kind == "ivf":
            return {"index": "ivf", "nlist": self.ivf_nlist, "seed": self.seed}
        if self.kind == "hnsw":
            return {"index": "hnsw", "m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction}
        return {"index": "exact"}

    def build(self, bank: np.ndarray) -> faiss.Index:
        """The index over ``bank`` ``(M, d)``, search settings applied."""
        if self.kind == "exact":
            return build_index(bank)
        if self.kind == "ivf":
            return build_index(bank, approximate=True, nlist=self.ivf_nlist, nprobe=self.ivf_nprobe, seed=self.seed)
        bank = _as_f32(bank)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (M, d) array, got shape {bank.shape}")
        index = faiss.IndexHNSWFlat(bank.shape[1], self.hnsw_m, faiss.METRIC_L2)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        # Threads insert nodes concurrently and the graph then depends on their timing: one
        # thread builds the same graph every time (the build is a small share of scoring).
        with _faiss_threads(1):
            index.add(bank)
        return self.configure(index)

    def configure(self, index: faiss.Index) -> faiss.Index:
        """Apply the search-time settings (``nprobe``, ``efSearch``) to an index of this kind."""
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = int(min(self.ivf_nprobe, index.nlist))
        elif isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = self.hnsw_ef_search
        return index

    def matches(self, index: faiss.Index) -> bool:
        """Is ``index`` of this spec's kind (a loaded index whose record went missing is not trusted)?"""
        kinds = {"exact": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}
        return isinstance(index, kinds[self.kind])


#: Entries of one query-by-bank distance tile of :func:`torch_nearest_neighbours` (64 Mi floats
#: = 256 MiB on a GPU; the CPU default is a sixteenth of that).
_KNN_TILE_CUDA = 1 << 26
_KNN_TILE_CPU = 1 << 22
#: Exact faiss indexes whose bank was copied to the GPU: id(index) -> (index, bank, squared norms).
_DEVICE_BANKS: dict[int, tuple[faiss.Index, torch.Tensor, torch.Tensor]] = {}
_DEVICE_BANKS_MAX = 4


class _ExactFloat32Matmul:
    """Plain float32 matrix products for the duration (no TF32 on Ampere+ GPUs): exact search."""

    def __enter__(self):
        self._tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self._tf32


def _device_bank(bank, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bank_t = bank if isinstance(bank, torch.Tensor) else torch.from_numpy(_as_f32(bank))
    bank_t = bank_t.to(device=device, dtype=torch.float32).contiguous()
    return bank_t, (bank_t * bank_t).sum(dim=1)


def torch_nearest_neighbours(
    bank: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    k: int = 1,
    device: str | torch.device = "cpu",
    block: int | None = None,
    *,
    bank_sq: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest bank rows of every query, with torch on ``device``.

    The squared distances are ``||q||² - 2 q·b + ||b||²`` in float32 (what faiss'
    ``IndexFlatL2`` computes for batched queries), tiled so that one query-block x bank-block
    tile has at most ``block`` entries, with ``topk`` per tile and an exact merge across bank
    blocks. Returns Euclidean distances ``(P, k)`` float32 and bank row ids ``(P, k)`` int64,
    nearest first (the same contract as :func:`nearest_neighbours`).
    """
    device = torch.device(device)
    if bank_sq is None:
        bank_t, bank_sq = _device_bank(bank, device)
    else:
        bank_t = bank
    m, d = bank_t.shape
    if m == 0:
        raise ValueError("the bank is empty")
    k = int(k)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] for a bank of {m} rows, got {k}")
    q_all = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(_as_f32(queries).reshape(-1, d))
    n = q_all.shape[0]
    tile = int(block or (_KNN_TILE_CUDA if device.type == "cuda" else _KNN_TILE_CPU))
    bank_rows = max(k, min(m, tile))  # bank rows per tile (all of it when it fits)
    query_rows = max(1, tile // bank_rows)
    dist = torch.empty((n, k), dtype=torch.float32, device=device)
    ids = torch.empty((n, k), dtype=torch.int64, device=device)
    with torch.inference_mode(), _ExactFloat32Matmul():
        for qs in range(0, n, query_rows):
            q = q_all[qs : qs + query_rows].to(device=device, dtype=torch.float32, non_blocking=True)
            q_sq = (q * q).sum(dim=1, keepdim=True)
            best_d = best_i = None
            for bs in range(0, m, bank_rows):
                part = bank_t[bs : bs + bank_rows]
                scores = torch.addmm(bank_sq[bs : bs + bank_rows].unsqueeze(0), q, part.T, alpha=-2.0)
                scores += q_sq
                kk = min(k, part.shape[0])
                vals, idx = torch.topk(scores, kk, dim=1, largest=False, sorted=True)
                idx += bs
                if best_d is None:
                    best_d, best_i = vals, idx
                else:  # exact merge of two sorted candidate lists
                    both_d = torch.cat([best_d, vals], dim=1)
                    both_i = torch.cat([best_i, idx], dim=1)
                    best_d, order = torch.topk(both_d, k, dim=1, largest=False, sorted=True)
                    best_i = torch.gather(both_i, 1, order)
            dist[qs : qs + len(q)] = best_d.clamp_min_(0.0).sqrt_()
            ids[qs : qs + len(q)] = best_i
    return dist.cpu().numpy(), ids.cpu().numpy()


def _search_device(index: faiss.Index, device: str | None) -> torch.device | None:
    """The torch device an exact search of ``index`` should run on, or None for faiss."""
    name = resolve_device(device or "auto")
    if not name.startswith("cuda"):
        return None
    if not (isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_L2):
        return None  # IVF and other approximate indexes stay on faiss
    return torch.device(name)


def _cached_device_bank(index: faiss.Index, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = id(index)
    hit = _DEVICE_BANKS.get(key)
    if hit is not None and hit[0] is index and hit[1].shape[0] == index.ntotal and hit[1].device == device:
        return hit[1], hit[2]
    bank_t, bank_sq = _device_bank(index.reconstruct_n(0, index.ntotal), device)
    if len(_DEVICE_BANKS) >= _DEVICE_BANKS_MAX:
        _DEVICE_BANKS.pop(next(iter(_DEVICE_BANKS)))
    _DEVICE_BANKS[key] = (index, bank_t, bank_sq)
    return bank_t, bank_sq


def nearest_neighbours(
    index: faiss.Index,
    patches: np.ndarray,
    k: int = 1,
    batch_size: int = 65536,
    device: str | None = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances ``(P, k)`` float32 and bank row ids ``(P, k)`` int64, in batches.

    ``device``: ``"auto"`` searches an exact (``IndexFlatL2``) index on the GPU with
    :func:`torch_nearest_neighbours` when CUDA is available (same distances within float32
    rounding; the bank is copied to the GPU once per index), and with faiss otherwise;
    ``"cpu"`` always uses faiss. ``patches`` of another dtype (float16 test features) are
    converted to float32 one batch at a time.
    """
    patches = np.asarray(patches).reshape(-1, index.d)
    target = _search_device(index, device)
    if target is not None:
        bank_t, bank_sq = _cached_device_bank(index, target)
        return torch_nearest_neighbours(bank_t, _as_f32(patches), k=k, device=target, bank_sq=bank_sq)
    n = patches.shape[0]
    dist = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, max(1, int(batch_size))):
        stop = min(n, start + int(batch_size))
        d2, i = index.search(_as_f32(patches[start:stop]), k)
        dist[start:stop] = d2
        ids[start:stop] = i
    np.maximum(dist, 0.0, out=dist)  # faiss' squared L2 can be slightly negative
    np.sqrt(dist, out=dist)
    return dist, ids


def nearest_distances(
    index: faiss.Index, patches: np.ndarray, k: int = 1, batch_size: int = 65536
) -> np.ndarray:
    """Euclidean distance of each patch ``(P, d)`` to its ``k`` nearest bank vectors: ``(P, k)``."""
    return nearest_neighbours(index, patches, k=k, batch_size=batch_size)[0]


def exact_nearest_distances(index: faiss.Index, bank: np.ndarray, queries: np.ndarray, candidates: int = 8) -> np.ndarray:
    """Distance ``(P,)`` float64 of each query to its nearest bank row, whatever batch it comes in.

    faiss computes ``||q||² - 2 q·b + ||b||²`` in float32, through BLAS for batches of 20
    queries or more and a direct loop below that, so the distance of one query changes in its
    last digits (about 1e-4 relative at the patch norms of a CNN) with the batch it was searched
    in. Here faiss only proposes the ``candidates`` nearest rows and the distance is recomputed
    as ``||q - b||`` in float64: the same number for a query searched alone or in any batch.
    """
    bank = np.asarray(bank)
    queries = _as_f32(queries).reshape(-1, index.d)
    k = int(min(candidates, index.ntotal))
    _, ids = nearest_neighbours(index, queries, k=k, device="cpu")
    differences = bank[ids].astype(np.float64) - queries[:, None, :].astype(np.float64)
    return np.sqrt((differences * differences).sum(axis=-1)).min(axis=1)
