"""Approximate greedy k-center coreset selection (the PatchCore memory-bank subsampling).

The exact greedy k-center builds an N×N distance matrix and runs out of memory on real
patch banks. This module implements the approximate variant that PatchCore uses:

1. project every row with a seeded Gaussian Johnson-Lindenstrauss matrix to a few
   dozen / hundred dimensions (``projection_dim``), centre and rescale the result;
2. run the farthest-point (Gonzalez) greedy loop, keeping for every row its squared
   distance to the nearest chosen centre. Each step computes only the distance to the
   *newest* centre, as one matrix-vector product on contiguous memory with precomputed
   row norms (``||x||² - 2 x·c + ||c||²``). Memory is O(N·projection_dim) for the
   projected copy plus a few O(N) vectors; there is no N×N matrix and no N×d temporary
   per step, and no Python work per candidate row.
3. for float32 on the CPU with many centres (``k >= skipping.AUTO_MIN_K``) the same loop
   skips the rows a new centre provably cannot change (:mod:`fedpatchcore.core.coreset.skipping`):
   identical indices, a fraction of the work once the centres' groups are small.

Both loops compute the dot products with a kernel whose value for a row does not depend on
the other rows in the call (:class:`~fedpatchcore.core.coreset.skipping.RowDots`); BLAS ``sgemv``,
which the loop used before, gives a row a different last bit depending on its position and on
the BLAS thread count, so the two loops could not have agreed exactly.

Everything here is plain numpy / torch and takes explicit seeds; nothing imports Kedro.
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from fedpatchcore.core.coreset import skipping
from fedpatchcore.core.features.projection import DEFAULT_PROJECTION_DIM, random_projection_matrix

__all__ = [
    "DEFAULT_PROJECTION_DIM",
    "coreset_size",
    "covering_radius",
    "greedy_kcenter",
    "project",
    "random_projection_matrix",
]


#: Rows per block when projecting / computing norms, so temporaries stay bounded.
_ROW_BLOCK = 65536

_CPU_DTYPES = {"float32": np.float32, "float64": np.float64}
_TORCH_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
_METHODS = ("auto", "plain", "skip")


# --------------------------------------------------------------------------------------
# sizes and projections
# --------------------------------------------------------------------------------------
def coreset_size(n_rows: int, ratio: float, max_size: int | None = None, min_size: int = 1) -> int:
    """Number of rows to keep from a bank of ``n_rows`` rows.

    ``ceil(n_rows * ratio)``, then clipped to ``[min_size, max_size]`` and never more
    than ``n_rows``. ``ratio`` is the ``coreset.ratio`` parameter and must lie in (0, 1].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)):
        raise TypeError(f"coreset.ratio must be a number in (0, 1], got {ratio!r}")
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"coreset.ratio must be in (0, 1], got {ratio!r}")
    n_rows = int(n_rows)
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    if min_size < 0:
        raise ValueError(f"coreset.min_size must be >= 0, got {min_size}")
    if max_size is not None and max_size < min_size:
        raise ValueError(f"coreset.max_size ({max_size}) must be >= coreset.min_size ({min_size})")
    # The small epsilon keeps e.g. 200000 * 0.01 (= 2000.0000000000002) at 2000.
    size = math.ceil(n_rows * ratio - 1e-9)
    size = max(size, min_size)
    if max_size is not None:
        size = min(size, max_size)
    return min(size, n_rows)


