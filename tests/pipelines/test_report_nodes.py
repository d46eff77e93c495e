"""The report's nodes in memory (no session) and its page on hand-made artifacts; the figure dataset."""

from __future__ import annotations

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from kedro.io.core import Version

from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.datasets import FigureDataset
from fedpatchcore.pipelines.report.html import build_html_report, data_uri, group_artifacts
from fedpatchcore.pipelines.report.pipeline import report
from tests.pipelines.conftest import memory_catalog, project_parameters, run_slice


def _png(colour: str = "red") -> bytes:
    figure, axis = plt.subplots(figsize=(1, 1))
    axis.plot([0, 1], [0, 1], color=colour)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def test_figure_dataset_saves_like_matplotlib_and_loads_png_bytes(tmp_path):
    single = FigureDataset(filepath=str(tmp_path / "roc.png"), version=Version(None, None))
    figure, _ = plt.subplots()
    single.save(figure)
    assert single.load().startswith(b"\x89PNG")
    assert base64.b64decode(single.preview())[:4] == b"\x89PNG"

    folder = FigureDataset(filepath=str(tmp_path / "overlays"))
    folder.save({"b.png": plt.subplots()[0], "a.png": plt.subplots()[0]})
    loaded = folder.load()
    assert list(loaded) == ["a.png", "b.png"] and all(png.startswith(b"\x89PNG") for png in loaded.values())
    assert base64.b64decode(folder.preview())[:4] == b"\x89PNG"  # a folder previews its first image


def _metrics(auroc: float) -> dict:
    values = {"image_auroc": auroc, "aucspro": {"0.05": 0.5}, "pixel_auroc": 0.9, "pro": 0.8, "f1": 0.7}
    return {"categories": {"plate": values}, "mean": values, "communication": {"uploaded_bytes": 2e6, "upload_to_raw_ratio": 0.4}}


def test_the_page_embeds_every_image_as_a_data_uri_and_fetches_nothing():
    artifacts = {}
    for variant in ("centralized", "federated"):
        artifacts[f"{variant}__metrics"] = _metrics(0.9)
        for part in ("roc_plot", "spro_plot", "bank_contributions_plot", "metrics_plot"):
            artifacts[f"{variant}__{part}"] = _png()
        artifacts[f"{variant}__overlays"] = {"plate.png": _png("blue"), "tray.png": _png("green")}
        artifacts[f"{variant}__bank_contributions"] = pd.DataFrame(
            [{"category": "plate", "client": "a", "rows": 3, "share": 1.0}]
        )
    artifacts["comparison__table"] = pd.DataFrame({"run": ["centralized"], "image_auroc": [0.9]})
    artifacts["comparison__plot"] = _png()
    provenance = {"save_version": "2026-01-01T00.00.00.000Z", "datasets": {"metrics_federated": {"version": "v1", "type": "JSONDataset", "filepath": "x"}}}
    page = build_html_report(
        {"seed": 0, "dataset": {"format": "synthetic"}, "variants": {"huge": 1}},
        provenance,
        {"spro_limit": "0.05", "overlay_jpeg_quality": 70},
        **artifacts,
    )
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == 2 * (4 + 2) + 1
    assert sum(s.startswith("data:image/jpeg;base64,") for s in sources) == 4  # the overlays
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "http" not in page and "<script" not in page
    assert "2026-01-01T00.00.00.000Z" in page and "<td>v1</td>" in page
    assert "huge" not in page  # the derived per-variant parameters are left out


def test_the_page_refuses_anything_but_png_figures():
    with pytest.raises(ValueError, match="PNG"):
        data_uri(b"GIF89a...")
    with pytest.raises(ValueError, match="unexpected report input"):
        group_artifacts({"federated__mystery": 1})


def test_report_nodes_on_hand_made_maps(tiny_dataset):
    """Overlays, curves and contributions of one variant, from maps and scores made up here."""
    parameters = project_parameters()
    index = tiny_dataset["dataset_index"]
    test = index[index["split"] == "test"]
    rng = np.random.default_rng(0)
    maps, rows = {}, []
    for category, part in test.groupby("category"):
        keys = part["key"].tolist()
        width, height = tiny_dataset["category_info"][category]["image_size"]
        category_maps = rng.random((len(keys), height, width)).astype(np.float32)
        maps[category] = {"keys": keys, "maps": category_maps}
        for key, label, amap in zip(keys, part["label"], category_maps, strict=True):
            rows.append({"key": key, "category": category, "defect_type": "", "label": int(label), "image_score": float(amap.max())})
    bank = CategoryBanks(
        banks={c: np.zeros((4, 2), np.float32) for c in maps},
        n_images={c: 2 for c in maps},
        origin={c: np.array(["a", "a", "b", "qc"]) for c in maps},
        origin_row={c: np.arange(4) for c in maps},
    )
    inputs = {
        "federated.anomaly_maps": maps,
        "federated.image_scores": pd.DataFrame(rows),
        "federated.metrics": _metrics(0.5),
        "federated.memory_bank": bank.to_arrays(),
    }
    out = run_slice(report("federated"), memory_catalog(parameters, **tiny_dataset, **inputs))
    # The data the plots are drawn from (intermediate above): the two nodes that compute it.
    data_nodes = report("federated").only_nodes("federated.compute_curves", "federated.count_bank_contributions")
    out.update(run_slice(data_nodes, memory_catalog(parameters, **tiny_dataset, **inputs)))
    assert set(out["federated.overlays"]) == {f"{c}.png" for c in maps}
    curves = out["federated.report_curves"]
    assert curves["spro_max_fpr"] == 0.3
    for category in maps:
        roc = curves["categories"][category]["roc"]
        assert roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["threshold"][0] is None
        assert curves["categories"][category]["spro"]["fpr"][-1] == pytest.approx(0.3)
    table = out["federated.bank_contributions"]
    assert table[table["category"] == next(iter(maps))][["client", "rows"]].values.tolist() == [["a", 2], ["b", 1], ["qc", 1]]
    for name in ("federated.roc_plot", "federated.spro_plot", "federated.bank_contributions_plot", "federated.metrics_plot"):
        assert isinstance(out[name], plt.Figure)
    plt.close("all")
