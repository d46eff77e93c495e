"""``predict``: new images against one variant's persisted bank, at thresholds from the validation split.

Built for the variant ``predict.variant`` names (like ``explain``). Nodes and datasets live in
the ``predict`` namespace: ``predict.thresholds`` (data/08_reporting/predict/thresholds.json)
and ``predict.predictions`` (data/08_reporting/predictions.csv), both versioned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore import structure
from fedpatchcore.pipelines import bind
from fedpatchcore.pipelines.predict import nodes

NAMESPACE = "predict"


def create_pipeline(parameters: Mapping[str, Any]) -> Pipeline:
    predict = parameters.get("predict") or {}
    variant_name = str(predict.get("variant") or structure.MAIN_VARIANT)
    variants = structure.federated_variants(parameters)
    if variant_name == structure.CENTRALIZED:
        training_source = "centralized.training_images"
    else:
        variant = next((v for v in variants if v.name == variant_name), None)
        if variant is None:
            known = [structure.CENTRALIZED, *(v.name for v in variants)]
            stand_in = node(bind(nodes.unknown_variant, known=known), "params:predict", "predictions", name="predict_images")
            return pipeline([stand_in], namespace=NAMESPACE, parameters={"params:predict"})
        training_source = f"{variant.partition_owner}.partition"

    def setting(block: str) -> str:
        return f"params:variants.{variant_name}.{block}"

    blocks = [setting(b) for b in ("backbone", "extraction", "scoring", "privacy", "seed")]
    tuned = [setting("tuned")]  # every variant extracts a tuned category with its setting
    template = Pipeline(
        [
            node(
                bind(nodes.build_models, runtime=str(predict.get("runtime") or "torch")),
                [f"{variant_name}.memory_bank", "category_info", *blocks, *tuned],
                "models",
                name="build_models",
            ),
            node(
                bind(nodes.calibrate_thresholds, variant=variant_name),
                ["models", "dataset_index", "validation_split", training_source, "params:predict", setting("extraction")],
                "thresholds",
                name="calibrate_thresholds",
            ),
            node(
                nodes.predict_images,
                ["models", "thresholds", "params:predict", "dataset_index"],
                "predictions",
                name="predict_images",
            ),
        ]
    )
    free = {f"{variant_name}.memory_bank", "category_info", "dataset_index", "validation_split", training_source}
    params = {"params:predict", *blocks, *tuned, setting("extraction")}
    return pipeline(template, namespace=NAMESPACE, inputs=free, parameters=params)
