"""What people look at, from one tiny federated run (with its comparison) in a throwaway project:
the HTML report, `kedro run --pipeline explain`, and `kedro viz build`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fedpatchcore import structure
from fedpatchcore.core.banks import CategoryBanks
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.loading import load_image
from fedpatchcore.core.data.synthetic import SYNTHETIC_CATEGORIES
from fedpatchcore.core.data.types import category_info_from_dict
from fedpatchcore.core.explain.attribution import patch_crop
from fedpatchcore.core.federation.client import LocalCoreset

VARIANTS = ["centralized", "federated", "federated_iid"]
CHARTS = ["roc.png", "spro.png", "bank_contributions.png", "metrics.png"]
EXPLAINED_VARIANT = "federated_iid"  # 4 IID clients: the nearest rows come from several clients
IID_CLIENTS = ["1", "2", "3", "4"]


def _latest(folder: Path) -> Path:
    """The newest version of a versioned dataset: <folder>/<version>/<folder name>."""
    return sorted(p for p in folder.iterdir() if p.is_dir())[-1] / folder.name


# The report page the federated run wrote (other tests here write newer versions of it).
RUN_REPORT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def federated_run(kedro_project):
    outputs, catalog = kedro_project.run(pipeline_names=["federated"])
    RUN_REPORT["page"] = _latest(kedro_project.path / "data/08_reporting/report.html")
    RUN_REPORT["metrics"] = _latest(kedro_project.path / "data/08_reporting/metrics_federated.json")
    return catalog


# --------------------------------------------------------------------------------------- report


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src") or "")
        if tag == "script":
            self.scripts += 1
        for name in ("href", "src"):
            if tag != "img" and attrs.get(name):
                self.links.append(attrs[name])


@pytest.mark.slow
def test_report_html_embeds_every_image_it_references(kedro_project, federated_run):
    page = RUN_REPORT["page"].read_text()
    parser = _Images()
    parser.feed(page)
    # Per variant: 4 charts and one overlay grid per category; plus the comparison plot.
    assert len(parser.sources) == len(VARIANTS) * (len(CHARTS) + len(SYNTHETIC_CATEGORIES)) + 1
    for source in parser.sources:
        head, _, payload = source.partition(",")
        assert head in ("data:image/png;base64", "data:image/jpeg;base64"), source[:60]
        data = base64.b64decode(payload, validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n" if "png" in head else b"\xff\xd8\xff")
    assert parser.scripts == 0
    assert all(link.startswith("#") for link in parser.links), parser.links  # in-page anchors only
    assert "http://" not in page and "https://" not in page
    for variant in VARIANTS:
        assert f'id="{variant}"' in page
    assert "Global bank rows kept per client" in page and "worst false alarm" in page


@pytest.mark.slow
def test_report_names_the_parameters_and_the_dataset_versions_it_read(kedro_project, federated_run):
    page = RUN_REPORT["page"].read_text()
    run_version = RUN_REPORT["metrics"].parent.name
    assert f"run {run_version}" in page
    # The datasets table lists what the run read, with the version read (this run's own).
    for name in ("metrics_federated", "federated.memory_bank", "federated.roc_plot", "comparison_table"):
        assert re.search(rf"<td>{re.escape(name)}</td>\s*<td>{re.escape(run_version)}</td>", page), name
    assert "&quot;overlays_per_group&quot;: 2" in page  # the run's parameters


@pytest.mark.slow
def test_report_pipeline_rebuilds_the_page_from_persisted_results(kedro_project, federated_run):
    before = kedro_project.versions("data/08_reporting/report.html")
    kedro_project.run(pipeline_names=["report"])
    assert len(kedro_project.versions("data/08_reporting/report.html")) == len(before) + 1
    for variant in VARIANTS:
        for chart in CHARTS:
            assert _latest(kedro_project.path / f"data/08_reporting/{variant}/{chart}").read_bytes()[:4] == b"\x89PNG"
        curves = json.loads(_latest(kedro_project.path / f"data/08_reporting/{variant}/curves.json").read_text())
        assert set(curves["categories"]) == set(SYNTHETIC_CATEGORIES)


# --------------------------------------------------------------------------------------- explain


@pytest.fixture(scope="module")
def explained(kedro_project, federated_run):
    """The explanation, asked by the first client that holds metal_plate images (only a client that
    holds the category may ask; with 4 tiny images per category, not every IID client does)."""
    index = federated_run.load("dataset_index")
    defective = index[(index["split"] == "test") & (index["label"] == 1) & (index["category"] == "metal_plate")]
    image = defective.iloc[0]
    holders = [
        cid
        for cid in IID_CLIENTS
        if LocalCoreset.from_arrays(federated_run.load(f"{EXPLAINED_VARIANT}.client_{cid}.local_coreset")).image_keys.get("metal_plate")
    ]
    asking = holders[0]
    params = {"explain": {"image": image["image_path"], "variant": EXPLAINED_VARIANT, "client": asking}}
    _, catalog = kedro_project.run(params, pipeline_names=["explain"])
    return image, catalog, asking


@pytest.mark.slow
def test_explain_finds_the_banks_nearest_rows(explained, federated_run):
    image, catalog, _ = explained
    explanation = catalog.load("explain.explanation")
    arrays = catalog.load("explain.arrays")
    bank = CategoryBanks.from_arrays(federated_run.load(f"{EXPLAINED_VARIANT}.memory_bank")).banks["metal_plate"]
    assert explanation["key"] == image["key"] and explanation["label"] == 1
    # The score explained is the score the run reported for that image.
    scores = federated_run.load(f"{EXPLAINED_VARIANT}.image_scores").set_index("key")["image_score"]
    assert explanation["image_score"] == pytest.approx(scores[image["key"]], rel=1e-4)
    assert explanation["image_score"] == pytest.approx(float(arrays["anomaly_map"].max()), rel=1e-6)

    from fedpatchcore.core.features.extraction import make_embedder

    params = catalog.load(f"params:variants.{EXPLAINED_VARIANT}")
    embedder = make_embedder(params["backbone"], params["extraction"])
    features = embedder.embed(arrays["image"][None])[0]
    patch_scores = np.linalg.norm(features[:, :, None, :] - bank[None, None], axis=-1).min(axis=-1)
    top = np.argsort(-patch_scores.ravel(), kind="stable")[: len(explanation["patches"])]
    assert [tuple(p["patch"]) for p in explanation["patches"]] == [divmod(int(i), patch_scores.shape[1]) for i in top]
    for patch in explanation["patches"]:
        y, x = patch["patch"]
        brute = np.linalg.norm(bank - features[y, x], axis=1)
        expected = np.argsort(brute, kind="stable")[: len(patch["neighbours"])]
        assert [n["bank_row"] for n in patch["neighbours"]] == expected.tolist()
        assert [n["distance"] for n in patch["neighbours"]] == pytest.approx(brute[expected], rel=1e-4)


def _client_crop(catalog, client: str, row: int, explanation) -> np.ndarray:
    """The pixels a client's local-coreset row came from, read the way only that client could."""
    local = LocalCoreset.from_arrays(catalog.load(f"{EXPLAINED_VARIANT}.client_{client}.local_coreset"))
    image_index, y, x = local.patch_source["metal_plate"][row]
    key = local.image_keys["metal_plate"][image_index]
    index = catalog.load("dataset_index").set_index("key")
    info = category_info_from_dict(catalog.load("category_info")["metal_plate"])
    pixels = load_image(index.loc[key, "image_path"], info.image_size)
    return patch_crop(pixels, int(y), int(x), explanation["stride"], explanation["crop_size"])


