"""The experts' fitting chain of one variant: site statistics, k-means rounds, fitted experts.

    <lane>.measure_expert_statistics   (each site, beside its coreset)
    <variant>.start_expert_fit          (server: merged sums, k-means start from the memory bank)
    <variant>.client_<id>_expert_round_<r>  /  <variant>.advance_expert_fit_<r>   (r = 1 .. lloyd_rounds)
    <variant>.client_<id>_expert_round_<R+1>  ->  <variant>.finish_expert_fit -> <variant>.expert_model

The centralized baseline runs the same chain with its single client, so its experts are the
experts a federation of one would fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import bind, in_variant
from fedpatchcore.pipelines.experts import nodes
from fedpatchcore.structure import CENTRALIZED, CENTRALIZED_CLIENT

SETTINGS = ["params:experts", "params:seed"]


def experts_enabled(parameters: Mapping[str, Any]) -> bool:
    return bool((parameters.get("experts") or {}).get("enabled", False))


def expert_fitting(
    variant: str,
    sites: Mapping[str, tuple[str, str]],
    lloyd_rounds: int,
    memory_bank: str = "memory_bank",
    per_category: bool = False,
    count_traffic: bool = True,
) -> Pipeline:
    """``sites``: site name -> (namespace of its statistics node, its ``patch_features`` dataset);
    ``per_category``: the sites extracted categories with their ``params:tuned`` settings;
    ``count_traffic``: add ``expert_traffic`` (the bytes sent; a federation's communication).

    A site's statistics node sits in its own namespace (its lane); its k-means replies sit in
    the variant's namespace, between the server's steps (as later coreset rounds do).
    """
    pipes = Pipeline([])
    statistics = {}
    for name, (namespace, features) in sites.items():
        own = f"{namespace}.expert_statistics"
        statistics[f"{name}_expert_statistics"] = own
        template = Pipeline(
            [
                node(
                    nodes.measure_expert_statistics,
                    ["patch_features", "params:backbone", *SETTINGS, *(["params:tuned"] if per_category else [])],
                    "expert_statistics",
                    name="measure_expert_statistics",
                )
            ]
        )
        pipes += in_variant(template, variant, namespace=namespace, inputs={"patch_features": features})
    features = {f"{name}_patch_features": path for name, (_, path) in sites.items()}
    steps = [
        node(
            nodes.start_expert_fit,
            [memory_bank, *SETTINGS, *statistics],
            ["expert_fit_round_0", "expert_broadcast_round_1"],
            name="start_expert_fit",
        )
    ]
    for r in range(1, lloyd_rounds + 2):
        replies = []
        for name in sites:
            reply = f"{name}_expert_reply_round_{r}"
            replies.append(reply)
            steps.append(
                node(
                    nodes.answer_expert_round,
                    [f"{name}_patch_features", f"expert_broadcast_round_{r}", *SETTINGS],
                    reply,
                    name=f"{name}_expert_round_{r}",
                )
            )
        if r <= lloyd_rounds:
            steps.append(
                node(
                    nodes.advance_expert_fit,
                    [f"expert_fit_round_{r - 1}", *SETTINGS, *replies],
                    [f"expert_fit_round_{r}", f"expert_broadcast_round_{r + 1}"],
                    name=f"advance_expert_fit_{r}",
                )
            )
        else:
            steps.append(
                node(
                    nodes.finish_expert_fit,
                    [f"expert_fit_round_{r - 1}", *SETTINGS, *replies],
                    "expert_model",
                    name="finish_expert_fit",
                )
            )
    if count_traffic:  # what crossed the network
        traffic = [*statistics]
        for r in range(1, lloyd_rounds + 2):
            traffic += [f"{name}_expert_reply_round_{r}" for name in sites] + [f"expert_broadcast_round_{r}"]
        steps.append(
            node(
                bind(nodes.count_expert_traffic, sites=list(sites), lloyd_rounds=lloyd_rounds),
                traffic,
                "expert_traffic",
                name="count_expert_traffic",
            )
        )
    pipes += in_variant(Pipeline(steps), variant, inputs={**statistics, **features})
    return pipes


def centralized_experts(parameters: Mapping[str, Any]) -> Pipeline:
    """The centralized baseline's experts: the fitting chain with its single client (experts.enabled)."""
    if not experts_enabled(parameters):
        return Pipeline([])
    site = {CENTRALIZED_CLIENT: (CENTRALIZED, f"{CENTRALIZED}.patch_features")}
    rounds = int(parameters["experts"]["composition"]["lloyd_rounds"])
    return expert_fitting(CENTRALIZED, site, rounds, per_category=True, count_traffic=False)
