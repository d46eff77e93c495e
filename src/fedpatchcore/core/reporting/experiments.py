"""One tidy table per experiment: a row per run (variant) × group, plain column names.

A run's published metrics (``metrics_<run>.json``) give the values; the experiment's
description gives each run's labels (``scenario``, ``strategy``, ``epsilon`` ...), which become
the leading columns. Runs without labels get a ``run`` column with their name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fedpatchcore.core.evaluation.metrics import fairness_metrics

GROUPINGS = ("mean", "categories", "fairness", "clients", "experts")
#: The rows of the ``experts`` grouping: each expert alone, the best combination, the chosen rule.
EXPERT_ROWS = ("texture", "global", "position", "composition", "fused", "selected")
# Rows after the groups in the fairness groupings: the worst group per column, then the mean.
WORST = "worst"


def _metric_row(values: Mapping[str, Any], spro_limit: str) -> dict[str, Any]:
    return {
        "image_auroc": values.get("image_auroc"),
        f"aucspro_{spro_limit}": (values.get("aucspro") or {}).get(spro_limit),
    }


def _defect_kind_auroc(values: Mapping[str, Any], logical: set[str]) -> dict[str, float | None]:
    """Mean image AUC-ROC over a category's logical and over its structural defect types."""
    per_defect = values.get("image_auroc_per_defect") or {}
    kinds: dict[str, list[float]] = {"logical": [], "structural": []}
    for defect, auroc in per_defect.items():
        if auroc is not None:
            kinds["logical" if defect in logical else "structural"].append(float(auroc))
    return {f"image_auroc_{kind}": (float(np.mean(v)) if v else None) for kind, v in kinds.items()}


def _expert_rows(
    metrics: Mapping[str, Any], spro_limit: str, logical: set[str]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(category, expert, values) of a run's ``experts`` block, every category then ``mean``."""
    experts = metrics.get("experts")
    if not experts:
        raise ValueError("comparison.groups: experts needs runs with experts.enabled (they publish no experts metrics)")
    rows = []
    categories = sorted(experts["texture"]["categories"])
    for category in [*categories, "mean"]:
        for expert in EXPERT_ROWS:
            if category == "mean":
                per_category = [_defect_kind_auroc(experts[expert]["categories"][c], logical) for c in categories]
                kinds = {
                    key: (float(np.mean(v)) if (v := [row[key] for row in per_category if row[key] is not None]) else None)
                    for key in ("image_auroc_logical", "image_auroc_structural")
                }
                values = experts[expert]["mean"]
            else:
                values = experts[expert]["categories"][category]
                kinds = _defect_kind_auroc(values, logical)
            rows.append((category, expert, {**_metric_row(values, spro_limit), **kinds}))
    return rows


def experiment_table(
    runs: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, Mapping[str, Any]] | None = None,
    groups: str = "categories",
    spro_limit: str = "0.05",
    logical_defects: Sequence[str] = (),
) -> pd.DataFrame:
    """Rows per run × group: label columns, ``group``, ``image_auroc``, ``aucspro_<limit>``, ``uploaded_bytes``.

    ``groups``: ``categories`` (every category, then ``mean``), ``mean`` (one row per run, no
    ``group`` column), ``fairness`` (every category, then ``worst``: each column's lowest value
    over the categories, then ``mean``) or ``clients`` (every client scored on the categories it
    holds, then ``worst`` and ``mean`` over clients; from the run's ``fairness.client``) or
    ``experts`` (every category then ``mean``, each with a row per expert: ``category``,
    ``expert`` of :data:`EXPERT_ROWS`, plus the mean image AUC-ROC over the ``logical_defects``
    types and over the others, ``image_auroc_logical`` / ``image_auroc_structural``).
    Numbers a run publishes under ``experiment`` in its metrics (e.g. the privacy budget) become
    extra columns.
    """
    if groups not in GROUPINGS:
        raise ValueError(f"comparison.groups must be one of {list(GROUPINGS)}, got {groups!r}")
    labels = labels or {}
    label_columns: list[str] = []
    for run in runs:
        for column in labels.get(run) or {"run": run}:
            if column not in label_columns:
                label_columns.append(column)
    rows = []
    for run, metrics in runs.items():
        run_labels = dict(labels.get(run) or {"run": run})
        extra = dict(metrics.get("experiment") or {})
        uploaded = (metrics.get("communication") or {}).get("uploaded_bytes")
        if groups in ("fairness", "clients"):
            per_group = _fairness_rows(metrics, "category" if groups == "fairness" else "client", spro_limit)
        elif groups == "experts":
            per_group = {}
        elif groups == "categories":
            per_group = {
                group: _metric_row(values, spro_limit)
                for group, values in {**metrics["categories"], "mean": metrics["mean"]}.items()
            }
        else:
            per_group = {"mean": _metric_row(metrics["mean"], spro_limit)}
        if groups == "experts":
            for category, expert, values in _expert_rows(metrics, spro_limit, set(logical_defects)):
                row = {column: run_labels.get(column) for column in label_columns}
                row.update({"category": category, "expert": expert, **values, **extra, "uploaded_bytes": uploaded})
                rows.append(row)
            continue
        for group, values in per_group.items():
            row = {column: run_labels.get(column) for column in label_columns}
            if groups != "mean":
                row["group"] = group
            row.update(values)
            row.update(extra)
            row["uploaded_bytes"] = uploaded
            rows.append(row)
    return pd.DataFrame(rows)


