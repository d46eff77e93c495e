"""Catalog datasets for the project's arrays: memory banks, FAISS indexes, anomaly maps.

kedro-datasets has no numpy dataset, and pickling would tie artifacts to library versions;
these store plain ``.npz``/``.npy``/``.faiss`` files that any tool can open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.datasets._local import LocalVersionedDataset


class NpzDataset(LocalVersionedDataset):
    """A flat ``dict[str, np.ndarray]`` in one ``.npz`` file (e.g. a memory bank per category).

    Example catalog entry::

        centralized.memory_bank:
          type: fedpatchcore.datasets.NpzDataset
          filepath: data/06_models/centralized/memory_bank.npz
    """

    def _write(self, path: Path, data: dict[str, np.ndarray]) -> None:
        if not isinstance(data, dict):
            raise TypeError(f"NpzDataset({self._filepath}) saves a dict of arrays, got {type(data).__name__}")
        with path.open("wb") as handle:
            np.savez(handle, **{name: np.asarray(value) for name, value in data.items()})

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


class FaissIndexDataset(LocalVersionedDataset):
    """One FAISS index per category in a folder: ``<category>.faiss``."""

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        import faiss

        path.mkdir(parents=True)
        for category, index in data.items():
            faiss.write_index(index, str(path / f"{category}.faiss"))

    def _read(self, path: Path) -> dict[str, Any]:
        import faiss

        return {file.stem: faiss.read_index(str(file)) for file in sorted(path.glob("*.faiss"))}


class AnomalyMapsDataset(LocalVersionedDataset):
    """Raw (never per-image normalised) anomaly maps of every test image, one array per category.

    Saved as ``<category>.npy`` (float32, ``(n_images, height, width)``) with
    ``<category>.keys.json`` listing the sample key of each row. Loading memory-maps the arrays,
    so reporting can look at a few maps of a large dataset without reading all of them.
    """

    def _write(self, path: Path, data: dict[str, dict[str, Any]]) -> None:
        path.mkdir(parents=True)
        for category, entry in data.items():
            maps = np.asarray(entry["maps"], dtype=np.float32)
            keys = list(entry["keys"])
            if len(keys) != len(maps):
                raise ValueError(f"anomaly maps of {category}: {len(maps)} maps but {len(keys)} keys")
            np.save(path / f"{category}.npy", maps)
            (path / f"{category}.keys.json").write_text(json.dumps(keys, indent=0))

    def _read(self, path: Path) -> dict[str, dict[str, Any]]:
        result = {}
        for file in sorted(path.glob("*.npy")):
            keys = json.loads((path / f"{file.stem}.keys.json").read_text())
            result[file.stem] = {"keys": keys, "maps": np.load(file, mmap_mode="r")}
        return result
