"""One export node per variant: ``<variant>.anomaly_maps`` -> ``<variant>.exported_maps``; and, with
``export.inspector: onnx``, ``<variant>.export_inspector`` -> ``<variant>.inspector`` for the variant
``predict.variant`` names (what ``predict`` scores with is what a station gets)."""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node

from fedpatchcore import structure
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


def inspector_export(variant: str, with_thresholds: bool) -> Pipeline:
    """Node ``<variant>.export_inspector``; reads ``predict.thresholds`` when ``with_thresholds``
    (and, for the centralized baseline, its ``tuned`` settings, as ``predict`` does)."""
    inputs = {
        "memory_bank": "memory_bank",
        "category_info": "category_info",
        **{block: f"params:{block}" for block in ("backbone", "extraction", "scoring", "privacy", "seed", "export")},
    }
    if with_thresholds:
        inputs["thresholds"] = "predict.thresholds"
    if variant == structure.CENTRALIZED:
        inputs["tuned"] = "params:tuned"
    template = Pipeline([node(nodes.export_inspector, inputs, "inspector", name="export_inspector")])
    return in_variant(template, variant, inputs={"category_info", *(["predict.thresholds"] if with_thresholds else [])})


def inspector_variant(parameters: dict) -> str | None:
    """The variant whose inspector ``export`` writes (``predict.variant``), or None without ``export.inspector``."""
    if not (parameters.get("export") or {}).get("inspector"):
        return None
    return str((parameters.get("predict") or {}).get("variant") or structure.MAIN_VARIANT)