def _fairness_rows(metrics: Mapping[str, Any], grouping: str, spro_limit: str) -> dict[str, dict[str, Any]]:
    """Each group's row, then ``worst`` and ``mean`` (per column) from the run's ``fairness`` block."""
    fairness = metrics.get("fairness") or fairness_metrics(metrics["categories"])
    if grouping not in fairness:
        raise ValueError(f"comparison.groups: a run publishes no fairness.{grouping} metrics")
    columns = ("image_auroc", f"aucspro_{spro_limit}")
    block = fairness[grouping]
    rows = {group: {c: values.get(c) for c in columns} for group, values in block["groups"].items()}
    summary = block["summary"]
    rows[WORST] = {c: (summary.get(c) or {}).get("worst") for c in columns}
    if grouping == "category":
        rows["mean"] = _metric_row(metrics["mean"], spro_limit)
    else:
        rows["mean"] = {c: (summary.get(c) or {}).get("mean") for c in columns}
    return rows


def leave_one_out_effect(
    runs: Mapping[str, Mapping[str, Any]], base: str, dropped: Mapping[str, str]
) -> dict[str, Any]:
    """How much leaving each client out changes the mean image AUC-ROC, against its trust in ``base``.

    ``dropped`` maps a client id to the run that left it out. Returns per client its trust,
    the AUC-ROC change (run without it minus ``base``: positive = the client was hurting), and
    the Spearman rank correlation between trust and that change (a trust that tells harmful
    clients apart correlates negatively).
    """
    base_auroc = float(runs[base]["mean"]["image_auroc"])
    clients = {}
    for client_id, run in dropped.items():
        trust = ((runs[base].get("clients") or {}).get(client_id) or {}).get("trust") or {}
        clients[client_id] = {
            "trust": trust.get("trust"),
            "auroc_change_without": float(runs[run]["mean"]["image_auroc"]) - base_auroc,
        }
    pairs = [(c["trust"], c["auroc_change_without"]) for c in clients.values() if c["trust"] is not None]
    correlation = None
    if len(pairs) >= 3 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
        correlation = float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    return {"base": base, "base_image_auroc": base_auroc, "clients": clients, "spearman_trust_vs_change": correlation}


def as_axis(values: Sequence[Any]) -> np.ndarray | None:
    """Label values as numbers for a plot axis (``inf``/``"inf"``/None -> +inf), or None if any is text."""
    out = []
    for value in values:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "none", "all")):
            out.append(np.inf)
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            return None
    return np.asarray(out)
