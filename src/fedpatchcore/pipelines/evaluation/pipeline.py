"""Scoring and metrics of one variant's memory bank (centralized or a federated variant)."""

from kedro.pipeline import Pipeline, node

from fedpatchcore.core.evaluation.run_summary import add_privacy_budgets
from fedpatchcore.pipelines import bind, in_variant
from fedpatchcore.pipelines.evaluation import nodes
from fedpatchcore.structure import CENTRALIZED, CENTRALIZED_CLIENT


def evaluation_template(per_category: bool = False) -> Pipeline:
    """``per_category``: score each category with its ``params:tuned`` setting (centralized only)."""
    return Pipeline(
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
                ["anomaly_maps", "image_scores"],
                name="score_test_images",
            ),
            node(
                nodes.compute_metrics,
                ["anomaly_maps", "image_scores", "evaluation_index", "category_info", "skipped_files"],
                "metrics",
                name="compute_metrics",
            ),
        ]
    )


def evaluation(variant: str) -> Pipeline:
    """``<variant>.memory_bank`` -> ``<variant>.anomaly_maps``, ``.image_scores``, ``.metrics``.

    Every variant is scored on ``evaluation_index``: the test images minus any that label
    noise put into a training set; its metrics list the test images ``skipped_files`` left out.
    """
    template = evaluation_template(per_category=variant == CENTRALIZED)
    return in_variant(template, variant, inputs={"evaluation_index", "category_info", "skipped_files"})


def centralized_evaluation() -> Pipeline:
    """The centralized baseline's scoring and its published metrics (``metrics_centralized``)."""
    summary = Pipeline(
        [
            node(
                nodes.summarise_centralized_run,
                ["metrics", "memory_bank", "params:tuned"],
                "run_summary",
                name="summarise_run",
            ),
            node(
                bind(add_privacy_budgets, client_ids=[CENTRALIZED_CLIENT]),
                ["run_summary", "params:privacy", "params:seed", "privacy_budget"],
                "published_metrics",
                name="publish_privacy",
            ),
        ]
    )
    return evaluation(CENTRALIZED) + in_variant(
        summary, CENTRALIZED, outputs={"published_metrics": "metrics_centralized"}
    )