@pytest.mark.slow
def test_explain_provenance_names_client_and_position_and_shows_only_the_askers_pixels(explained, federated_run):
    _, catalog, asking = explained
    explanation = catalog.load("explain.explanation")
    crops = catalog.load("explain.crops")
    bank = CategoryBanks.from_arrays(federated_run.load(f"{EXPLAINED_VARIANT}.memory_bank"))
    origin, origin_row = bank.origin["metal_plate"], bank.origin_row["metal_plate"]
    neighbours = [n for p in explanation["patches"] for n in p["neighbours"]]
    others = [n for n in neighbours if n["client"] != asking]
    assert others, "every nearest row came from the asking client: the test would check nothing"
    assert len(others) < len(neighbours), "no nearest row came from the asking client: its pixels go unchecked"

    for neighbour in neighbours:
        row = neighbour["bank_row"]
        assert (neighbour["client"], neighbour["client_row"]) == (str(origin[row]), int(origin_row[row]))
        local = LocalCoreset.from_arrays(catalog.load(f"{EXPLAINED_VARIANT}.client_{neighbour['client']}.local_coreset"))
        assert neighbour["patch"] == local.patch_source["metal_plate"][neighbour["client_row"]][1:].tolist()

    # Pixels: the explained image's own patches and the asking client's own rows, nothing else.
    assert all(key.startswith(("query/", f"{asking}/")) for key in crops)
    for neighbour in neighbours:
        if neighbour["client"] == asking:
            own = _client_crop(catalog, asking, neighbour["client_row"], explanation)
            assert np.array_equal(crops[neighbour["crop"]], own)
        else:
            assert neighbour["crop"] is None and neighbour["image"] is None
            theirs = _client_crop(catalog, neighbour["client"], neighbour["client_row"], explanation)
            assert not any(np.array_equal(crop, theirs) for crop in crops.values())
    # The only other pixels written are the explained image itself.
    arrays = catalog.load("explain.arrays")
    colour = [name for name, array in arrays.items() if array.ndim == 3]
    assert colour == ["image"]
    info = category_info_from_dict(catalog.load("category_info")["metal_plate"])
    assert np.array_equal(arrays["image"], load_image(explanation["image"], info.image_size))


