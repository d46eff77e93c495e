"""A versioned catalog folder holding anomaly maps in an official evaluation layout.

``{variant}.exported_maps`` (``versioned: true``) is saved as::

    data/07_model_output/<variant>/exported_maps/<version>/exported_maps/
        export_summary.json                      format, per-category scale and counts
        <category>/map_scale.json                AutoVI only: offset/scale of the 16-bit encoding
        <category>/test/<defect>/<image_id>.png  (autovi) or .tiff (mvtec), original image size

The node hands over the raw maps and their samples (:class:`MapsExport`); this dataset's
``_write`` runs the exporter of ``fedpatchcore.core.evaluation.export`` into the fresh staging folder that
:class:`LocalVersionedDataset` provides, so a save never touches an earlier version and an
interrupted export never leaves a half-written folder in place. Loading returns the summary
plus ``maps_dir``, the folder to hand to the official evaluation scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.data.types import Sample
from fedpatchcore.core.evaluation.export import export_autovi_maps, export_mvtec_maps
from fedpatchcore.datasets._local import LocalVersionedDataset

SUMMARY_FILE = "export_summary.json"

# export.format -> (exporter, file suffix of one map)
EXPORTERS: dict[str, tuple[Callable[..., dict], str]] = {
    "autovi": (export_autovi_maps, ".png"),
    "mvtec": (export_mvtec_maps, ".tiff"),
}


def check_format(export_format: str) -> str:
    if export_format not in EXPORTERS:
        raise ValueError(f"export.format must be one of {sorted(EXPORTERS)}, got {export_format!r}")
    return export_format


@dataclass
class MapsExport:
    """What the export node returns: raw maps and their samples per category, and the layout."""

    format: str
    # category -> ((n, H, W) raw maps at model resolution, the n samples in the same order)
    categories: dict[str, tuple[np.ndarray, Sequence[Sample]]]
    info: dict[str, Any] = field(default_factory=dict)  # extra fields for export_summary.json


class ExportedMapsDataset(LocalVersionedDataset):
    """Anomaly maps written in the AutoVI or MVTec evaluation layout (save: :class:`MapsExport`).

    Example catalog entry::

        "{variant}.exported_maps":
          type: fedpatchcore.datasets.ExportedMapsDataset
          filepath: data/07_model_output/{variant}/exported_maps
          versioned: true
    """

    def _write(self, path: Path, data: MapsExport) -> None:
        if not isinstance(data, MapsExport):
            raise TypeError(
                f"ExportedMapsDataset({self._filepath}) saves a MapsExport, got {type(data).__name__}"
            )
        exporter, suffix = EXPORTERS[check_format(data.format)]
        path.mkdir(parents=True)
        categories = {}
        # One category at a time: only that category's maps are in memory while its scale is
        # computed and its files written. `path` is a fresh staging folder, so overwrite=True
        # only lets the exporter write the next category beside the previous ones.
        for category, (maps, samples) in sorted(data.categories.items()):
            result = exporter(maps, list(samples), path, overwrite=True)
            categories[category] = result["categories"][category]
        summary = {
            **data.info,
            "format": data.format,
            "suffix": suffix,
            "layout": f"<category>/test/<defect>/<image_id>{suffix}",
            "n_maps": sum(info["n_maps"] for info in categories.values()),
            "categories": categories,
        }
        (path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    def _read(self, path: Path) -> dict[str, Any]:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        return {**summary, "maps_dir": str(path)}
