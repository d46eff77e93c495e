"""Reporting nodes of one variant, and the comparison of all variants."""

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore.pipelines import in_variant
from fedpatchcore.pipelines.report import nodes


def report_template() -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.draw_overlays,
                ["anomaly_maps", "image_scores", "dataset_index", "category_info", "params:report"],
                "overlays",
                name="draw_overlays",
            ),
            node(nodes.plot_metrics, ["metrics", "params:report"], "metrics_plot", name="plot_metrics"),
        ]
    )


def report(variant: str) -> Pipeline:
    """``data/08_reporting/<variant>/``: overlays and a metrics chart of that variant."""
    return in_variant(report_template(), variant, inputs={"dataset_index", "category_info"})


def comparison(published_metrics: dict[str, str]) -> Pipeline:
    """Centralized vs the federated variants, from their published metrics datasets.

    ``published_metrics`` maps the node's keyword (``metrics_<variant>``) to the dataset.
    """
    template = Pipeline(
        [
            node(
                nodes.compare_runs,
                {
                    "report": "params:report",
                    "metrics_centralized": "metrics_centralized",
                    **{keyword: keyword for keyword in published_metrics},
                },
                ["comparison_table", "comparison_plot"],
                name="compare_runs",
            )
        ]
    )
    # Mapped here rather than named in node(): Kedro reserves dotted names for namespaces.
    return pipeline(
        template,
        namespace="comparison",
        inputs={"metrics_centralized": "metrics_centralized", **published_metrics},
        outputs={"comparison_table": "comparison_table", "comparison_plot": "comparison_plot"},
        parameters={"params:report"},
    )
