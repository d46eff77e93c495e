"""A versioned catalog folder holding the inspector of one variant: a folder per category.

``{variant}.inspector`` (``versioned: true``) is saved as::

    data/06_models/<variant>/inspector/<version>/inspector/
        <category>/embedder.onnx, bank.npy, thresholds.json, manifest.json

(what each file holds: :mod:`fedpatchcore.core.scoring.inspector`). The node hands over the
ready-to-score models and their calibrations (:class:`InspectorExport`); ``_write`` exports them
into the fresh staging folder that :class:`LocalVersionedDataset` provides, so an interrupted
export never leaves a half-written inspector. Loading returns each category's manifest plus
``folder``, the folder to copy to a station.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpatchcore.core.features.onnx_embedder import OPSET
from fedpatchcore.core.scoring.inspector import FILES, write_inspector
from fedpatchcore.datasets._local import LocalVersionedDataset


@dataclass
class InspectorExport:
    models: dict[str, Any]  # category -> CategoryModel (torch runtime)
    calibrations: dict[str, Any] = field(default_factory=dict)  # category -> Calibration (absent: none)
    opset: int = OPSET
    project_version: str = ""


class InspectorDataset(LocalVersionedDataset):
    """The inspector folders of one variant (save: :class:`InspectorExport`; load: the manifests)."""

    def _write(self, path: Path, data: InspectorExport) -> None:
        if not isinstance(data, InspectorExport):
            raise TypeError(f"InspectorDataset({self._filepath}) saves an InspectorExport, got {type(data).__name__}")
        path.mkdir(parents=True)
        for category, model in sorted(data.models.items()):
            write_inspector(
                path / category,
                model,
                data.calibrations.get(category),
                project_version=data.project_version,
                opset=data.opset,
            )

    def _read(self, path: Path) -> dict[str, Any]:
        return {
            folder.name: {**json.loads((folder / FILES["manifest"]).read_text()), "folder": str(folder)}
            for folder in sorted(path.iterdir())
            if (folder / FILES["manifest"]).is_file()
        }
