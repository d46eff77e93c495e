"""A federated variant: partition -> one lane per client -> server rounds -> published metrics.

Everything of variant ``v`` lives in namespace ``v`` (datasets ``v.partition``,
``v.client_<id>.local_coreset``, ``v.memory_bank`` ...) and reads the parameters
``variants.v.*``, so ``kedro run --namespaces v`` re-runs just that variant and
``kedro viz`` folds it into one box with one lane per client. A variant that shares its
partition or a client's features with an earlier variant reads that variant's datasets.

Builders of two other pipelines are used here, as parts of a variant: its client lanes
(``training/pipeline.py``) and its scoring (``evaluation/pipeline.py``). Server nodes read the
run's :data:`~fedpatchcore.core.federation.server.SERVER_BLOCKS`.
"""

from kedro.pipeline import Pipeline, node

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.evaluation import run_summary
from fedpatchcore.core.federation.server import SERVER_BLOCKS
from fedpatchcore.pipelines import bind, in_variant, node_with_parameters
from fedpatchcore.pipelines.evaluation.pipeline import evaluation
from fedpatchcore.pipelines.experts.pipeline import expert_fitting, experts_enabled
from fedpatchcore.pipelines.federated import nodes
from fedpatchcore.pipelines.federated.flower_pipeline import flower_federation, uses_flower
from fedpatchcore.pipelines.federated.generative_pipeline import (
    add_bank_fidelity,
    generative_federation,
    generative_rounds,
    is_generative,
)
from fedpatchcore.pipelines.federated.summary_pipeline import summary_federation
from fedpatchcore.pipelines.training.pipeline import client_lanes, extraction_node, later_round_uploads
from fedpatchcore.structure import VARIANTS_KEY, Variant, round_bank


def partition_pipeline(variant: Variant) -> Pipeline:
    """``<variant>.partition``, its statistics and one training-image table per client."""
    tables = {f"client_{cid}_training_images": f"{variant.name}.client_{cid}.training_images" for cid in variant.client_ids}
    template = Pipeline(
        [
            node(
                bind(nodes.partition_clients, client_ids=variant.client_ids),
                [
                    "dataset_index",
                    "label_noise_pool",
                    "params:federation",
                    "params:heterogeneity",
                    "params:seed",
                    "params:validation",
                    "params:dataset",
                ],
                ["partition", "partition_stats", *tables],
                name="partition_clients",
            )
        ]
    )
    return in_variant(template, variant.name, inputs={"dataset_index", "label_noise_pool"}, outputs=tables)


def server_rounds(variant: Variant) -> Pipeline:
    """Round 1 merges the clients' uploads; each later round merges what clients found uncovered."""
    client_ids = variant.client_ids
    # Template names without dots, mapped onto the clients' namespaced uploads (round 1's may
    # belong to the variant that runs the shared lane).
    uploads = {f"client_{cid}_upload_round_1": f"{variant.lane_owner[cid]}.client_{cid}.upload_round_1" for cid in client_ids}
    first = node_with_parameters(
        nodes.aggregate_first_round,
        list(uploads),
        SERVER_BLOCKS,
        [round_bank(1, variant.rounds), "round_1_report"],
        name="aggregate_round_1",
        client_ids=client_ids,
    )
    rounds = in_variant(Pipeline([first]), variant.name, inputs=uploads)
    for round_number in range(2, variant.rounds + 1):
        previous = round_bank(round_number - 1, variant.rounds)
        rounds += later_round_uploads(variant, round_number, previous)
        uploads = {
            f"client_{cid}_upload_round_{round_number}": f"{variant.name}.client_{cid}.upload_round_{round_number}"
            for cid in client_ids
        }
        server_step = node_with_parameters(
            nodes.aggregate_later_round,
            [previous, f"round_{round_number - 1}_report", *uploads],
            SERVER_BLOCKS,
            [round_bank(round_number, variant.rounds), f"round_{round_number}_report"],
            name=f"aggregate_round_{round_number}",
            client_ids=client_ids,
            round_number=round_number,
        )
        rounds += in_variant(Pipeline([server_step]), variant.name, inputs=uploads)
    return rounds


def privacy_budget_datasets(variant: Variant) -> list[str]:
    """Every client's privacy budget of the variant (the datasets its releases write)."""
    return [f"{variant.lane_owner[cid]}.client_{cid}.privacy_budget" for cid in variant.client_ids]


def published_metrics_name(variant: Variant) -> str:
    """``metrics_federated`` for the main run, ``metrics_<variant>`` for each comparison variant."""
    return f"metrics_{variant.name}"