@pytest.mark.slow
def test_explain_writes_its_figure_and_shap_values(kedro_project, explained):
    _, catalog, _ = explained
    explanation = catalog.load("explain.explanation")
    arrays = catalog.load("explain.arrays")
    figure = catalog.load("explain.figure")
    assert figure[:4] == b"\x89PNG"
    shap = explanation["shap"]
    # Its background: the top patch's 10 nearest bank rows (shap_background), the shown ones first.
    assert len(shap["background_rows"]) == 10
    top_neighbours = [n["bank_row"] for n in explanation["patches"][0]["neighbours"]]
    assert shap["background_rows"][: len(top_neighbours)] == top_neighbours
    # Efficiency: the values sum to the distance SHAP explained minus the base value. The model and
    # the reported distance are one float64 function (knn.exact_nearest_distances), so only float64
    # summation error remains, not faiss' batch-dependent float32 rounding (~1e-4 relative).
    assert shap["base_value"] + float(arrays["shap_values"].sum()) == pytest.approx(shap["patch_distance"], rel=1e-9)
    assert arrays["gradcam"].shape == arrays["anomaly_map"].shape == arrays["image"].shape[:2]
    assert (kedro_project.path / "data/08_reporting/explain/explanation.png").is_dir()


@pytest.mark.slow
def test_explain_names_the_variants_when_asked_for_an_unknown_one(kedro_project, federated_run):
    with pytest.raises(Exception, match="federated_iid"):
        kedro_project.run({"explain": {"image": "x.png", "variant": "nope"}}, pipeline_names=["explain"])


@pytest.mark.slow
def test_explain_refuses_a_category_or_a_client_that_contradicts_the_run(kedro_project, federated_run):
    # Both used to be accepted: the image explained against another category's bank, or an
    # "asking" client that holds none of the category's images.
    index = federated_run.load("dataset_index")
    image = index[(index["split"] == "test") & (index["category"] == "metal_plate")].iloc[0]["image_path"]
    with pytest.raises(InputError, match=r"explain.category 'woven_fabric' contradicts dataset_index, where .* is an image of 'metal_plate'"):
        kedro_project.run({"explain": {"image": image, "category": "woven_fabric"}}, pipeline_names=["explain"])
    # The main variant's category layout: client textile holds woven_fabric only.
    with pytest.raises(InputError, match=r"explain.client 'textile' does not hold category 'metal_plate' in variant 'federated'.*that hold it: \['metal'"):
        kedro_project.run({"explain": {"image": image, "client": "textile"}}, pipeline_names=["explain"])


# --------------------------------------------------------------------------------------- kedro viz


@pytest.mark.slow
def test_kedro_viz_build_shows_every_registered_pipeline_and_previews_the_plots(kedro_project, federated_run):
    from fedpatchcore.config_loader import project_parameters
    from fedpatchcore.pipeline_registry import create_pipelines

    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = shutil.which("kedro", path=str(Path(sys.executable).parent)) or "kedro"
    result = subprocess.run(
        [kedro, "viz", "build", "--include-previews"],
        cwd=kedro_project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    api = kedro_project.path / "build" / "api"

    parameters = project_parameters(kedro_project.path / "conf")  # the project's own conf, as viz read it
    registered = create_pipelines(parameters)
    for name, registered_pipeline in registered.items():
        built = json.loads((api / "pipelines" / name).read_text())
        shown = {n.get("full_name") or n["name"] for n in built["nodes"] if n["type"] == "task"}
        missing = {n.name for n in registered_pipeline.nodes} - shown
        assert not missing, f"pipeline {name}: nodes not in the viz build: {sorted(missing)[:5]}"

    # Every client lane is its own box (modular pipeline) of the federated pipeline.
    federated = json.loads((api / "pipelines" / "federated").read_text())
    lanes = set(federated["modular_pipelines"])
    for variant in structure.federated_variants(parameters):
        for cid in variant.client_ids:
            assert f"{variant.name}.client_{cid}" in lanes

    # The report's plots are matplotlib datasets that viz previews as images.
    main = json.loads((api / "main").read_text())
    ids = {n["name"]: n["id"] for n in main["nodes"] if n["type"] == "data"}
    for name in ("federated.roc_plot", "federated.spro_plot", "federated.bank_contributions_plot", "federated.overlays"):
        metadata = json.loads((api / "nodes" / ids[name]).read_text())
        assert metadata.get("preview_type") == "ImagePreview", (name, metadata.get("preview_type"))
        assert base64.b64decode(metadata["preview"])[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------- chromium


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_opens_offline_in_headless_chromium(kedro_project, federated_run, tmp_path):
    from scripts.screenshot import screenshot

    page = _latest(kedro_project.path / "data/08_reporting/report.html")
    shot = screenshot(page.as_uri(), tmp_path / "report.png", width=1280, height=2400)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").resize((64, 120)).getcolors(64 * 120)
    assert colours is not None and len(colours) > 50  # tables and overlays, not a blank page