def project(vectors: np.ndarray, projection_dim: int, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """``vectors @ random_projection_matrix(d, projection_dim, seed)`` in row blocks (float32)."""
    vectors = _as_numpy_2d(vectors)
    n_rows, dim = vectors.shape
    matrix = random_projection_matrix(dim, projection_dim, seed)
    if out is None:
        out = np.empty((n_rows, projection_dim), dtype=np.float32)
    for start in range(0, n_rows, _ROW_BLOCK):
        block = np.asarray(vectors[start : start + _ROW_BLOCK], dtype=np.float32)
        np.matmul(block, matrix, out=out[start : start + len(block)])
    return out


# --------------------------------------------------------------------------------------
# greedy k-center
# --------------------------------------------------------------------------------------
def greedy_kcenter(
    vectors: Any,
    k: int,
    *,
    projection_dim: int | None = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    num_starts: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    already_projected: bool = False,
    copy: bool = True,
    method: str = "auto",
) -> np.ndarray:
    """Indices (int64, shape ``(min(k, N),)``, selection order, unique) of a greedy k-center coreset.

    Args:
        vectors: ``(N, d)`` numpy array (any float dtype, memmaps included) or torch tensor.
        k: coreset size; ``k >= N`` returns ``arange(N)``.
        projection_dim: dimension of the seeded random projection used for the distances;
            ``None`` (or ``>= d``) works on the original vectors.
        seed: seeds both the projection matrix and the random starting point(s).
        num_starts: number of random rows the greedy loop starts from. They are the first
            ``num_starts`` returned indices (real centres, so the 2-approximation of
            farthest-point selection still holds); the paper's implementation starts
            from several random points to avoid depending on one unlucky start.
        device: ``"cpu"`` (numpy/BLAS) or a torch device such as ``"cuda"``/``"cuda:1"``.
        dtype: arithmetic dtype of the loop: ``"float32"`` / ``"float64"`` everywhere,
            ``"float16"`` / ``"bfloat16"`` on CUDA only (norms are kept in float32).
        already_projected: ``vectors`` are already projected (e.g. by a
            :class:`~fedpatchcore.core.features.feature_store.PatchFeatureWriter`); skip projection.
        copy: ``False`` lets a CPU run that needs no projection work *in place* on a
            C-contiguous, writeable numpy input of the loop dtype: saves one N×p copy,
            but the input is centred and rescaled (its contents change).
        method: CPU loop: ``"plain"`` (every row, every step), ``"skip"`` (only the rows the new
            centre can change; float32 only) or ``"auto"`` (skip for float32 with
            ``k >= skipping.AUTO_MIN_K`` and ``N >= skipping.AUTO_MIN_ROWS``, else plain).
            Both give identical indices; only the time differs. Ignored on torch devices.

    The result depends only on the data, ``k``, ``projection_dim``, ``seed``,
    ``num_starts``, ``device`` and ``dtype`` (not on ``method`` nor on thread counts):
    identical inputs give identical indices.
    """
    k = int(k)
    if k < 0:
        raise ValueError(f"coreset size k must be >= 0, got {k}")
    if num_starts < 1:
        raise ValueError(f"coreset.num_starts must be >= 1, got {num_starts}")
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"coreset.projection_dim must be >= 1 or None, got {projection_dim}")
    if method not in _METHODS:
        raise ValueError(f"coreset method must be one of {list(_METHODS)}, got {method!r}")
    if not hasattr(vectors, "shape"):
        vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, d), got shape {tuple(vectors.shape)}")
    n_rows = int(vectors.shape[0])
    if k >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    if k == 0:
        return np.empty(0, dtype=np.int64)

    starts = _starting_rows(n_rows, min(num_starts, k), seed)
    use_projection = (
        (not already_projected) and projection_dim is not None and projection_dim < vectors.shape[1]
    )

    if _is_cpu(device):
        if dtype not in _CPU_DTYPES:
            raise ValueError(
                f"coreset dtype {dtype!r} is not supported on CPU (use one of {sorted(_CPU_DTYPES)}); "
                "float16/bfloat16 are CUDA-only"
            )
        work = _prepare_cpu(
            vectors, projection_dim if use_projection else None, seed, _CPU_DTYPES[dtype], copy=copy
        )
        return _greedy_numpy(work, k, starts, method=method)

    device_obj = _check_torch_device(device)
    if dtype not in _TORCH_DTYPE_NAMES:
        raise ValueError(f"coreset dtype {dtype!r} must be one of {list(_TORCH_DTYPE_NAMES)}")
    work = _prepare_torch(vectors, projection_dim if use_projection else None, seed, device_obj, dtype)
    return _greedy_torch(work, k, starts)


def _starting_rows(n_rows: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x53544152]))  # "STAR"
    return rng.choice(n_rows, size=count, replace=False).astype(np.int64)


def _is_cpu(device: Any) -> bool:
    return str(device) == "cpu"


def _torch():
    """torch, imported only when needed: the numpy CPU path does not pay torch's ~0.5 GB import RSS."""
    try:
        return importlib.import_module("torch")
    except ImportError as error:  # pragma: no cover - torch is a project dependency
        raise RuntimeError("this coreset device / input needs torch, which is not installed") from error


def _check_torch_device(device: str):
    torch = _torch()
    device_obj = torch.device(device)
    if device_obj.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"coreset.device={device!r} was requested but CUDA is not available "
            "(torch.cuda.is_available() is False); set coreset.device to 'cpu'"
        )
    if device_obj.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"coreset.device={device!r} was requested but MPS is not available; use 'cpu'")
    return device_obj


