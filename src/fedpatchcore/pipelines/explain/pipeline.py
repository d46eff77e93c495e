"""``explain``: one image against one variant's persisted global bank and its clients' local coresets.

Built for the variant and asking client the parameters name (``explain.variant``,
``explain.client``), like the client lanes are built for the run's clients. Nodes and
datasets live in the ``explain`` namespace; outputs go to ``data/08_reporting/explain/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore import structure
from fedpatchcore.core.reporting.figures import draw_explanation
from fedpatchcore.pipelines import bind
from fedpatchcore.pipelines.explain import nodes
from fedpatchcore.structure import CENTRALIZED_CLIENT

NAMESPACE = "explain"
OUTPUTS = ("explanation", "arrays", "crops")


def _client_datasets(variant_name: str, variants: list[structure.Variant]) -> tuple[dict[str, str], dict[str, str]] | None:
    """Per client: its local coreset and its training-image table, or None for an unknown variant."""
    if variant_name == structure.CENTRALIZED:
        return (
            {CENTRALIZED_CLIENT: "centralized.local_coreset"},
            {CENTRALIZED_CLIENT: "centralized.training_images"},
        )
    variant = next((v for v in variants if v.name == variant_name), None)
    if variant is None:
        return None
    coresets = {cid: f"{variant.name}.client_{cid}.local_coreset" for cid in variant.client_ids}
    tables = {cid: f"{variant.partition_owner}.client_{cid}.training_images" for cid in variant.client_ids}
    return coresets, tables


def create_pipeline(parameters: Mapping[str, Any]) -> Pipeline:
    explain = parameters.get("explain") or {}
    variant_name = str(explain.get("variant") or structure.MAIN_VARIANT)
    variants = structure.federated_variants(parameters)
    datasets = _client_datasets(variant_name, variants)
    if datasets is None:
        known = [structure.CENTRALIZED, *(v.name for v in variants)]
        stand_in = node(bind(nodes.unknown_variant, known=known), "params:explain", "explanation", name="explain_image")
        return pipeline([stand_in], namespace=NAMESPACE, parameters={"params:explain"})

    coresets, tables = datasets
    client_ids = list(coresets)
    asking = explain.get("client")
    asking = None if asking in (None, "") else str(asking)
    if asking is not None and asking not in coresets:
        # Fail at run time with the list of clients (a registry error would break every pipeline).
        stand_in = node(
            bind(nodes.unknown_client, client=asking, known=client_ids), "params:explain", "explanation", name="explain_image"
        )
        return pipeline([stand_in], namespace=NAMESPACE, parameters={"params:explain"})

    settings = [f"params:variants.{variant_name}.{block}" for block in ("backbone", "extraction", "scoring", "seed", "privacy")]
    inputs = [
        "params:explain",
        *settings,
        f"{variant_name}.memory_bank",
        "dataset_index",
        "category_info",
        *coresets.values(),
        *([tables[asking]] if asking is not None else []),
    ]
    template = Pipeline(
        [
            node(
                bind(nodes.explain_image, variant=variant_name, client_ids=client_ids, asking_client=asking),
                inputs,
                list(OUTPUTS),
                name="explain_image",
            ),
            node(draw_explanation, list(OUTPUTS), "figure", name="draw_explanation"),
        ]
    )
    free = {name for name in inputs if not name.startswith("params:")}
    return pipeline(template, namespace=NAMESPACE, inputs=free, parameters={"params:explain", *settings})
