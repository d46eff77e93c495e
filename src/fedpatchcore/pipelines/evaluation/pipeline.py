"""Scoring and metrics of one variant's memory bank (centralized or a federated variant)."""

from kedro.pipeline import Pipeline, node

from fedpatchcore.pipelines import bind, in_variant
from fedpatchcore.pipelines.evaluation import nodes
from fedpatchcore.structure import CENTRALIZED, CENTRALIZED_CLIENT, VARIANTS_KEY


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
    """The centralized baseline's scoring and its published metrics (``metrics_centralized``).

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
    return evaluation(CENTRALIZED) + in_variant(summary, CENTRALIZED) + Pipeline([publish])
