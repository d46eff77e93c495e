"""One `kedro run` of the embedded default (full size) in a throwaway project, then what people look
at on it: both notebooks executed (nbclient), and `explain` on a defective test image.

Slow (a full default run, then two kernels): marked ``slow``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.pipelines.conftest import REPO_ROOT

NOTEBOOKS = ["01_data_exploration.ipynb", "02_results_analysis.ipynb"]


@pytest.fixture(scope="module")
def default_project(tmp_path_factory):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    path = tmp_path_factory.mktemp("default_project")
    shutil.copy(REPO_ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    (path / "src").mkdir()
    shutil.copytree(REPO_ROOT / "notebooks", path / "notebooks")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        bootstrap_project(path)
        with KedroSession.create(project_path=path) as session:
            session.run()  # `kedro run`: the default pipeline on the embedded default dataset
        yield path


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_the_catalog_of_a_default_run(default_project, name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    folder = default_project / "notebooks"
    notebook = nbformat.read(folder / name, as_version=4)
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "%load_ext kedro.ipython" in sources
    assert "open(" not in sources and "read_csv" not in sources and "np.load" not in sources  # the catalog only
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))  # its plots


@pytest.mark.slow
def test_explain_works_on_a_defective_test_image_of_the_default(default_project):
    from kedro.framework.session import KedroSession

    image = next((default_project / "data/01_raw/synthetic/woven_fabric/test").glob("[!g]*/*.png"))  # not good/
    params = {"explain": {"image": str(image), "client": "textile"}}
    with KedroSession.create(project_path=default_project, runtime_params=params) as session:
        session.run(pipeline_names=["explain"])
    folder = default_project / "data/08_reporting/explain/explanation.json"
    explanation = json.loads(next(folder.glob("*/explanation.json")).read_text())
    assert explanation["category"] == "woven_fabric" and explanation["label"] == 1
    assert explanation["asking_client"] == "textile"
    neighbours = [n for p in explanation["patches"] for n in p["neighbours"]]
    assert {n["client"] for n in neighbours} <= {"textile", "qc"}  # the clients holding woven fabric
    assert all((n["crop"] is None) == (n["client"] != "textile") for n in neighbours)
    assert Path(next((default_project / "data/08_reporting/explain/explanation.png").glob("*/*.png"))).stat().st_size
