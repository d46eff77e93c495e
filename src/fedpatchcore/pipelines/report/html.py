"""One self-contained HTML page per run: tables, plots and overlays embedded, nothing fetched.

Every image is a ``data:image/...;base64,...`` URI (charts PNG, overlays JPEG), the style sheet is inline and there is no
script, so the file opens offline in any browser and can be mailed as it is. The page holds:

* a summary of every variant (centralized baseline, the federated run, comparison variants):
  mean metrics and what crossed the network;
* the comparison table and plot, when the run wrote them;
* per variant: metrics per category, ROC and sPRO curves, the global bank's contributions per
  client, the overlays (top defects, worst misses, worst false alarms) and the metrics chart;
* the run's parameters and the version of every dataset the run read.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from PIL import Image

from fedpatchcore.core.evaluation.metrics import metrics_table
from fedpatchcore.structure import CENTRALIZED, VARIANTS_KEY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Artifacts of one variant the page shows, by the keyword the node receives them under
# (``<variant>__<part>``), with their caption.
VARIANT_IMAGES = {
    "roc_plot": "Image ROC per category",
    "spro_plot": "sPRO curves",
    "bank_contributions_plot": "Global bank rows per client",
    "metrics_plot": "Metrics per category",
}
VARIANT_PARTS = ("metrics", "overlays", "bank_contributions", *VARIANT_IMAGES)
# Parts only variants with experts.enabled have.
OPTIONAL_PARTS = ("expert_overlays",)
# The experts' rows of a variant's per-expert table (pipelines.evaluation.experts.REPORTED).
EXPERT_COLUMNS = ("texture", "global", "position", "composition", "fused", "selected")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1360px;
       color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #d8dde6; padding-bottom: 0.2em;
margin-top: 1.6em; } h3 { margin-bottom: 0.3em; }
.meta { color: #5b6473; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #d8dde6; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef1f6; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.4em 0.8em 0.8em 0; vertical-align: top; }
figcaption { font-size: 0.8em; color: #5b6473; }
img { max-width: 100%; border: 1px solid #e3e6ec; }
.plots img { height: 300px; width: auto; } .overlays img { width: 560px; }
pre { background: #f5f7fa; padding: 0.8em; font-size: 0.78em; overflow-x: auto; }
nav a { margin-right: 1em; }
.row { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
"""


