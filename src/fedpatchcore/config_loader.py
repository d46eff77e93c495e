"""The project's config loader: parameters merge the way a user expects.

Kedro's default replaces a whole top-level block of ``conf/base`` by the block of the same name
in the run environment (``conf/local`` or ``--env X``), and merges ``--params`` into each of the
two before that, so a ``conf/local/parameters.yml`` holding only ``seed: 0`` changed what
``--params dataset.format=mvtec`` meant (the ``dataset`` block from ``--params`` then replaced
the base block, losing ``dataset.categories``). Here:

* an environment's parameters are deep-merged into ``conf/base`` key by key, except the
  dict-valued parameters keyed by user-chosen names (``federation.clients``,
  ``comparison.variants`` ...: :data:`fedpatchcore.structure.REPLACED_WHOLE`), which an
  environment file that sets them replaces whole;
* ``--params`` then apply on top, key by key, whatever the environment holds;
* the result gains ``variants``: every variant's complete parameters
  (:func:`fedpatchcore.structure.resolve_variants`), which the variants' nodes read.

This module owns the run's parameters. A Kedro session hands its resolved parameters over when
its context is created (``hooks.PipelineStructureHook`` -> :func:`use_run_parameters`), and
``pipeline_registry.register_pipelines()`` (Kedro calls it without arguments) shapes the
pipelines by :func:`run_parameters`: those, or, outside a run (``kedro viz``, a notebook), the
parameters ``kedro run`` would use in the working directory (:func:`project_parameters`).
Everything downstream (``structure``, the pipeline builders) takes parameters explicitly.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf

from fedpatchcore.structure import REPLACED_WHOLE, VARIANTS_KEY, merge_parameters, resolve_variants


def _sets(config: Any, path: tuple[str, ...]) -> bool:
    return OmegaConf.select(config, ".".join(path), default=None) is not None


class ProjectConfigLoader(OmegaConfigLoader):
    def _resolve_from_raw_config(self, key, base_configs, env_configs, base_path, env_path, processed_files):
        if key == "parameters":
            # Which name-keyed parameters the environment's own files set (not --params).
            self._env_replaces = {
                path for path in REPLACED_WHOLE if any(_sets(config, path) for config in env_configs.values())
            }
        return super()._resolve_from_raw_config(key, base_configs, env_configs, base_path, env_path, processed_files)

    def _merge_configs(self, config, env_config, key, env_path):
        if key != "parameters":
            return super()._merge_configs(config, env_config, key, env_path)
        return merge_parameters(config, env_config, replaced_whole=getattr(self, "_env_replaces", set()))

    def __getitem__(self, key: str) -> dict[str, Any]:
        explicitly_set = key in self
        value = super().__getitem__(key)
        if key != "parameters":
            return value
        if VARIANTS_KEY in value:
            if explicitly_set:
                return value
            raise ValueError(
                f"'{VARIANTS_KEY}' is a reserved parameter key (the project fills it with each variant's "
                "resolved parameters): describe variants under comparison.variants instead"
            )
        return {**value, VARIANTS_KEY: resolve_variants(value)}


# The environments: conf/base, and conf/local unless --env (or KEDRO_ENV) names another (settings.py uses these).
BASE_ENV = "base"
DEFAULT_RUN_ENV = "local"

_run_parameters: dict[str, Any] | None = None


def project_parameters(
    conf_source: str | Path | None = None, env: str | None = None, runtime_params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters ``kedro run`` would use: ``conf/base`` + the environment + ``runtime_params``.

    ``conf_source``: default ``./conf``; ``env``: default ``$KEDRO_ENV``, else ``conf/local``.
    """
    loader = ProjectConfigLoader(
        conf_source=str(conf_source or Path.cwd() / "conf"),
        base_env=BASE_ENV,
        default_run_env=DEFAULT_RUN_ENV,
        env=env or os.environ.get("KEDRO_ENV"),
        runtime_params=dict(runtime_params or {}),
    )
    return loader["parameters"]


def use_run_parameters(parameters: Mapping[str, Any]) -> bool:
    """Make ``parameters`` (a session's: conf environment + ``--params``) the run's; True if they changed."""
    global _run_parameters
    if parameters == _run_parameters:
        return False
    _run_parameters = copy.deepcopy(dict(parameters))
    return True


def run_parameters() -> dict[str, Any]:
    """The parameters of the run in this process, else those of the project in the working directory."""
    return _run_parameters if _run_parameters is not None else project_parameters()
