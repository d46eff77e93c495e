"""Custom Kedro datasets: memory banks, FAISS indexes, anomaly maps, patch features, exported maps."""

from fedpatchcore.datasets.arrays import AnomalyMapsDataset, FaissIndexDataset, FaissIndexes, NpzDataset
from fedpatchcore.datasets.exported_maps import ExportedMapsDataset
from fedpatchcore.datasets.features import PatchFeaturesDataset

__all__ = [
    "AnomalyMapsDataset",
    "ExportedMapsDataset",
    "FaissIndexDataset",
    "FaissIndexes",
    "NpzDataset",
    "PatchFeaturesDataset",
]
