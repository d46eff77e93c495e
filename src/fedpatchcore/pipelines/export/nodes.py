"""Export node: pair every persisted anomaly map with its sample; the catalog dataset writes files."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from fedpatchcore.core.data.types import frame_to_samples
from fedpatchcore.datasets.exported_maps import MapsExport, check_format

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
