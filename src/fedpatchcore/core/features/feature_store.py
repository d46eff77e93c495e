"""Streaming storage for patch features, so peak memory does not grow with N × d.

A client's patch bank (e.g. AutoVI at 400×400 with WRN50: ~4 GB per category in
float32) never has to sit in RAM:

* :class:`PatchFeatureWriter` takes feature batches as the backbone produces them,
  appends the full vectors to a plain ``.npy`` file as float16 (ordinary file writes,
  header rewritten with the final shape at close) and keeps only the seeded random
  projection of each batch (float32, ``projection_dim`` columns) in RAM;
* :class:`PatchFeatureFile` is the closed, path-backed result: chunked reads, reads of
  only the chosen rows (:meth:`PatchFeatureFile.gather`), or a read-only memmap;
* :func:`fedpatchcore.core.coreset.streaming.select_coreset_streaming` runs the greedy
  k-center on the in-RAM projection and returns indices; gather them to get the coreset in
  full precision (float32).

The file is a standard ``.npy`` (``np.load`` reads it). Nothing here imports Kedro.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.features.projection import DEFAULT_PROJECTION_DIM, random_projection_matrix

__all__ = [
    "PatchFeatureFile",
    "PatchFeatureWriter",
    "projected_path",
]

#: Fixed size of the ``.npy`` header we write (magic + version + length + dict, padded).
#: A multiple of 64 so the data stay aligned, large enough for any 2-D shape.
_HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"
_STORED_DTYPE = np.dtype("<f2")
#: Default rows per read when iterating a file (≈ 48 MB of float32 at d = 1536).
DEFAULT_ROWS_PER_CHUNK = 8192
#: The writer's in-RAM projection grows by this many rows at a time (32 MiB at 128 columns).
_GROW_ROWS = 65536


def projected_path(path: str | os.PathLike) -> Path:
    """Where :meth:`PatchFeatureFile.save_projected` puts the projection of ``path``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".npy") + ".projected.npy")


def _npy_header(n_rows: int, dim: int) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``_HEADER_BYTES`` bytes for an (n, d) float16 array."""
    text = f"{{'descr': '{_STORED_DTYPE.str}', 'fortran_order': False, 'shape': ({n_rows}, {dim}), }}"
    room = _HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > room:  # pragma: no cover - would need ~80-digit shapes
        raise ValueError(f"shape ({n_rows}, {dim}) does not fit in the fixed .npy header")
    body = text.ljust(room - 1) + "\n"
    return _MAGIC + len(body).to_bytes(2, "little") + body.encode("latin1")


def _read_npy_header(path: Path) -> tuple[int, int, int, np.dtype]:
    """(n_rows, dim, data offset, dtype) of a 2-D C-order ``.npy`` file, via numpy's own parser."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        offset = handle.tell()
    if len(shape) != 2 or fortran:
        raise ValueError(f"{path} does not hold a 2-D C-order array (shape {shape}, fortran={fortran})")
    return int(shape[0]), int(shape[1]), offset, np.dtype(dtype)