def _as_numpy_2d(vectors: Any) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported already
    if torch is not None and isinstance(vectors, torch.Tensor):
        vectors = vectors.detach()
        if vectors.dtype == torch.bfloat16:
            vectors = vectors.float()
        return vectors.cpu().numpy()
    vectors = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, d), got shape {vectors.shape}")
    return vectors


def _prepare_cpu(
    vectors: Any, projection_dim: int | None, seed: int, np_dtype, copy: bool = True
) -> np.ndarray:
    """A C-contiguous copy (projected or not; the input itself when ``copy=False`` allows),
    centred and scaled to unit max norm.

    Centring and scaling do not change which row is farthest, but they keep the
    ``||x||² - 2x·c + ||c||²`` expansion away from cancellation when the data sit far
    from the origin (post-ReLU features are all positive).
    """
    vectors = _as_numpy_2d(vectors)
    n_rows, dim = vectors.shape
    if projection_dim is not None:
        work = project(vectors, projection_dim, seed)
        if np_dtype != np.float32:
            work = work.astype(np_dtype)
    elif (
        not copy
        and type(vectors) is np.ndarray
        and vectors.dtype == np_dtype
        and vectors.flags.c_contiguous
        and vectors.flags.writeable
    ):
        work = vectors
    else:
        work = np.empty((n_rows, dim), dtype=np_dtype)
        for start in range(0, n_rows, _ROW_BLOCK):
            work[start : start + _ROW_BLOCK] = vectors[start : start + _ROW_BLOCK]
    mean = np.zeros(work.shape[1], dtype=np.float64)
    for start in range(0, n_rows, _ROW_BLOCK):
        mean += work[start : start + _ROW_BLOCK].sum(axis=0, dtype=np.float64)
    mean /= max(n_rows, 1)
    mean = mean.astype(work.dtype)
    max_sq = 0.0
    for start in range(0, n_rows, _ROW_BLOCK):
        block = work[start : start + _ROW_BLOCK]
        block -= mean
        max_sq = max(max_sq, float(np.einsum("ij,ij->i", block, block).max(initial=0.0)))
    if max_sq > 0.0:
        scale = work.dtype.type(1.0 / math.sqrt(max_sq))
        for start in range(0, n_rows, _ROW_BLOCK):
            work[start : start + _ROW_BLOCK] *= scale
    return work


def _greedy_numpy(work: np.ndarray, k: int, starts: np.ndarray, method: str = "auto") -> np.ndarray:
    """Farthest-point loop on a C-contiguous (N, p) array. Tracks *half* squared distances.

    ``method``: ``"plain"`` computes every row's distance at every step; ``"skip"`` (float32
    only) examines only rows the new centre can change, with identical indices; ``"auto"``
    picks by :func:`~fedpatchcore.core.coreset.skipping.choose_method`.
    """
    n_rows = work.shape[0]
    half_norms = np.empty(n_rows, dtype=work.dtype)
    for start in range(0, n_rows, _ROW_BLOCK):
        block = work[start : start + _ROW_BLOCK]
        half_norms[start : start + len(block)] = 0.5 * np.einsum("ij,ij->i", block, block)
    if method == "auto":
        method = skipping.choose_method(n_rows, k, work.dtype)
    finite = bool(np.isfinite(half_norms).all())
    if method == "skip" and (work.dtype != np.float32 or not finite):
        # The skipping proof needs finite float32 rows; non-finite rows make every choice moot.
        method = "plain"
    if work.dtype != np.float32:
        return _plain_loop(work, half_norms, k, starts, np.dot)
    with skipping.RowDots(work.shape[1]) as dots:
        if method == "skip":
            # Its BLAS calls are small (centre distances, projections of a few rows): with more
            # than one BLAS thread they spend more time waking threads than computing. The big
            # row dots run on RowDots' own threads.
            with threadpool_limits(limits=1, user_api="blas"):
                return skipping.greedy_skipping(work, half_norms, k, starts, dots)
        return _plain_loop(work, half_norms, k, starts, dots)


def _plain_loop(work: np.ndarray, half_norms: np.ndarray, k: int, starts: np.ndarray, dots) -> np.ndarray:
    """Every row's distance to the newest centre at every step (N·p work per step)."""
    n_rows = work.shape[0]
    min_dist = np.full(n_rows, np.inf, dtype=work.dtype)
    buffer = np.empty(n_rows, dtype=work.dtype)
    chosen = np.empty(k, dtype=np.int64)
    minus_inf = work.dtype.type(-np.inf)

    def absorb(index: int) -> None:
        # buffer = ||x - c||² / 2 for every row, no N×p temporary.
        skipping.half_sq_distances(work, half_norms, work[index], half_norms[index], dots, buffer)
        np.minimum(min_dist, buffer, out=min_dist)
        min_dist[index] = minus_inf  # chosen rows can never be picked again

    for i, index in enumerate(starts):
        chosen[i] = index
        absorb(int(index))
    for i in range(len(starts), k):
        index = int(np.argmax(min_dist))
        chosen[i] = index
        if i + 1 < k:
            absorb(index)
    return chosen


