"""Export nodes: official-layout anomaly maps, and the inspector a station runs; the catalog datasets write files."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

import fedpatchcore
from fedpatchcore.core.data.types import frame_to_samples
from fedpatchcore.core.scoring.predict import bank_models
from fedpatchcore.core.scoring.thresholds import calibrations_from_dict
from fedpatchcore.datasets.exported_maps import MapsExport, check_format
from fedpatchcore.datasets.inspector import InspectorExport

logger = logging.getLogger(__name__)


def export_anomaly_maps(
    anomaly_maps: dict[str, dict[str, Any]], dataset_index: pd.DataFrame, export: dict[str, Any]
) -> MapsExport:
    """Raw maps (never per-image normalised) and their samples, in ``export.format``'s layout.

    The maps stay memory-mapped here; ``ExportedMapsDataset`` resizes them to each image's
    original size and writes them one category at a time.
    """
    export_format = check_format(export["format"])
    samples = {s.key: s for s in frame_to_samples(dataset_index)}
    categories = {}
    for category, entry in sorted(anomaly_maps.items()):
        keys = list(entry["keys"])
        missing = [key for key in keys if key not in samples]
        if missing:
            raise KeyError(
                f"anomaly maps of '{category}' name {len(missing)} images missing from dataset_index "
                f"(e.g. {missing[:3]}); were the maps computed on another dataset?"
            )
        if len(keys) != len(entry["maps"]):
            raise ValueError(f"anomaly maps of '{category}': {len(entry['maps'])} maps for {len(keys)} keys")
        categories[category] = (entry["maps"], [samples[key] for key in keys])
    logger.info(
        "Exporting %d anomaly maps of %d categories in %s layout",
        sum(len(s) for _, s in categories.values()),
        len(categories),
        export_format,
    )
    return MapsExport(format=export_format, categories=categories)


def export_inspector(
    memory_bank: dict[str, np.ndarray],
    category_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    scoring: dict[str, Any],
    privacy: dict[str, Any],
    seed: int,
    export: dict[str, Any],
    thresholds: dict[str, dict] | None = None,
    tuned: dict[str, Any] | None = None,
) -> InspectorExport:
    """Per category of the variant's bank: the torch model to export, with predict's calibration if any.

    Each category is exported with the setting its bank was built with (as ``predict`` scores
    it: the centralized baseline's ``tuned`` entry, else the variant's blocks at
    ``category_info``'s size); ``thresholds`` is ``predict.thresholds`` when the
    run holds a validation split out (``validation.enabled``), else the inspector ships none.
    """
    models = bank_models(
        memory_bank, category_info, backbone, extraction, scoring, privacy, seed, tuned, what="export.inspector"
    )
    calibrations = calibrations_from_dict(thresholds) if thresholds else {}
    logger.info(
        "Exporting the inspector of %d categories (ONNX opset %d; thresholds: %s)",
        len(models),
        int(export["onnx_opset"]),
        ", ".join(sorted(calibrations)) or "none, no validation split",
    )
    return InspectorExport(models, calibrations, int(export["onnx_opset"]), fedpatchcore.__version__)
