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
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from fedpatchcore import structure

    path = tmp_path_factory.mktemp("project")
    shutil.copy(REPO_ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    (path / "src").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        bootstrap_project(path)
        yield KedroProject(path)
    # The structure hook keeps the last run's parameters process-wide; forget them so later
    # tests build pipelines from the repo's own parameters again.
    structure._run_parameters = None
    pipelines.configure("fedpatchcore.pipeline_registry")
