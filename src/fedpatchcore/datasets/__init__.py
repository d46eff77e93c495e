"""Custom Kedro datasets: memory banks, FAISS indexes, anomaly maps, patch features, exported maps, inspectors."""

from fedpatchcore.datasets.arrays import AnomalyMapsDataset, FaissIndexDataset, FaissIndexes, NpzDataset
from fedpatchcore.datasets.exported_maps import ExportedMapsDataset
from fedpatchcore.datasets.features import PatchFeaturesDataset
from fedpatchcore.datasets.figures import FigureDataset
from fedpatchcore.datasets.inspector import InspectorDataset
from fedpatchcore.datasets.provenance import RunProvenanceDataset

__all__ = [
    "AnomalyMapsDataset",
    "ExportedMapsDataset",
    "FaissIndexDataset",
    "FaissIndexes",
    "FigureDataset",
    "InspectorDataset",
    "NpzDataset",
    "PatchFeaturesDataset",
    "RunProvenanceDataset",
]
