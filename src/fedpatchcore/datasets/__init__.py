"""Custom Kedro datasets: memory banks, FAISS indexes, anomaly maps, patch features."""

from fedpatchcore.datasets.arrays import AnomalyMapsDataset, FaissIndexDataset, NpzDataset
from fedpatchcore.datasets.features import PatchFeaturesDataset

__all__ = ["AnomalyMapsDataset", "FaissIndexDataset", "NpzDataset", "PatchFeaturesDataset"]
