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


class FaissIndexes(dict):
    """``category -> faiss index``, plus what the indexes were built from.

    ``bank_fingerprint`` is :func:`fedpatchcore.core.banks.bank_fingerprint` of the memory bank
    the indexes hold (None: unknown, e.g. an index saved before fingerprints existed);
    ``build`` the settings they were built with (:meth:`~fedpatchcore.core.banks.knn.IndexSpec.record`).
    Scoring compares the fingerprint with the bank it is given, so an index left over from
    another bank is never used silently.
    """

    def __init__(self, indexes=(), *, bank_fingerprint: str | None = None, build: dict | None = None):
        super().__init__(indexes)
        self.bank_fingerprint = bank_fingerprint
        self.build = dict(build or {})


class FaissIndexDataset(LocalVersionedDataset):
    """One FAISS index per category in a folder: ``<category>.faiss``, and ``index_info.json``.

    ``index_info.json`` holds the fingerprint of the bank the indexes were built from and the
    build settings (saved when the data is a :class:`FaissIndexes`); loading returns a
    :class:`FaissIndexes` either way.
    """

    INFO_FILE = "index_info.json"

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        import faiss

        path.mkdir(parents=True)
        for category, index in data.items():
            faiss.write_index(index, str(path / f"{category}.faiss"))
        info = {
            "bank_fingerprint": getattr(data, "bank_fingerprint", None),
            "build": getattr(data, "build", {}),
            "categories": sorted(data),
        }
        (path / self.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def _read(self, path: Path) -> FaissIndexes:
        import faiss

        info_path = path / self.INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return FaissIndexes(
            {file.stem: faiss.read_index(str(file)) for file in sorted(path.glob("*.faiss"))},
            bank_fingerprint=info.get("bank_fingerprint"),
            build=info.get("build"),
        )


class AnomalyMapsDataset(LocalVersionedDataset):
    """Raw (never per-image normalised) anomaly maps of every test image, one array per category.

    Saved as ``<category>.npy`` (float32, ``(n_images, height, width)``) with
    ``<category>.keys.json`` listing the sample key of each row. Any other entry of a category
    (e.g. ``skipped``: the test images that could not be read, ``bank_fingerprint``: the bank
    they were scored against) goes to ``<category>.meta.json`` and comes back on load. Loading
    memory-maps the arrays, so reporting can look at a few maps of a large dataset without
    reading all of them.
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
            meta = {name: value for name, value in entry.items() if name not in ("keys", "maps")}
            if meta:
                (path / f"{category}.meta.json").write_text(json.dumps(meta, indent=1))

    def _read(self, path: Path) -> dict[str, dict[str, Any]]:
        result = {}
        for file in sorted(path.glob("*.npy")):
            keys = json.loads((path / f"{file.stem}.keys.json").read_text())
            meta_path = path / f"{file.stem}.meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            result[file.stem] = {**meta, "keys": keys, "maps": np.load(file, mmap_mode="r")}
        return result
