"""The Kedro project a ServerApp (or a simulated ClientApp) serves: its parameters and catalog.

A Flower app gets the project from its run configuration (``flwr run ... --run-config
"project-path='/srv/fedpatchcore'"``, optionally ``env`` for ``conf/<env>`` and ``variant``):
the parameters are those ``kedro run`` would use there, and outputs are saved through that
project's catalog, so ``kedro run --pipeline evaluate`` finds them where it always looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpatchcore import structure
from fedpatchcore.structure import Variant

# Run-configuration keys of the Flower app (flower_app/pyproject.toml [tool.flwr.app.config]).
PROJECT_PATH = "project-path"
ENV = "env"
VARIANT = "variant"


@dataclass
class Project:
    path: Path
    parameters: dict[str, Any]
    catalog: Any  # kedro.io.DataCatalog

    def variant(self, name: str = structure.MAIN_VARIANT) -> Variant:
        variants = {v.name: v for v in structure.federated_variants(self.parameters)}
        if name not in variants:
            raise ValueError(f"run config {VARIANT}={name!r} is not a federated variant here; choose one of {sorted(variants)}")
        return variants[name]


def open_project(path: str | Path, env: str | None = None) -> Project:
    """Parameters and catalog of the Kedro project at ``path`` (conf/base + conf/<env or local>)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    path = Path(path).expanduser().resolve()
    if not (path / "conf").is_dir():
        raise FileNotFoundError(
            f"{PROJECT_PATH}={path} is not a fedpatchcore project (no conf/ folder); "
            f"pass --run-config \"{PROJECT_PATH}='/path/to/project'\" to flwr run"
        )
    bootstrap_project(path)
    with KedroSession.create(project_path=path, env=env or None) as session:
        context = session.load_context()
        return Project(path, context.config_loader["parameters"], context.catalog)


def project_from_run_config(run_config: Mapping[str, Any]) -> tuple[Project, Variant]:
    project = open_project(str(run_config.get(PROJECT_PATH, ".")), str(run_config.get(ENV, "") or "") or None)
    return project, project.variant(str(run_config.get(VARIANT, structure.MAIN_VARIANT)))
