"""One export node per variant: ``<variant>.anomaly_maps`` -> ``<variant>.exported_maps``."""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import in_variant
from fedpatchcore.pipelines.export import nodes


def export_template() -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.export_anomaly_maps,
                ["anomaly_maps", "dataset_index", "params:export"],
                "exported_maps",
                name="export_maps",
            )
        ]
    )


def export_maps(variants: Iterable[str]) -> Pipeline:
    """Node ``<variant>.export_maps`` for every variant name (``centralized``, ``federated``, ...)."""
    return sum(
        (in_variant(export_template(), variant, inputs={"dataset_index"}) for variant in variants),
        Pipeline([]),
    )


def export_enabled(parameters: dict) -> bool:
    """``export.enabled``: whether the centralized/federated pipelines end with the export step."""
    return bool((parameters.get("export") or {}).get("enabled", False))
