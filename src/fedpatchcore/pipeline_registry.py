"""Project pipelines.

``ingest``       raw images -> dataset_index, category_info
``centralized``  ingest + one client holding everything (the baseline) + evaluation + report
``federated``    ingest + partition + one lane per client + server rounds + evaluation + report
                 (+ the centralized baseline and comparison variants when comparison.enabled)
``evaluate``     scoring and metrics only, from persisted memory banks
``report``       overlays, curves, charts, the experiment table and the run's HTML page
                 (data/08_reporting/report.html) from persisted results
``explain``      one image (explain.image) against a variant's persisted global bank: nearest
                 bank rows with client and patch position, Grad-CAM, SHAP
``tune``         ingest + a validation split of the training images + every candidate setting
                 scored on it alone -> data/08_reporting/tune.csv, tune_report.md and
                 conf/tuned/parameters.yml (``kedro run --env tuned`` applies the choice)
``predict``      every image under predict.input against a variant's persisted bank, at
                 thresholds calibrated on its validation split -> predictions.csv, masks, overlays
``export``       anomaly maps in the official AutoVI/MVTec layout from persisted maps
                 (also appended to ``centralized``/``federated`` when export.enabled); with
                 export.inspector=onnx also predict.variant's inspector (ONNX embedder, bank,
                 thresholds, manifest per category)
``__default__``  federated
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Pipeline, node

from fedpatchcore import structure
from fedpatchcore.config_loader import run_parameters
from fedpatchcore.pipelines.evaluation.pipeline import centralized_evaluation
from fedpatchcore.pipelines.experts.pipeline import centralized_experts, experts_enabled
from fedpatchcore.pipelines.explain.pipeline import create_pipeline as explain
from fedpatchcore.pipelines.export.pipeline import (
    export_enabled,
    export_maps,
    inspector_export,
    inspector_variant,
)
from fedpatchcore.pipelines.federated import nodes as federated_nodes
from fedpatchcore.pipelines.federated.pipeline import (
    federated_evaluation,
    federated_training,
    privacy_budget_datasets,
    published_metrics_name,
)
from fedpatchcore.pipelines.ingest.pipeline import create_pipeline as ingest
from fedpatchcore.pipelines.predict.pipeline import create_pipeline as predict
from fedpatchcore.pipelines.report.pipeline import experiment_summary, html_report, report
from fedpatchcore.pipelines.training.pipeline import centralized_training
from fedpatchcore.pipelines.tune.pipeline import create_pipeline as tune


def privacy_ledger_state(variants, with_centralized: bool) -> Pipeline:
    """One node after every release of the run: each published budget then reads the composed ε."""
    budgets = sorted({name for v in variants for name in privacy_budget_datasets(v)})
    if with_centralized:
        budgets.append(f"{structure.CENTRALIZED}.privacy_budget")
    return Pipeline(
        [node(federated_nodes.close_privacy_ledger, budgets, "privacy_ledger_state", name="close_privacy_ledger")]
    )


def register_pipelines() -> dict[str, Pipeline]:
    """Kedro's entry point (it passes nothing): the pipelines for this run's parameters.

    The config loader owns them (the session's conf environment and ``--params``, or the
    project's conf outside a run); :func:`create_pipelines` builds from whatever it is given.
    """
    return create_pipelines(run_parameters())


def create_pipelines(parameters: Mapping[str, Any]) -> dict[str, Pipeline]:
    """Every registered pipeline, shaped by ``parameters`` (clients, rounds, variants, export)."""
    variants = structure.federated_variants(parameters)
    compare = structure.comparison_enabled(parameters)
    comparison = parameters.get("comparison") or {}
    # Experiments that vary only federated settings may leave the centralized baseline out.
    with_centralized = compare and comparison.get("centralized", True)

    centralized_eval = centralized_evaluation(experts_enabled(parameters))
    ledger = privacy_ledger_state(variants, with_centralized)
    centralized_report = report(structure.CENTRALIZED, experts_enabled(parameters))
    centralized_all = centralized_training() + centralized_experts(parameters) + centralized_eval + centralized_report

    federated_train = sum((federated_training(v) for v in variants), Pipeline([]))
    federated_eval = sum((federated_evaluation(v) for v in variants), Pipeline([]))
    federated_report = sum((report(v.name, experts_enabled(v.parameters)) for v in variants), Pipeline([]))
    with_experts = {v.name for v in variants if experts_enabled(v.parameters)}
    if experts_enabled(parameters):
        with_experts.add(structure.CENTRALIZED)
    published = {f"metrics_{v.name}": published_metrics_name(v) for v in variants}
    if with_centralized:
        published["metrics_centralized"] = "metrics_centralized"
    comparison_report = experiment_summary(comparison.get("name", "comparison"), published)

    federated = ingest() + federated_train + ledger + federated_eval + federated_report
    evaluate = federated_eval + ledger
    reporting = federated_report
    exporting = export_maps(v.name for v in variants)
    if with_centralized:
        federated += centralized_all
        evaluate += centralized_eval
        reporting += centralized_report
        exporting += export_maps([structure.CENTRALIZED])
    if compare:
        federated += comparison_report
        reporting += comparison_report
    centralized = (
        ingest()
        + centralized_all
        + privacy_ledger_state([], with_centralized=True)
        + html_report([structure.CENTRALIZED], None, with_experts)
    )
    # One HTML page over every run of the experiment (and its table and plot).
    runs = ([structure.CENTRALIZED] if with_centralized else []) + [v.name for v in variants]
    page = html_report(runs, comparison.get("name", "comparison") if compare else None, with_experts)
    federated += page
    reporting += page
    inspected = inspector_variant(parameters)
    if inspected is not None:
        with_thresholds = bool((parameters.get("validation") or {}).get("enabled", False))
        exporting += inspector_export(inspected, with_thresholds)
    if export_enabled(parameters):
        centralized += export_maps([structure.CENTRALIZED])
        federated += exporting

    return {
        "ingest": ingest(),
        "centralized": centralized,
        "federated": federated,
        "evaluate": evaluate,
        "report": reporting,
        "explain": explain(parameters),
        "export": exporting,
        "tune": ingest().only_nodes("prepare_raw_dataset", "index_dataset") + tune(),
        "predict": predict(parameters),
        "__default__": federated,
    }
