"""The parts of the pipelines' shape that come from parameters: federated variants, clients, rounds.

``register_pipelines()`` gets no arguments, yet a 5-client layout needs 5 lanes. The
``PipelineStructureHook`` stores the run's merged parameters here (conf environment and
``--params``); before any run in this process (kedro viz, a notebook, tests that build
pipelines directly) the project's ``conf/base`` + ``conf/$KEDRO_ENV`` (default ``conf/local``)
parameters are read instead. After a run, its shape stays until the next run's parameters.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpatchcore.core.partition import client_ids_for

logger = logging.getLogger(__name__)

MAIN_VARIANT = "federated"

_run_parameters: dict[str, Any] | None = None


def use_parameters(parameters: dict[str, Any]) -> None:
    """Shape the next pipeline build by these parameters (a run's merged parameters)."""
    global _run_parameters
    if parameters == _run_parameters:
        return
    _run_parameters = dict(parameters)
    # Kedro caches the registered pipelines per process; rebuild them for the new shape.
    from kedro.framework.project import pipelines

    pipelines.configure("fedpatchcore.pipeline_registry")


def current_parameters() -> dict[str, Any]:
    if _run_parameters is not None:
        return _run_parameters
    from kedro.config import OmegaConfigLoader

    conf_source = Path.cwd() / "conf"
    # Same environment resolution as `kedro run`: KEDRO_ENV if set, else conf/local.
    loader = OmegaConfigLoader(
        conf_source=str(conf_source),
        base_env="base",
        default_run_env="local",
        env=os.environ.get("KEDRO_ENV"),
    )
    return loader["parameters"]


@dataclass(frozen=True)
class FederatedVariant:
    """One federated experiment run inside the pipeline: a partition of clients and its rounds."""

    name: str  # namespace of its datasets, e.g. "federated" or "federated_iid"
    federation: dict[str, Any]  # the `federation` parameters with this variant's overrides applied
    override_parameter: str | None  # "comparison.variants.<name>" for baselines, None for the main run

    @property
    def client_ids(self) -> list[str]:
        return client_ids_for(
            self.federation["partition"], self.federation.get("num_clients"), self.federation.get("clients")
        )

    @property
    def rounds(self) -> int:
        rounds = int(self.federation.get("rounds", 1))
        if rounds < 1:
            raise ValueError(f"federation.rounds must be at least 1 (variant {self.name}), got {rounds}")
        return rounds


def federated_variants(parameters: dict[str, Any] | None = None) -> list[FederatedVariant]:
    """The main federated run plus, when comparison is enabled, its baseline variants."""
    parameters = current_parameters() if parameters is None else parameters
    federation = dict(parameters["federation"])
    variants = [FederatedVariant(MAIN_VARIANT, federation, None)]
    comparison = parameters.get("comparison") or {}
    if comparison.get("enabled", False):
        for name, override in (comparison.get("variants") or {}).items():
            if name in (MAIN_VARIANT, "centralized"):
                raise ValueError(f"comparison.variants: '{name}' is reserved, choose another variant name")
            merged = {**federation, **(override or {})}
            variants.append(FederatedVariant(name, merged, f"comparison.variants.{name}"))
    return variants


def comparison_enabled(parameters: dict[str, Any] | None = None) -> bool:
    parameters = current_parameters() if parameters is None else parameters
    return bool((parameters.get("comparison") or {}).get("enabled", False))