def _prepare_torch(vectors: Any, projection_dim: int | None, seed: int, device, dtype_name: str):
    torch = _torch()
    torch_dtype = getattr(torch, dtype_name)
    source = vectors.detach() if isinstance(vectors, torch.Tensor) else _as_numpy_2d(vectors)
    n_rows, dim = source.shape
    out_dim = projection_dim if projection_dim is not None else dim
    compute = torch.float64 if torch_dtype == torch.float64 else torch.float32
    work = torch.empty((n_rows, out_dim), dtype=compute, device=device)
    matrix = None
    if projection_dim is not None:
        matrix = torch.from_numpy(random_projection_matrix(dim, projection_dim, seed)).to(device, compute)
    for start in range(0, n_rows, _ROW_BLOCK):
        block = source[start : start + _ROW_BLOCK]
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        block = block.to(device=device, dtype=compute)
        work[start : start + len(block)] = block @ matrix if matrix is not None else block
    work -= work.mean(dim=0, dtype=torch.float64).to(compute)
    max_norm = torch.linalg.vector_norm(work, dim=1).max()
    if float(max_norm) > 0:
        work /= max_norm
    return work.to(torch_dtype).contiguous()


def _greedy_torch(work, k: int, starts: np.ndarray) -> np.ndarray:
    """Same loop as :func:`_greedy_numpy` in torch; stays asynchronous on the device."""
    torch = _torch()
    device = work.device
    norm_dtype = torch.float64 if work.dtype == torch.float64 else torch.float32
    half_norms = torch.empty(work.shape[0], dtype=norm_dtype, device=device)
    for start in range(0, work.shape[0], _ROW_BLOCK):
        block = work[start : start + _ROW_BLOCK].to(norm_dtype)
        half_norms[start : start + len(block)] = 0.5 * (block * block).sum(dim=1)
    min_dist = torch.full_like(half_norms, float("inf"))
    chosen = torch.empty(k, dtype=torch.long, device=device)
    starts_t = torch.from_numpy(starts).to(device)

    def absorb(index) -> None:  # index: 1-element long tensor on device
        centre = work.index_select(0, index).squeeze(0)
        distance = half_norms - torch.mv(work, centre).to(norm_dtype) + half_norms.index_select(0, index)
        torch.minimum(min_dist, distance, out=min_dist)
        min_dist.index_fill_(0, index, float("-inf"))

    for i in range(len(starts)):
        chosen[i] = starts_t[i]
        absorb(starts_t[i : i + 1])
    for i in range(len(starts), k):
        index = torch.argmax(min_dist).view(1)
        chosen[i : i + 1] = index
        if i + 1 < k:
            absorb(index)
    return chosen.cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------
def covering_radius(vectors: Any, chosen_indices: Any, batch: int = 8192) -> float:
    """Largest Euclidean distance, in the original space, from any row to its nearest chosen row.

    Works in row blocks (``batch`` rows, fewer if ``batch × k`` would exceed ~16M
    entries) so memory stays bounded; the nearest centre is found with the norm
    expansion and its distance recomputed exactly from the difference vector.
    """
    vectors = _as_numpy_2d(vectors)
    chosen = np.asarray(chosen_indices, dtype=np.int64).ravel()
    if len(chosen) == 0:
        raise ValueError("covering_radius needs at least one chosen index")
    centres = np.asarray(vectors[np.sort(chosen)], dtype=np.float32)
    centre_sq = np.einsum("ij,ij->i", centres, centres)
    rows = max(1, min(int(batch), (1 << 24) // len(centres)))
    worst = 0.0
    for start in range(0, vectors.shape[0], rows):
        block = np.asarray(vectors[start : start + rows], dtype=np.float32)
        scores = block @ centres.T  # (rows, k)
        scores *= -2.0
        scores += centre_sq
        nearest = np.argmin(scores, axis=1)
        diff = block - centres[nearest]
        worst = max(worst, float(np.sqrt(np.einsum("ij,ij->i", diff, diff).max())))
    return worst
