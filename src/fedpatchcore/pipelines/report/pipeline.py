"""Reporting nodes of one variant, the comparison of all variants, and the run's HTML page."""

from kedro.pipeline import Pipeline, node, pipeline

from fedpatchcore.pipelines import in_variant
from fedpatchcore.pipelines.report import figures, html, nodes


def report_template() -> Pipeline:
    scored = ["anomaly_maps", "image_scores", "dataset_index", "category_info", "params:report"]
    return Pipeline(
        [
            node(figures.draw_overlays, scored, "overlays", name="draw_overlays"),
            node(nodes.plot_metrics, ["metrics", "params:report"], "metrics_plot", name="plot_metrics"),
            node(figures.compute_curves, scored, "report_curves", name="compute_curves"),
            node(figures.plot_roc_curves, "report_curves", "roc_plot", name="plot_roc_curves"),
            node(figures.plot_spro_curves, "report_curves", "spro_plot", name="plot_spro_curves"),
            node(figures.bank_contributions, "memory_bank", "bank_contributions", name="count_bank_contributions"),
            node(
                figures.plot_bank_contributions,
                "bank_contributions",
                "bank_contributions_plot",
                name="plot_bank_contributions",
            ),
        ]
    )


def report(variant: str) -> Pipeline:
    """``data/08_reporting/<variant>/``: overlays, curves, bank contributions and a metrics chart."""
    return in_variant(report_template(), variant, inputs={"dataset_index", "category_info"})


def html_report(variants: list[str], comparison_enabled: bool) -> Pipeline:
    """``report_html``: one self-contained page over ``variants`` (their published metrics and the
    figures of :func:`report`), the comparison when the run makes one, the run's parameters and
    the versions of the datasets it read.

    The comparison plot is read through ``comparison_plot_png`` (the same file as
    ``comparison_plot``, which cannot be loaded); taking ``comparison_table`` as well makes the
    page wait for ``compare_runs``, which writes both.
    """
    inputs = {"parameters": "parameters", "run_provenance": "run_provenance", "report": "params:report"}
    for variant in variants:
        inputs[f"{variant}__metrics"] = f"metrics_{variant}"
        for part in html.VARIANT_PARTS:
            if part != "metrics":
                inputs[f"{variant}__{part}"] = f"{variant}.{part}"
    if comparison_enabled:
        inputs["comparison__table"] = "comparison_table"
        inputs["comparison__plot"] = "comparison_plot_png"
    return Pipeline([node(html.build_html_report, inputs, "report_html", name="build_html_report")])


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