def summary_pipeline(variant: Variant) -> Pipeline:
    """The published metrics: the run's summary, the audits and each client's privacy budget
    (with ``experts.enabled``, what the experts' fitting sent is added to the communication).

    ``publish_<variant>_metrics`` sits outside the variant's namespace: it waits for
    ``privacy_ledger_state`` (every release of the run, other variants' too), and a node of the
    variant's namespace downstream of another variant's nodes would cut the namespace in two.
    """
    experts = experts_enabled(variant.parameters)
    partition = variant.partition_owner
    rounds = generative_rounds(variant) if is_generative(variant) else variant.rounds
    template = Pipeline(
        [
            node(
                nodes.summarise_federated_run,
                [
                    "metrics",
                    "memory_bank",
                    "partition",
                    "partition_stats",
                    "dataset_index",
                    "params:aggregation",
                    *[f"round_{r}_report" for r in range(1, rounds + 1)],
                ],
                "patchcore_run_summary" if experts else "run_summary",
                name="summarise_run",
            ),
            *(
                [
                    node(
                        run_summary.add_expert_communication,
                        ["patchcore_run_summary", "expert_traffic"],
                        "run_summary",
                        name="add_expert_communication",
                    )
                ]
                if experts
                else []
            ),
            node(
                nodes.audit_membership,
                [
                    "memory_bank",
                    "partition",
                    "dataset_index",
                    "evaluation_index",
                    "category_info",
                    "params:backbone",
                    "params:extraction",
                    "params:privacy",
                    "params:seed",
                ],
                "privacy_audit",
                name="audit_membership",
            ),
            node(
                nodes.audit_canary,
                ["params:privacy", "params:coreset", "params:seed"],
                "canary_audit",
                name="audit_canary",
            ),
        ]
    )
    inputs = {"dataset_index": "dataset_index", "evaluation_index": "evaluation_index", "category_info": "category_info"}
    if not variant.owns_partition:
        inputs.update({"partition": f"{partition}.partition", "partition_stats": f"{partition}.partition_stats"})
    name = variant.name
    publish = node(
        bind(run_summary.publish_privacy, client_ids=variant.client_ids),
        [
            f"{name}.run_summary",
            f"{name}.privacy_audit",
            f"{name}.canary_audit",
            "privacy_ledger_state",
            f"{partition}.partition",
            f"params:{VARIANTS_KEY}.{name}.privacy",
            f"params:{VARIANTS_KEY}.{name}.seed",
            *privacy_budget_datasets(variant),
        ],
        f"{name}.privacy_metrics" if is_generative(variant) else published_metrics_name(variant),
        name=f"publish_{name}_metrics",
    )
    published = Pipeline([publish])
    if is_generative(variant):  # the synthetic bank's fidelity joins the published metrics
        published += Pipeline(
            [
                node(
                    add_bank_fidelity,
                    [f"{name}.privacy_metrics", f"{name}.bank_fidelity"],
                    published_metrics_name(variant),
                    name=f"add_{name}_bank_fidelity",
                )
            ]
        )
    return in_variant(template, name, inputs=inputs) + published


def variant_experts(variant: Variant) -> Pipeline:
    """The variant's logical experts (``experts.enabled``): each client measures its own features
    beside its coreset, the server fits them from the merged sums (:mod:`..experts.pipeline`)."""
    if not experts_enabled(variant.parameters):
        return Pipeline([])
    sites = {
        f"client_{cid}": (f"{variant.name}.client_{cid}", f"{variant.feature_owner[cid]}.client_{cid}.patch_features")
        for cid in variant.client_ids
    }
    rounds = int(variant.parameters["experts"]["composition"]["lloyd_rounds"])
    return expert_fitting(variant.name, sites, rounds, per_category=True)


def federated_training(variant: Variant) -> Pipeline:
    partition = partition_pipeline(variant) if variant.owns_partition else Pipeline([])
    if is_generative(variant):  # privacy.mechanism: dp_cvae -> a DP-CVAE trained over rounds, the bank sampled
        if uses_flower(variant):
            raise InputError(
                f"variant {variant.name}: privacy.mechanism dp_cvae runs with federation.engine inprocess in Kedro "
                "(the Flower path of the DP-CVAE is fedpatchcore.flower.generative.serve_generative)"
            )
        return partition + generative_federation(variant, extraction_node)
    if variant.summary:  # privacy.mechanism: summary -> DP-Lloyd rounds over public centres
        if int(variant.federation.get("rounds", 1)) != 1:
            raise ValueError(
                f"variant {variant.name}: federation.rounds applies to the rows mechanism; a summary's rounds "
                "are privacy.summary.rounds"
            )
        return partition + summary_federation(variant, extraction_node)
    if uses_flower(variant):  # federation.engine: flower -> one node runs the rounds through Flower
        return partition + flower_federation(variant)
    return partition + client_lanes(variant) + server_rounds(variant) + variant_experts(variant)


def federated_evaluation(variant: Variant) -> Pipeline:
    return evaluation(variant.name, experts_enabled(variant.parameters)) + summary_pipeline(variant)