class PatchFeatureWriter:
    """Append patch-feature batches to a float16 ``.npy`` file, keeping their projection in RAM.

    Use as a context manager or call :meth:`close`; the file's header carries the final
    shape only after closing. Peak memory is one batch plus the projected rows
    (``N × projection_dim`` float32), independent of the feature dimension.

    Args:
        path: destination ``.npy`` file (parent folders are created).
        dim: feature dimension ``d`` every batch must have.
        projection_dim: columns of the seeded random projection kept in RAM;
            ``None`` keeps no projection (it can be recomputed from the file later).
        seed: projection seed; the same as ``greedy_kcenter(..., seed=seed)`` uses, so a
            streamed selection equals an in-memory one on the same data.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        projection_dim: int | None = DEFAULT_PROJECTION_DIM,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"feature dim must be >= 1, got {dim}")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
        self.path = Path(path)
        self.dim = int(dim)
        self.projection_dim = projection_dim
        self.seed = int(seed)
        self.n_rows = 0
        self._matrix = (
            random_projection_matrix(self.dim, projection_dim, self.seed)
            if projection_dim is not None
            else None
        )
        # Projection buffer grown in place (ndarray.resize -> realloc -> mremap for large
        # blocks), so RAM holds ~one copy of the projection, never a list plus a concatenation.
        self._projected: np.ndarray | None = None
        self.result: PatchFeatureFile | None = None  # set when closed by a ``with`` block
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(_npy_header(0, self.dim))  # valid (empty) file until close

    def append(self, batch: Any) -> None:
        """Write ``batch`` ((b, d), any float dtype, numpy or torch) and keep its projection."""
        if self._handle is None:
            raise ValueError(f"PatchFeatureWriter for {self.path} is already closed")
        if hasattr(batch, "detach"):  # torch tensor, without importing torch here
            batch = batch.detach().float().cpu().numpy()
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"batch must have shape (b, {self.dim}), got {batch.shape}")
        if len(batch) == 0:
            return
        batch32 = np.ascontiguousarray(batch, dtype=np.float32)
        self._handle.write(np.ascontiguousarray(batch32, dtype=_STORED_DTYPE).data)
        if self._matrix is not None:
            rows = self._reserve(len(batch32))
            np.matmul(batch32, self._matrix, out=rows)
        self.n_rows += len(batch32)

    def _reserve(self, count: int) -> np.ndarray:
        """The next ``count`` rows of the projection buffer, growing it by whole steps."""
        need = self.n_rows + count
        if self._projected is None:
            self._projected = np.empty((max(need, _GROW_ROWS), self.projection_dim), dtype=np.float32)
        elif need > len(self._projected):
            capacity = -(-need // _GROW_ROWS) * _GROW_ROWS
            self._projected.resize((capacity, self.projection_dim), refcheck=False)
        return self._projected[self.n_rows : need]

    def close(self) -> PatchFeatureFile:
        """Finalise the header and return the readable :class:`PatchFeatureFile`."""
        if self._handle is None:
            raise ValueError(f"PatchFeatureWriter for {self.path} is already closed")
        self._handle.seek(0)
        self._handle.write(_npy_header(self.n_rows, self.dim))
        self._handle.close()
        self._handle = None
        projected = None
        if self._matrix is not None:
            projected, self._projected = self._projected, None
            if projected is None:
                projected = np.empty((0, self.projection_dim), dtype=np.float32)
            elif len(projected) != self.n_rows:
                projected.resize((self.n_rows, self.projection_dim), refcheck=False)  # shrink in place
        return PatchFeatureFile(
            self.path, projected=projected, projection_dim=self.projection_dim, seed=self.seed
        )

    def abort(self) -> None:
        """Close and delete the partial file (used when extraction fails)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._projected = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> PatchFeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._handle is not None:
            self.result = self.close()


