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
from fedpatchcore.structure import FederatedVariant

SHARED_INPUTS = {"dataset_index"}
SHARED_PARAMETERS = {"params:federation", "params:aggregation", "params:coreset", "params:seed"}


def _in_variant(
    nodes_: list, variant: FederatedVariant, inputs: dict | None = None, outputs: dict | None = None
) -> Pipeline:
    """Namespace ``nodes_`` into the variant, keeping shared datasets and settings global.

    ``inputs``/``outputs`` map template names to datasets outside the variant's own level,
    such as a client's ``<variant>.client_<id>.local_coreset``.
    """
    template = Pipeline(nodes_)
    used = template.inputs()
    parameters = set(SHARED_PARAMETERS)
    if variant.override_parameter:
        parameters.add(f"params:{variant.override_parameter}")
    return pipeline(
        template,
        namespace=variant.name,
        inputs={**{name: name for name in SHARED_INPUTS & used}, **(inputs or {})},
        outputs=outputs,
        parameters=parameters & used,
    )


def partition_node(variant: FederatedVariant):
    inputs = ["dataset_index", "params:federation", "params:seed"]
    if variant.override_parameter:
        inputs.append(f"params:{variant.override_parameter}")
    return node(nodes.partition_clients, inputs, ["partition", "partition_stats"], name="partition_clients")


def _global_bank(variant: FederatedVariant, round_number: int) -> str:
    """The bank a round produces: the last round's is the variant's memory bank."""
    return "memory_bank" if round_number == variant.rounds else f"global_bank_round_{round_number}"


def _client_upload_node(variant: FederatedVariant, client_id: str, round_number: int):
    """Round r > 1 on one client: keep what the broadcast bank misses.

    It sits in the variant's namespace, not the client's: a client namespace spanning rounds
    would be cut in two by the server node between them, which Kedro rejects as a namespace.
    """
    return node(
        nodes.select_uncovered_upload,
        [f"client_{client_id}_local_coreset", _global_bank(variant, round_number - 1), "params:federation"],
        f"client_{client_id}_upload_round_{round_number}",
        name=f"client_{client_id}_select_upload_round_{round_number}",
    )


def server_rounds(variant: FederatedVariant) -> Pipeline:
    """Round 1 merges the local coresets; each later round merges what clients found uncovered."""
    client_ids = variant.client_ids
    shared = ["params:aggregation", "params:coreset", "params:seed"]

    def client_inputs(dataset: str) -> dict[str, str]:
        # Template names without dots; mapped onto the clients' namespaced datasets.
        return {f"client_{cid}_{dataset}": f"{variant.name}.client_{cid}.{dataset}" for cid in client_ids}

    rounds = _in_variant(
        [
            node(
                bind(nodes.aggregate_first_round, client_ids=client_ids),
                [*shared, *client_inputs("local_coreset")],
                [_global_bank(variant, 1), "round_1_report"],
                name="aggregate_round_1",
            )
        ],
        variant,
        inputs=client_inputs("local_coreset"),
    )
    for round_number in range(2, variant.rounds + 1):
        uploads = client_inputs(f"upload_round_{round_number}")
        rounds += _in_variant(
            [_client_upload_node(variant, cid, round_number) for cid in client_ids],
            variant,
            inputs=client_inputs("local_coreset"),
            outputs=uploads,
        )
        rounds += _in_variant(
            [
                node(
                    bind(nodes.aggregate_later_round, client_ids=client_ids, round_number=round_number),
                    [_global_bank(variant, round_number - 1), *shared, *uploads],
                    [_global_bank(variant, round_number), f"round_{round_number}_report"],
                    name=f"aggregate_round_{round_number}",
                )
            ],
            variant,
            inputs=uploads,
        )
    return rounds


def published_metrics_name(variant: FederatedVariant) -> str:
    """``metrics_federated`` for the main run, ``metrics_<variant>`` for each comparison variant."""
    return f"metrics_{variant.name}"


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
        + server_rounds(variant)
    )


def federated_evaluation(variant: FederatedVariant) -> Pipeline:
    outputs = {"metrics_federated": published_metrics_name(variant)}
    return evaluation(variant.name) + _in_variant([summary_node(variant)], variant, outputs=outputs)


def create_pipeline(variant: FederatedVariant) -> Pipeline:
    return federated_training(variant) + federated_evaluation(variant)