def data_uri(png: bytes, jpeg_quality: int | None = None) -> str:
    """``png`` as a data URI: as it is, or re-encoded as JPEG of ``jpeg_quality`` (photos)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("the report embeds PNG figures only (data is not a PNG file)")
    if jpeg_quality is None:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=int(jpeg_quality), optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(png: bytes, caption: str, jpeg_quality: int | None = None) -> str:
    alt = html.escape(caption, quote=True)
    src = data_uri(png, jpeg_quality)
    return f'<figure><img alt="{alt}" src="{src}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, escape=True)


@dataclass
class VariantArtifacts:
    name: str
    metrics: dict[str, Any]  # the published metrics (metrics_<variant>)
    images: dict[str, bytes] = field(default_factory=dict)  # part -> PNG (see VARIANT_IMAGES)
    overlays: dict[str, bytes] = field(default_factory=dict)  # "<category>.png" -> PNG
    bank_contributions: pd.DataFrame | None = None
    expert_overlays: dict[str, bytes] = field(default_factory=dict)  # "<category>.png" -> PNG


def group_artifacts(artifacts: Mapping[str, Any]) -> tuple[list[VariantArtifacts], dict[str, Any]]:
    """``{"<variant>__<part>": data}`` -> one :class:`VariantArtifacts` per variant (in the
    order first seen) and ``{"<part>": data}`` of the ``comparison__`` entries."""
    variants: dict[str, VariantArtifacts] = {}
    comparison: dict[str, Any] = {}
    for keyword, data in artifacts.items():
        owner, _, part = keyword.partition("__")
        if owner == "comparison":
            comparison[part] = data
            continue
        if part not in VARIANT_PARTS + OPTIONAL_PARTS:
            raise ValueError(f"unexpected report input '{keyword}' (parts: {VARIANT_PARTS + OPTIONAL_PARTS})")
        entry = variants.setdefault(owner, VariantArtifacts(owner, {}))
        if part == "metrics":
            entry.metrics = data
        elif part == "overlays":
            entry.overlays = dict(data)
        elif part == "bank_contributions":
            entry.bank_contributions = data
        elif part == "expert_overlays":
            entry.expert_overlays = dict(data)
        else:
            entry.images[part] = data
    return list(variants.values()), comparison


def _summary(variants: list[VariantArtifacts], spro_limit: str) -> pd.DataFrame:
    rows = []
    for variant in variants:
        mean = variant.metrics.get("mean", {})
        communication = variant.metrics.get("communication") or {}
        uploaded = communication.get("uploaded_bytes")
        rows.append(
            {
                "variant": variant.name,
                "partition": variant.metrics.get("partition", "centralized" if variant.name == CENTRALIZED else "?"),
                "image AUROC": mean.get("image_auroc"),
                f"AUC-sPRO@{spro_limit}": (mean.get("aucspro") or {}).get(spro_limit),
                "pixel AUROC": mean.get("pixel_auroc"),
                "PRO": mean.get("pro"),
                "F1": mean.get("f1"),
                "uploaded MB": None if uploaded is None else uploaded / 1e6,
                "upload / raw images": communication.get("upload_to_raw_ratio"),
            }
        )
    return pd.DataFrame(rows).set_index("variant")


def expert_table(metrics: Mapping[str, Any], logical: set[str]) -> pd.DataFrame:
    """Per category: the rule chosen on validation, and each expert's image AUC-ROC (all defects,
    logical defect types, structural ones)."""
    experts = metrics["experts"]
    rows = []
    for category in sorted(experts["texture"]["categories"]):
        row: dict[str, Any] = {"category": category, "rule": experts["rules"][category]["rule"]}
        for name in EXPERT_COLUMNS:
            values = experts[name]["categories"][category]
            per_defect = values.get("image_auroc_per_defect") or {}
            kinds = {
                kind: [v for d, v in per_defect.items() if v is not None and (d in logical) == (kind == "logical")]
                for kind in ("logical", "structural")
            }
            row[name] = values.get("image_auroc")
            for kind, found in kinds.items():
                row[f"{name} {kind}"] = sum(found) / len(found) if found else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("category")


def _experts_section(variant: VariantArtifacts, logical: set[str], jpeg_quality: int | None) -> list[str]:
    if not variant.metrics.get("experts"):
        return []
    table = expert_table(variant.metrics, logical)
    parts = [
        "<h3>Logical experts: image AUC-ROC per expert and the rule each category uses</h3>",
        '<p class="meta">rule: chosen on the validation split (good validation images and their pseudo-anomalies, '
        "removed and moved parts included); texture = PatchCore alone; fused = the best combination on validation; "
        "selected = the chosen rule. logical / structural: mean over the category's defect types of each kind.</p>",
        _table(table),
    ]
    if variant.expert_overlays:
        parts += [
            '<div class="overlays">',
            *(
                _img(png, f"{variant.name}: {name.removesuffix('.png')}: worst logical miss, every expert", jpeg_quality)
                for name, png in sorted(variant.expert_overlays.items())
            ),
            "</div>",
        ]
    return parts


def _variant_section(
    variant: VariantArtifacts, spro_limit: str, jpeg_quality: int | None, logical: set[str] = frozenset()
) -> str:
    parts = [f'<h2 id="{html.escape(variant.name)}">{html.escape(variant.name)}</h2>', '<div class="row">']
    if variant.metrics.get("categories"):
        parts += ["<div><h3>Metrics per category</h3>", _table(metrics_table(variant.metrics, spro_limit)), "</div>"]
    if variant.bank_contributions is not None and len(variant.bank_contributions):
        wide = variant.bank_contributions.pivot_table(
            index="client", columns="category", values="rows", aggfunc="sum", fill_value=0
        )
        wide.loc["total"] = wide.sum()
        parts += ["<div><h3>Global bank rows kept per client and category</h3>", _table(wide), "</div>"]
    parts.append("</div>")
    parts += _experts_section(variant, logical, jpeg_quality)
    if variant.overlays:
        parts += [
            "<h3>Overlays: top defects, worst misses, worst false alarms</h3>",
            '<p class="meta">Green outline: ground truth. Heat map: raw anomaly map, one colour scale per category.</p>',
            '<div class="overlays">',
            *(
                _img(png, f"{variant.name}: {name.removesuffix('.png')}", jpeg_quality)
                for name, png in sorted(variant.overlays.items())
            ),
            "</div>",
        ]
    plots = [_img(variant.images[part], f"{variant.name}: {caption}") for part, caption in VARIANT_IMAGES.items() if part in variant.images]
    if plots:
        parts += ['<h3>Curves and charts</h3><div class="plots">', *plots, "</div>"]
    return "\n".join(parts)


def _provenance_table(provenance: Mapping[str, Any]) -> pd.DataFrame:
    rows = [
        {"dataset": name, "version": entry.get("version") or "unversioned", "type": entry.get("type", ""), "file": entry.get("filepath", "")}
        for name, entry in sorted((provenance.get("datasets") or {}).items())
    ]
    return pd.DataFrame(rows, columns=["dataset", "version", "type", "file"])


def render_report(
    variants: list[VariantArtifacts],
    comparison: Mapping[str, Any],
    parameters: Mapping[str, Any],
    provenance: Mapping[str, Any],
    spro_limit: str,
    jpeg_quality: int | None = None,
) -> str:
    """The whole page as one string (see the module docstring for what it holds).

    Overlays (photographs) are embedded as JPEG of ``jpeg_quality`` when it is set; charts
    always as PNG.
    """
    run = provenance.get("save_version") or "unknown"
    dataset = parameters.get("dataset", {})
    shown_parameters = {key: value for key, value in parameters.items() if key != VARIANTS_KEY}
    nav = " ".join(f'<a href="#{html.escape(v.name)}">{html.escape(v.name)}</a>' for v in variants)
    body = [
        "<h1>fedpatchcore: run report</h1>",
        f'<p class="meta">run {html.escape(str(run))} · dataset {html.escape(str(dataset.get("format", "?")))} '
        f'at {html.escape(str(dataset.get("root", "?")))}</p>',
        f'<nav>{nav} <a href="#comparison">comparison</a> <a href="#parameters">parameters</a> '
        '<a href="#datasets">datasets read</a></nav>',
        "<h2>Summary (mean over categories)</h2>",
        _table(_summary(variants, spro_limit)) if variants else "<p>no variant in this run</p>",
        '<h2 id="comparison">Comparison</h2>',
    ]
    table = comparison.get("table")
    body.append('<div class="row plots">')
    if table is not None:
        body.append(_table(table, index=False))
    if comparison.get("plot") is not None:
        body.append(_img(comparison["plot"], "comparison"))
    body.append("</div>")
    if table is None and comparison.get("plot") is None:
        body.append("<p>this run wrote no comparison (comparison.enabled is false)</p>")
    logical = set((parameters.get("experts") or {}).get("logical_defects") or ())
    body += [_variant_section(v, spro_limit, jpeg_quality, logical) for v in variants]
    body += [
        '<h2 id="parameters">Parameters of the run</h2>',
        f"<pre>{html.escape(json.dumps(shown_parameters, indent=2, sort_keys=True, default=str))}</pre>",
        '<h2 id="datasets">Datasets read (and the version read)</h2>',
        _table(_provenance_table(provenance), index=False),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fedpatchcore report {html.escape(str(run))}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def build_html_report(
    parameters: dict[str, Any], run_provenance: dict[str, Any], report: dict[str, Any], **artifacts: Any
) -> str:
    """The run's HTML report; ``artifacts`` are ``<variant>__<part>`` and ``comparison__<part>``."""
    variants, comparison = group_artifacts(artifacts)
    return render_report(
        variants, comparison, parameters, run_provenance, str(report["spro_limit"]), report.get("overlay_jpeg_quality")
    )
