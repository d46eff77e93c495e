"""k-center over a streamed feature file: select on the in-RAM projection, gather full rows."""

from __future__ import annotations

import numpy as np

from fedpatchcore.core.coreset.kcenter import greedy_kcenter
from fedpatchcore.core.features.feature_store import DEFAULT_ROWS_PER_CHUNK, PatchFeatureFile

__all__ = ["projected_rows", "select_coreset_streaming"]


def projected_rows(feature_file: PatchFeatureFile, rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK) -> np.ndarray | None:
    """The vectors k-center chooses on: the file's projection (computed chunk-wise when it has a
    ``projection_dim`` but no projection yet), or ``None`` when it keeps no projection at all."""
    if feature_file.projected is None and feature_file.projection_dim is not None:
        return feature_file.compute_projected(rows_per_chunk)
    return feature_file.projected


def select_coreset_streaming(
    feature_file: PatchFeatureFile,
    k: int,
    seed: int = 0,
    num_starts: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    keep_projection: bool = True,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy k-center indices for a :class:`PatchFeatureFile`, from its in-RAM projection.

    Without a projection (``projection_dim=None`` at write time and none saved), one is
    computed chunk-wise from the file first if ``feature_file.projection_dim`` is set;
    otherwise the full float16 vectors are loaded (only sensible for small files).
    ``seed`` chooses the starting row(s); the projection's own seed is fixed at write time.
    ``keep_projection=False`` lets the CPU loop work in place on ``feature_file.projected``
    (saving one N × projection_dim float32 copy) and then drops it (sets it to ``None``).
    ``candidates`` (increasing row indices, e.g. the rows patch denoising kept): choose among
    those rows only; the result is still rows of the file.
    """
    projected = projected_rows(feature_file, rows_per_chunk)
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=np.int64)
        vectors = projected if projected is not None else feature_file.load(mmap=True)
        chosen = greedy_kcenter(
            vectors[candidates],
            k,
            projection_dim=None,
            seed=seed,
            num_starts=num_starts,
            device=device,
            dtype=dtype,
            already_projected=projected is not None,
            copy=False,  # vectors[candidates] is a fresh copy already
        )
        return candidates[chosen]
    if projected is None:
        return greedy_kcenter(
            feature_file.load(mmap=True),
            k,
            projection_dim=None,
            seed=seed,
            num_starts=num_starts,
            device=device,
            dtype=dtype,
        )
    if not keep_projection:
        feature_file.projected = None  # the caller gives it up; the loop may overwrite it
    return greedy_kcenter(
        projected,
        k,
        projection_dim=None,
        seed=seed,
        num_starts=num_starts,
        device=device,
        dtype=dtype,
        already_projected=True,
        copy=keep_projection,
    )
