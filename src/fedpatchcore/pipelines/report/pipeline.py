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


def expert_report_template() -> Pipeline:
    return Pipeline(
        [
            node(
                figures.draw_expert_overlays,
                [
                    "texture_anomaly_maps",
                    "texture_image_scores",
                    "expert_scores",
                    "fusion_rules",
                    "dataset_index",
                    "category_info",
                    "params:experts",
                ],
                "expert_overlays",
                name="draw_expert_overlays",
            )
        ]
    )


def report(variant: str, experts: bool = False) -> Pipeline:
    """``data/08_reporting/<variant>/``: overlays, curves, bank contributions and a metrics chart
    (``experts``: also each category's worst logical miss as every expert sees it)."""
    template = report_template() + (expert_report_template() if experts else Pipeline([]))
    return in_variant(template, variant, inputs={"dataset_index", "category_info"})


def html_report(variants: list[str], experiment: str | None, expert_variants: set[str] | None = None) -> Pipeline:
    """``report_html``: one self-contained page over ``variants`` (their published metrics and the
    figures of :func:`report`), the experiment's table and plot when the run makes one
    (``experiment``: its name, ``comparison.name``), the run's parameters and the versions of the
    datasets it read.

    The experiment plot is read through ``<experiment>_plot_png`` (the same file as
    ``<experiment>_plot``, which cannot be loaded); taking ``<experiment>_table`` as well makes
    the page wait for ``summarise_experiment``, which writes both.
    """
    inputs = {"parameters": "parameters", "run_provenance": "run_provenance", "report": "params:report"}
    for variant in variants:
        inputs[f"{variant}__metrics"] = f"metrics_{variant}"
        for part in html.VARIANT_PARTS:
            if part != "metrics":
                inputs[f"{variant}__{part}"] = f"{variant}.{part}"
        if variant in (expert_variants or set()):
            inputs[f"{variant}__expert_overlays"] = f"{variant}.expert_overlays"
    if experiment is not None:
        inputs["comparison__table"] = f"{experiment}_table"
        inputs["comparison__plot"] = f"{experiment}_plot_png"
    return Pipeline([node(html.build_html_report, inputs, "report_html", name="build_html_report")])


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
                    "experts": "params:experts",
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
        parameters={"params:comparison", "params:report", "params:experts"},
    )