class PatchFeatureFile:
    """A float16 ``(N, d)`` ``.npy`` feature file plus (optionally) its in-RAM projection.

    Args:
        path: the ``.npy`` file (written by :class:`PatchFeatureWriter` or ``np.save``
            of a 2-D float array).
        projected: ``(N, projection_dim)`` float32 projection, or ``None``. When ``None``
            and ``<stem>.projected.npy`` exists next to ``path`` it is loaded from there.
        projection_dim, seed: how the projection is (re)computed when missing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        projected: np.ndarray | None = None,
        projection_dim: int | None = DEFAULT_PROJECTION_DIM,
        seed: int = 0,
    ) -> None:
        self.path = Path(path)
        self.n_rows, self.dim, self._offset, self.dtype = _read_npy_header(self.path)
        self.seed = int(seed)
        self.projection_dim = projection_dim
        if projected is None and projected_path(self.path).exists():
            projected, meta = self._load_projected()
            self.seed = meta.get("seed", self.seed)
            self.projection_dim = projected.shape[1]
        if projected is not None:
            projected = np.asarray(projected, dtype=np.float32)
            if projected.shape[0] != self.n_rows:
                raise ValueError(f"projection has {projected.shape[0]} rows, {self.path} has {self.n_rows}")
            self.projection_dim = projected.shape[1]
        self.projected = projected

    def __repr__(self) -> str:
        return (
            f"PatchFeatureFile({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim}, "
            f"projection_dim={self.projection_dim}, projected={'yes' if self.projected is not None else 'no'})"
        )

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    # ---------------------------------------------------------------- reading
    def iter_chunks(
        self, rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK, dtype=np.float32
    ) -> Iterator[np.ndarray]:
        """Yield consecutive ``(<= rows_per_chunk, d)`` blocks, read with plain file reads."""
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            for start in range(0, self.n_rows, rows_per_chunk):
                count = min(rows_per_chunk, self.n_rows - start)
                raw = np.fromfile(handle, dtype=self.dtype, count=count * self.dim)
                if raw.size != count * self.dim:
                    raise OSError(f"{self.path} is truncated: expected {self.n_rows} rows of {self.dim}")
                yield raw.reshape(count, self.dim).astype(dtype, copy=False)

    def gather(self, indices: Any, dtype=np.float32) -> np.ndarray:
        """Rows ``indices`` (in the given order, repeats allowed) as ``dtype``; reads only those rows."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        out = np.empty((len(indices), self.dim), dtype=dtype)
        if len(indices) == 0:
            return out
        if indices.min() < 0 or indices.max() >= self.n_rows:
            raise IndexError(f"indices out of range for {self.n_rows} rows")
        unique, inverse = np.unique(indices, return_inverse=True)
        rows = np.empty((len(unique), self.dim), dtype=self.dtype)
        # Coalesce runs of consecutive rows into single preads.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        run_starts = np.concatenate(([0], breaks))
        run_ends = np.concatenate((breaks, [len(unique)]))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for lo, hi in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
                nbytes = (hi - lo) * self.row_bytes
                offset = self._offset + int(unique[lo]) * self.row_bytes
                view = memoryview(rows[lo:hi]).cast("B")
                got = 0
                while got < nbytes:
                    chunk = os.preadv(fd, [view[got:]], offset + got)
                    if chunk == 0:
                        raise OSError(f"{self.path} is truncated")
                    got += chunk
        finally:
            os.close(fd)
        out[:] = rows[inverse.ravel()]
        return out

    def load(self, mmap: bool = True) -> np.ndarray:
        """The whole ``(N, d)`` array as stored (float16): a read-only memmap, or in RAM."""
        return np.load(self.path, mmap_mode="r" if mmap else None)

    # ---------------------------------------------------------------- projection
    def compute_projected(self, rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK) -> np.ndarray:
        """Project the stored vectors chunk-wise (needs ``projection_dim``); sets ``.projected``.

        The result can differ from the writer's in-RAM projection in the last bits
        because the file holds float16-rounded vectors.
        """
        if self.projection_dim is None:
            raise ValueError("projection_dim is None: there is no projection to compute")
        matrix = random_projection_matrix(self.dim, self.projection_dim, self.seed)
        projected = np.empty((self.n_rows, self.projection_dim), dtype=np.float32)
        row = 0
        for chunk in self.iter_chunks(rows_per_chunk):
            np.matmul(chunk, matrix, out=projected[row : row + len(chunk)])
            row += len(chunk)
        self.projected = projected
        return projected

    def save_projected(self, path: str | os.PathLike | None = None) -> Path:
        """Save ``.projected`` (default ``<stem>.projected.npy``) so a reopened file finds it."""
        if self.projected is None:
            raise ValueError(f"{self.path} has no projection to save")
        target = Path(path) if path is not None else projected_path(self.path)
        with open(target, "wb") as handle:
            np.lib.format.write_array(handle, self.projected, allow_pickle=False)
        target.with_suffix(".json").write_text(
            repr({"seed": self.seed, "projection_dim": self.projection_dim})
        )
        return target

    def _load_projected(self) -> tuple[np.ndarray, dict]:
        target = projected_path(self.path)
        meta_path = target.with_suffix(".json")
        meta = ast.literal_eval(meta_path.read_text()) if meta_path.exists() else {}
        return np.load(target), meta

    @classmethod
    def open(
        cls, path: str | os.PathLike, projection_dim: int | None = DEFAULT_PROJECTION_DIM, seed: int = 0
    ) -> PatchFeatureFile:
        """Reopen a feature file (its saved projection, if any, is loaded)."""
        return cls(path, projected=None, projection_dim=projection_dim, seed=seed)
