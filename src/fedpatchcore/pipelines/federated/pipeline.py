"""A federated variant: partition -> one lane per client -> server rounds -> published metrics.

Everything of variant ``v`` lives in namespace ``v`` (datasets ``v.partition``,
``v.client_<id>.local_coreset``, ``v.memory_bank`` ...), so ``kedro run --namespaces v``
re-runs just that variant and ``kedro viz`` folds it into one box with one lane per client.
"""

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore.pipelines import bind
from fedpatchcore.pipelines.evaluation.pipeline import evaluation
from fedpatchcore.pipelines.federated import nodes
from fedpatchcore.pipelines.training.pipeline import client_lanes
from fedpatchcore.structure import MAIN_VARIANT, FederatedVariant

SHARED_INPUTS = {"dataset_index"}
SHARED_PARAMETERS = {"params:federation", "params:aggregation", "params:coreset", "params:seed"}


def _in_variant(nodes_: list, variant: FederatedVariant, outputs: dict | None = None) -> Pipeline:
    """Namespace ``nodes_`` into the variant, keeping shared datasets and settings global."""
    template = Pipeline(nodes_)
    used = template.inputs()
    parameters = set(SHARED_PARAMETERS)
    if variant.override_parameter:
        parameters.add(f"params:{variant.override_parameter}")
    return pipeline(
        template,
        namespace=variant.name,
        inputs=SHARED_INPUTS & used,
        outputs=outputs,
        parameters=parameters & used,
    )


def partition_node(variant: FederatedVariant):
    inputs = ["dataset_index", "params:federation", "params:seed"]
    if variant.override_parameter:
        inputs.append(f"params:{variant.override_parameter}")
    return node(nodes.partition_clients, inputs, ["partition", "partition_stats"], name="partition_clients")


def server_round_nodes(variant: FederatedVariant) -> list:
    """Round 1 merges the local coresets; each later round merges what clients found uncovered."""
    client_ids, last = variant.client_ids, variant.rounds
    shared = ["params:aggregation", "params:coreset", "params:seed"]

    def bank(round_number: int) -> str:
        return "memory_bank" if round_number == last else f"global_bank_round_{round_number}"

    nodes_ = [
        node(
            bind(nodes.aggregate_first_round, client_ids=client_ids),
            [*shared, *[f"client_{cid}.local_coreset" for cid in client_ids]],
            [bank(1), "round_1_report"],
            name="aggregate_round_1",
        )
    ]
    for round_number in range(2, last + 1):
        nodes_ += [
            node(
                nodes.select_uncovered_upload,
                [f"client_{cid}.local_coreset", bank(round_number - 1), "params:federation"],
                f"client_{cid}.upload_round_{round_number}",
                name=f"client_{cid}_select_upload_round_{round_number}",
            )
            for cid in client_ids
        ]
        nodes_.append(
            node(
                bind(nodes.aggregate_later_round, client_ids=client_ids, round_number=round_number),
                [
                    bank(round_number - 1),
                    *shared,
                    *[f"client_{cid}.upload_round_{round_number}" for cid in client_ids],
                ],
                [bank(round_number), f"round_{round_number}_report"],
                name=f"aggregate_round_{round_number}",
            )
        )
    return nodes_


def published_metrics_name(variant: FederatedVariant) -> str:
    """The main run publishes ``metrics_federated``; baselines ``<variant>.metrics_federated``."""
    return "metrics_federated" if variant.name == MAIN_VARIANT else f"{variant.name}.metrics_federated"


def summary_node(variant: FederatedVariant):
    return node(
        nodes.summarise_federated_run,
        [
            "metrics",
            "memory_bank",
            "partition",
            "partition_stats",
            "dataset_index",
            "params:aggregation",
            *[f"round_{r}_report" for r in range(1, variant.rounds + 1)],
        ],
        "metrics_federated",
        name="summarise_run",
    )


def federated_training(variant: FederatedVariant) -> Pipeline:
    return (
        _in_variant([partition_node(variant)], variant)
        + client_lanes(variant.name, variant.client_ids)
        + _in_variant(server_round_nodes(variant), variant)
    )


def federated_evaluation(variant: FederatedVariant) -> Pipeline:
    outputs = {"metrics_federated": "metrics_federated"} if variant.name == MAIN_VARIANT else None
    return evaluation(variant.name) + _in_variant([summary_node(variant)], variant, outputs=outputs)


def create_pipeline(variant: FederatedVariant) -> Pipeline:
    return federated_training(variant) + federated_evaluation(variant)
