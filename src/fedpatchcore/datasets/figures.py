"""Matplotlib figures saved as PNG that later nodes (the HTML report) can read back.

``kedro_datasets.matplotlib.MatplotlibDataset`` saves figures (one file, or a folder for a
dict/list of figures) and kedro-viz previews them, but it cannot load. This subclass saves
exactly the same files and loads them back as PNG bytes: ``bytes`` for one figure,
``{file name: bytes}`` for a folder. Its preview also works for a folder (the first image).
"""

from __future__ import annotations

import base64
from pathlib import PurePosixPath

from kedro.io.core import get_filepath_str
from kedro_datasets._typing import ImagePreview
from kedro_datasets.matplotlib import MatplotlibDataset


class FigureDataset(MatplotlibDataset):
    """Like ``matplotlib.MatplotlibDataset`` (same ``save``, same files), plus ``load``.

    Example catalog entry::

        "{variant}.roc_plot":
          type: fedpatchcore.datasets.FigureDataset
          filepath: data/08_reporting/{variant}/roc.png
          versioned: true
    """

    def _files(self) -> dict[str, str] | str:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._fs.isdir(path):
            names = sorted(PurePosixPath(p).name for p in self._fs.ls(path, detail=False))
            return {name: f"{path.rstrip('/')}/{name}" for name in names}
        return path

    def _read(self, path: str) -> bytes:
        with self._fs.open(path, mode="rb") as handle:
            return handle.read()

    def load(self) -> bytes | dict[str, bytes]:  # type: ignore[override]
        files = self._files()
        if isinstance(files, str):
            return self._read(files)
        return {name: self._read(path) for name, path in files.items()}

    def preview(self) -> ImagePreview:
        files = self._files()
        first = files if isinstance(files, str) else next(iter(files.values()))
        return ImagePreview(base64.b64encode(self._read(first)).decode("utf-8"))
