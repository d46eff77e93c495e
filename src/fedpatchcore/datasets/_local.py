"""Shared plumbing of the project's file datasets: local paths, optional versioning, atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset
from kedro.io.core import Version


class LocalVersionedDataset(AbstractVersionedDataset):
    """Base for datasets that live on the local disk, versioned when the catalog says so.

    Subclasses implement ``_write(path, data)`` and ``_read(path)``. Writes go to a temporary
    sibling first and are renamed into place, so an interrupted run never leaves a
    half-written artifact that a later ``--from-nodes`` run would load.
    """

    def __init__(self, filepath: str, version: Version | dict | None = None, metadata: dict | None = None):
        if isinstance(version, dict):
            version = Version(version.get("load"), version.get("save"))
        super().__init__(filepath=PurePosixPath(filepath), version=version)
        self.metadata = metadata

    # --- to be implemented by subclasses ---------------------------------------------------
    def _write(self, path: Path, data: Any) -> None:
        raise NotImplementedError

    def _read(self, path: Path) -> Any:
        raise NotImplementedError

    # --- Kedro interface ---------------------------------------------------------------------
    def load(self) -> Any:
        path = Path(str(self._get_load_path()))
        if not path.exists():
            raise FileNotFoundError(f"{type(self).__name__}: nothing saved at {path}")
        return self._read(path)

    def save(self, data: Any) -> None:
        path = Path(str(self._get_save_path()))
        created_parent = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            staged = staging / path.name
            self._write(staged, data)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(staged, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created_parent and not any(path.parent.iterdir()):
                path.parent.rmdir()  # no empty version folder left behind by a failed save
            raise
        shutil.rmtree(staging, ignore_errors=True)
        # The next load must find the version just written, not a cached older one.
        self._clear_version_cache()

    def _exists(self) -> bool:
        try:
            path = Path(str(self._get_load_path()))
        except Exception:  # noqa: BLE001 - Kedro raises when no version exists yet
            return False
        return path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
