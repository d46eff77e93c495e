"""A throwaway Kedro project in a temporary folder, so pipeline tests never touch the repo's data/.

The project is the repo's ``pyproject.toml`` and ``conf/`` copied next to an empty ``src/``
(the package itself is installed in the venv). Relative catalog paths (``data/...``) resolve
against the session's project path; relative *parameter* paths (``dataset.root``,
``extraction.scratch_dir``) resolve against the working directory, so the tests chdir there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny images and few of them: a centralized run takes a few seconds.
TINY_PARAMS: dict[str, Any] = {
    "dataset": {
        "root": "data/01_raw/synthetic",
        "synthetic": {"image_size": [64, 64], "n_train": 4, "n_test_good": 2, "n_test_per_defect": 1},
    },
    "extraction": {"batch_size": 4, "num_threads": 1, "num_workers": 1},
    "scoring": {"batch_size": 4},
    "coreset": {"ratio": 0.2},
    # MLflow tracking only where a test asks for it (tests/pipelines/test_tracking_run.py): opening
    # a fresh SQLite store costs seconds per session.
    "mlflow": {"enabled": False},
}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (as Kedro merges runtime params)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class KedroProject:
    path: Path

    def session(self, runtime_params: dict[str, Any] | None = None):
        from kedro.framework.session import KedroSession

        return KedroSession.create(
            project_path=self.path, runtime_params=merged(TINY_PARAMS, runtime_params or {})
        )

    def run(self, runtime_params: dict[str, Any] | None = None, **run_args):
        """Run once in a fresh session; returns (free outputs, a catalog of that run's config)."""
        with self.session(runtime_params) as session:
            context = session.load_context()
            outputs = session.run(**run_args)
            return outputs, context.catalog

    def versions(self, relative: str) -> list[str]:
        """Version folders of a versioned dataset at ``data/...`` (sorted, oldest first)."""
        folder = self.path / relative
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def kedro_project(tmp_path_factory) -> Iterator[KedroProject]:
    from kedro.framework.startup import bootstrap_project

    path = tmp_path_factory.mktemp("project")
    shutil.copy(REPO_ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    (path / "src").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        bootstrap_project(path)
        yield KedroProject(path)


# --------------------------------------------------------------------------- in-memory slices


def project_parameters(runtime_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repo's conf/base parameters with ``runtime_params`` applied, as `kedro run --params` would.

    Read with the project's own config loader (so ``variants`` is filled in); conf/local is
    ignored, so a developer's local overrides never change a test.
    """
    from fedpatchcore.config_loader import ProjectConfigLoader

    loader = ProjectConfigLoader(
        str(REPO_ROOT / "conf"), base_env="base", default_run_env="base", runtime_params=runtime_params or {}
    )
    return loader["parameters"]


def memory_catalog(parameters: dict[str, Any], keep: tuple[str, ...] = (), **datasets: Any):
    """A DataCatalog holding ``datasets`` and every ``params:<path>`` as Kedro would add them.

    ``keep`` names intermediate datasets to read after the run (the runner otherwise releases
    in-memory data once no node needs it).
    """
    from kedro.io import DataCatalog, MemoryDataset

    class KeptMemoryDataset(MemoryDataset):
        def _release(self) -> None:
            pass

    catalog = DataCatalog()
    for name in keep:
        catalog[name] = KeptMemoryDataset()

    def add(prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            catalog[f"{prefix}{key}"] = value
            if isinstance(value, dict):
                add(f"{prefix}{key}.", value)

    add("params:", parameters)
    # A slice without the run-level close_privacy_ledger node: its publish nodes read the
    # sites' ledgers as they are (a slice that has the node overwrites this).
    catalog["privacy_ledger_state"] = {}
    for name, value in datasets.items():
        catalog[name] = value
    return catalog


def run_slice(pipeline, catalog, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``pipeline`` on ``catalog`` with the SequentialRunner; its free outputs and ``keep``, loaded."""
    from kedro.runner import SequentialRunner

    outputs = SequentialRunner().run(pipeline, catalog)
    loaded = {name: dataset.load() for name, dataset in outputs.items()}
    loaded.update({name: catalog.load(name) for name in keep})
    return loaded


def _indexed_dataset(root: Path, runtime_params: dict[str, Any]) -> dict[str, Any]:
    from fedpatchcore.pipelines.ingest import nodes as ingest

    dataset = {**project_parameters(runtime_params)["dataset"], "root": str(root)}
    raw = ingest.prepare_raw_dataset(dataset, seed=0)
    index, infos, skipped = ingest.index_raw_dataset(raw, dataset)
    # No label noise: nothing is set aside and every test image is evaluated.
    return {
        "dataset_index": index,
        "category_info": infos,
        "skipped_files": skipped,
        "label_noise_pool": {},
        "evaluation_index": index,
    }


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory) -> dict[str, Any]:
    """The embedded default dataset (as `kedro run` generates it), indexed: dataset_index, category_info, skipped_files."""
    return _indexed_dataset(tmp_path_factory.mktemp("default_dataset") / "synthetic", {})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> dict[str, Any]:
    """The tiny dataset of TINY_PARAMS (64 px, 4 training images per category), indexed."""
    return _indexed_dataset(tmp_path_factory.mktemp("tiny_dataset") / "synthetic", TINY_PARAMS)
