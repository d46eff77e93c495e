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


def experiment_summary(name: str, published_metrics: dict[str, str]) -> Pipeline:
    """The experiment's table, plot and analyses from every run's published metrics.

    ``published_metrics`` maps the node's keyword (``metrics_<run>``) to the dataset; the
    outputs are ``<name>_table`` (data/08_reporting/<name>.csv), ``<name>_plot`` and
    ``<name>_analysis``.
    """
    template = Pipeline(
        [
            node(
                nodes.summarise_experiment,
                {
                    "comparison": "params:comparison",
                    "report": "params:report",
                    **{keyword: keyword for keyword in published_metrics},
                },
                ["table", "plot", "analysis"],
                name="summarise_experiment",
            )
        ]
    )
    # Mapped here rather than named in node(): Kedro reserves dotted names for namespaces.
    return pipeline(
        template,
        namespace="comparison",
        inputs=published_metrics,
        outputs={"table": f"{name}_table", "plot": f"{name}_plot", "analysis": f"{name}_analysis"},
        parameters={"params:comparison", "params:report"},
    )
