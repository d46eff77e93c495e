"""Scoring and metrics of one variant's memory bank (centralized or a federated variant)."""

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import bind, in_variant
from fedpatchcore.pipelines.evaluation import experts as expert_nodes
from fedpatchcore.pipelines.evaluation import nodes
from fedpatchcore.structure import CENTRALIZED, CENTRALIZED_CLIENT, VARIANTS_KEY


def expert_evaluation_template(per_category: bool = False) -> Pipeline:
    """PatchCore's maps and scores (``texture_*``) fused with the logical experts by each category's
    rule chosen on validation -> ``anomaly_maps``, ``image_scores``; ``metrics`` of the chosen
    rules with every expert's metrics under ``experts``."""
    tuned = ["params:tuned"] if per_category else []
    return Pipeline(
        [
            node(
                expert_nodes.choose_fusion_rules,
                [
                    "faiss_index",
                    "memory_bank",
                    "expert_model",
                    "dataset_index",
                    "validation_split",
                    "category_info",
                    "params:backbone",
                    "params:extraction",
                    "params:scoring",
                    "params:experts",
                    "params:seed",
                    *tuned,
                ],
                "fusion_rules",
                name="choose_fusion_rules",
            ),
            node(
                expert_nodes.score_test_images_with_experts,
                [
                    "expert_model",
                    "evaluation_index",
                    "category_info",
                    "params:backbone",
                    "params:extraction",
                    "params:scoring",
                    "params:experts",
                    "params:seed",
                    *tuned,
                ],
                "expert_scores",
                name="score_test_images_with_experts",
            ),
            node(
                expert_nodes.fuse_with_experts,
                ["texture_anomaly_maps", "texture_image_scores", "expert_scores", "fusion_rules"],
                ["anomaly_maps", "image_scores"],
                name="fuse_with_experts",
            ),
            node(
                expert_nodes.compute_expert_metrics,
                [
                    "texture_anomaly_maps",
                    "texture_image_scores",
                    "expert_scores",
                    "fusion_rules",
                    "evaluation_index",
                    "category_info",
                ],
                "expert_metrics",
                name="compute_expert_metrics",
            ),
            node(
                expert_nodes.publish_expert_metrics,
                ["selected_metrics", "expert_metrics", "fusion_rules"],
                "metrics",
                name="publish_expert_metrics",
            ),
        ]
    )


def evaluation_template(per_category: bool = False, experts: bool = False) -> Pipeline:
    """``per_category``: score each category with its ``params:tuned`` setting;
    ``experts``: fuse PatchCore with the logical experts (``experts.enabled``)."""
    scored = ["texture_anomaly_maps", "texture_image_scores"] if experts else ["anomaly_maps", "image_scores"]
    template = Pipeline(
        [
            node(
                nodes.build_faiss_index,
                ["memory_bank", "params:scoring", "params:seed"],
                "faiss_index",
                name="build_faiss_index",
            ),
            node(
                nodes.score_test_images,
                [
                    "faiss_index",
                    "memory_bank",
                    "evaluation_index",
                    "category_info",
                    "params:backbone",
                    "params:extraction",
                    "params:scoring",
                    "params:privacy",
                    "params:seed",
                    *(["params:tuned"] if per_category else []),
                ],
                scored,
                name="score_test_images",
            ),
            node(
                nodes.compute_metrics,
                ["anomaly_maps", "image_scores", "evaluation_index", "category_info", "skipped_files"],
                "selected_metrics" if experts else "metrics",
                name="compute_metrics",
            ),
        ]
    )
    return template + expert_evaluation_template(per_category) if experts else template


def evaluation(variant: str, experts: bool = False) -> Pipeline:
    """``<variant>.memory_bank`` -> ``<variant>.anomaly_maps``, ``.image_scores``, ``.metrics``.

    Every variant is scored on ``evaluation_index``: the test images minus any that label
    noise put into a training set; its metrics list the test images ``skipped_files`` left out.
    """
    template = evaluation_template(per_category=True, experts=experts)
    shared = {"evaluation_index", "category_info", "skipped_files"}
    shared |= {"dataset_index", "validation_split"} if experts else set()
    return in_variant(template, variant, inputs=shared)


def centralized_evaluation(experts: bool = False) -> Pipeline:
    """The centralized baseline's scoring and its published metrics (``metrics_centralized``);
    ``experts``: fused with the logical experts (``experts.enabled``).

    The publishing node sits outside the namespace: it waits for ``privacy_ledger_state`` (every
    release of the run), as each federated variant's does.
    """
    summary = Pipeline(
        [
            node(
                nodes.summarise_centralized_run,
                ["metrics", "memory_bank", "params:tuned"],
                "run_summary",
                name="summarise_run",
            )
        ]
    )
    parameters = f"params:{VARIANTS_KEY}.{CENTRALIZED}"
    publish = node(
        bind(nodes.publish_centralized_privacy, client_id=CENTRALIZED_CLIENT),
        [
            f"{CENTRALIZED}.run_summary",
            f"{CENTRALIZED}.training_images",
            "privacy_ledger_state",
            f"{parameters}.privacy",
            f"{parameters}.seed",
            f"{CENTRALIZED}.privacy_budget",
        ],
        "metrics_centralized",
        name="publish_centralized_metrics",
    )
    return evaluation(CENTRALIZED, experts) + in_variant(summary, CENTRALIZED) + Pipeline([publish])
