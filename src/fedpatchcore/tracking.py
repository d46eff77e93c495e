"""Run tracking in MLflow through kedro-mlflow: one MLflow run per ``kedro run``, one nested run per variant.

kedro-mlflow's hook registers itself for every Kedro project in the environment once the plugin is
installed; ``settings.py`` switches that automatic registration off and registers
:class:`MlflowTrackingHook` instead, which drives the plugin's own hook (its ``mlflow.yml``
configuration, its MLflow run around the pipeline, ``kedro mlflow ui``) and adds what a
comparison of runs needs:

* the store: ``conf/base/mlflow.yml`` names a SQLite file (``sqlite:///mlruns/mlflow.db``, a
  path relative to the *project*, not to the working directory) and the artifact folder
  ``mlruns/artifacts``; both are git-ignored. ``MLFLOW_TRACKING_URI`` in the environment takes
  precedence (a shared tracking server);
* the experiment: ``fedpatchcore`` for the base configuration, ``fedpatchcore/<env>`` for
  ``kedro run --env <env>`` (``--env robustness`` lands as one experiment, its runs side by side),
  unless ``mlflow.yml`` names one;
* the run (parent): every run parameter but the per-variant copies, flattened
  (``coreset.ratio``), tags ``kedro_env``, ``experiment`` (``comparison.name``) and the plugin's
  own (pipeline, command); artifacts: ``report.html`` and the experiment's table, plot and
  analysis (``<comparison.name>.csv`` ...);
* one nested run per variant whose ``metrics_<variant>`` the run published: the variant's
  resolved parameters flattened, its own overrides as tag ``overrides``
  (``federation.partition=iid``) and its table labels as tags, every number of
  ``metrics_<variant>.json`` as a metric (``mean.image_auroc``, ``categories.<c>.aucspro.0.05``,
  ``communication.uploaded_bytes``, ``clients.<id>.privacy.epsilon``, ...), and the JSON itself.

Parameters are logged once per run in batches rather than by the plugin's per-node hook (one
store write per parameter per node input). Tracking is switched off with
``--params mlflow.enabled=false``, or for some pipelines by the plugin's own
``tracking.disable_tracking.pipelines``. A store that cannot be created, opened or written
(missing folder that cannot be made, read-only database, unreachable server) never stops a
run: a warning says why and the run goes on untracked. The store is opened (and ``mlflow``
imported) only when a pipeline runs: a context that runs none (``kedro viz``, a notebook, a
Flower app reading the catalog) never touches it. Nothing here is imported by ``core/``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from fedpatchcore import structure

logger = logging.getLogger(__name__)

#: Parameter block of the switch (``conf/base/parameters_tracking.yml``).
SETTINGS_BLOCK = "mlflow"
#: Experiment name of the base configuration (with ``--env X``: ``<name>/X``).
PROJECT_EXPERIMENT = "fedpatchcore"
#: Kedro environments that are not experiments of their own (the default run environment).
DEFAULT_ENVS = (None, "", "base", "local")
#: Published metrics datasets: ``metrics_<variant>`` (catalog factory ``metrics_{variant}``).
METRICS_PREFIX = "metrics_"
#: Datasets kept as artifacts of the parent run: the report page and the experiment's table,
#: plot and analysis (``{experiment}`` is ``comparison.name``).
RUN_ARTIFACTS = ("report_html", "{experiment}_table", "{experiment}_plot", "{experiment}_analysis")
#: MLflow's batch limits (``log_batch``: 100 parameters, 1000 metrics per call).
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
#: MLflow's longest parameter value; longer values (long lists) are cut and say so.
MAX_PARAM_LENGTH = 6000
_SQLITE = "sqlite:///"


# --------------------------------------------------------------------------- pure helpers


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)``: the leaves of nested mappings, keys joined by dots."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def numeric_leaves(values: Mapping[str, Any]) -> dict[str, float]:
    """Every number of a published metrics document (booleans as 0/1; nulls and lists left out)."""
    return {
        key: float(value)
        for key, value in flatten(values)
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))
    }


def param_values(values: Mapping[str, Any]) -> dict[str, str]:
    """Flattened parameters as MLflow parameter strings (``None`` -> ``"None"``, long values cut)."""
    out = {}
    for key, value in flatten(values):
        text = str(value)
        if len(text) > MAX_PARAM_LENGTH:
            logger.warning("MLflow parameter %s (%d characters) is cut to %d", key, len(text), MAX_PARAM_LENGTH)
            text = text[:MAX_PARAM_LENGTH]
        out[key] = text
    return out


def experiment_name(env: str | None, configured: str | None = None) -> str:
    """``fedpatchcore`` for the base configuration, ``fedpatchcore/<env>`` for ``--env <env>``."""
    if configured:
        return configured
    return PROJECT_EXPERIMENT if env in DEFAULT_ENVS else f"{PROJECT_EXPERIMENT}/{env}"


def store_uri(uri: str, project_path: str | Path) -> str:
    """A ``sqlite:///<relative path>`` store resolved against the project folder; other URIs as they are."""
    if not uri.startswith(_SQLITE):
        return uri
    relative = uri[len(_SQLITE) :]
    if relative.startswith(("/", "file:")) or relative in ("", ":memory:"):  # absolute, an SQLite URI, in memory
        return uri
    return _SQLITE + str((Path(project_path) / relative).resolve())


def make_store_folder(uri: str) -> None:
    """Create the folder of an SQLite store file (``sqlite:////abs/path/mlflow.db``) if missing."""
    if uri.startswith(_SQLITE + "/"):
        Path(uri[len(_SQLITE) :]).parent.mkdir(parents=True, exist_ok=True)


def variant_overrides(parameters: Mapping[str, Any], variant: str) -> tuple[dict[str, str], dict[str, str]]:
    """(``comparison.variants.<variant>``'s parameter overrides flattened, its labels) of one variant."""
    comparison = parameters.get("comparison") or {}
    override = dict(((comparison.get("variants") or {}).get(variant)) or {})
    labels = dict(override.pop("labels", None) or (comparison.get("labels") or {}).get(variant) or {})
    return param_values(override), {str(k): str(v) for k, v in labels.items()}


# --------------------------------------------------------------------------- the hook


class _PluginConfig:
    """``context.mlflow`` until a run opens the store: kedro-mlflow's validated configuration,
    built on first use (``kedro mlflow ui`` reads the UI's host and port and the store's URI)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._validated = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._validated is None:
            from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig

            self._validated = KedroMlflowConfig.model_validate(self._config)
        return getattr(self._validated, name)


class MlflowTrackingHook:
    """Drives kedro-mlflow's hook and logs variants, metrics and artifacts (see the module doc)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._plugin = None  # kedro-mlflow's MlflowHook while this run is tracked
        self._config: dict[str, Any] | None = None  # its configuration (mlflow.yml resolved) when tracking is on
        self._context = None
        self._client = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._parameters: dict[str, Any] = {}
        self._artifacts: set[str] = set()

    def _off(self, when: str, error: BaseException) -> None:
        logger.warning(
            "MLflow tracking is off for the rest of this run (%s failed: %s: %s); the run goes on. "
            "Check the store in conf/base/mlflow.yml (or MLFLOW_TRACKING_URI), or switch tracking off "
            "with --params mlflow.enabled=false",
            when,
            type(error).__name__,
            error,
        )
        self._client = self._run_id = None  # the plugin still tries to close its run

    # -- set-up: the plugin's configuration with a project-relative store, opened only for a run

    @hook_impl
    def after_context_created(self, context) -> None:
        self._reset()
        parameters = context.config_loader["parameters"]
        if not (parameters.get(SETTINGS_BLOCK) or {}).get("enabled", True):
            logger.info("MLflow tracking is off (mlflow.enabled: false)")
            return
        try:
            loader = context.config_loader
            loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
            config = dict(loader["mlflow"])
            server = dict(config.get("server") or {})
            server["mlflow_tracking_uri"] = store_uri(
                os.environ.get("MLFLOW_TRACKING_URI") or server.get("mlflow_tracking_uri") or "", context.project_path
            )
            tracking = dict(config.get("tracking") or {})
            experiment = dict(tracking.get("experiment") or {})
            experiment["name"] = experiment_name(context.env, experiment.get("name"))
        except Exception as error:  # noqa: BLE001 - a broken mlflow.yml must not stop the run
            self._off("reading mlflow.yml", error)
            return
        self._context, self._env = context, context.env
        self._config = {**config, "server": server, "tracking": {**tracking, "experiment": experiment}}
        # Contexts that run no pipeline (kedro viz, notebooks, a Flower app reading the catalog)
        # never import mlflow nor touch the store; `kedro mlflow ui` reads context.mlflow.
        context.__setattr__("mlflow", _PluginConfig(self._config))

    def _open_store(self):
        """kedro-mlflow's hook, set up on this run's configuration: creates the store and experiment."""
        make_store_folder(self._config["server"]["mlflow_tracking_uri"])
        from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

        self._context.config_loader["mlflow"] = self._config
        plugin = MlflowHook()
        plugin.after_context_created(self._context)
        return plugin

    # -- the run: the plugin starts it; parameters and tags once, in batches

    @hook_impl(trylast=True)  # after the parameter check and the run lock: a refused run is never started
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._config is None:
            return
        try:
            self._plugin = self._open_store()
        except Exception as error:  # noqa: BLE001 - an unusable store must not stop the run
            self._off("opening the MLflow store", error)
            return
        try:
            import mlflow

            names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
            run_config = self._plugin.mlflow_config.tracking.run
            if run_config.name is None:  # the variants' nested runs carry the variant names
                run_config.name = f"kedro run --pipeline {'+'.join(names)}"
            self._plugin.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
            if not self._plugin._is_mlflow_enabled:  # the plugin's disable_tracking.pipelines
                return
            run = mlflow.active_run()
            self._run_id, self._experiment_id = run.info.run_id, run.info.experiment_id
            self._client = mlflow.MlflowClient(tracking_uri=mlflow.get_tracking_uri())
            self._parameters = catalog.load("parameters")
            shared = {k: v for k, v in self._parameters.items() if k != structure.VARIANTS_KEY}
            experiment = (self._parameters.get("comparison") or {}).get("name", "comparison")
            self._log(self._run_id, params=param_values(shared), tags={"kedro_env": str(self._env), "experiment": experiment})
            self._artifacts = {name.format(experiment=experiment) for name in RUN_ARTIFACTS}
        except Exception as error:  # noqa: BLE001
            self._off("starting the MLflow run", error)

    def _log(self, run_id: str, params=None, metrics=None, tags=None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in (params or {}).items()]
        metrics = [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=params[start : start + PARAMS_PER_BATCH])
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    # -- results: a nested run per published variant, the report and tables as artifacts

    def _variant_names(self) -> set[str]:
        return {structure.CENTRALIZED, *(self._parameters.get(structure.VARIANTS_KEY) or {})}

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if self._client is None:
            return
        try:
            variant = dataset_name.removeprefix(METRICS_PREFIX)
            if dataset_name.startswith(METRICS_PREFIX) and variant in self._variant_names():
                self._log_variant(variant, data)
            elif dataset_name in self._artifacts:
                self._log_artifact(dataset_name, data)
        except Exception as error:  # noqa: BLE001
            self._off(f"logging {dataset_name} to MLflow", error)

    def _log_variant(self, variant: str, published: Mapping[str, Any]) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        overrides, labels = variant_overrides(self._parameters, variant)
        resolved = dict((self._parameters.get(structure.VARIANTS_KEY) or {}).get(variant) or {})
        resolved.pop(SETTINGS_BLOCK, None)
        tags = {
            MLFLOW_PARENT_RUN_ID: self._run_id,
            "variant": variant,
            "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(none)",
            **{f"label.{k}": v for k, v in labels.items()},
        }
        child = self._client.create_run(self._experiment_id, run_name=variant, tags=tags).info.run_id
        self._log(child, params=param_values(resolved), metrics=numeric_leaves(published))
        self._client.log_dict(child, dict(published), f"{METRICS_PREFIX}{variant}.json")
        self._client.set_terminated(child, "FINISHED")

    def _log_artifact(self, name: str, data: Any) -> None:
        if isinstance(data, str):
            self._client.log_text(self._run_id, data, "report.html" if name == "report_html" else f"{name}.txt")
        elif hasattr(data, "to_csv"):
            self._client.log_text(self._run_id, data.to_csv(index=False), f"{name.removesuffix('_table')}.csv")
        elif hasattr(data, "savefig"):
            self._client.log_figure(self._run_id, data, f"{name.removesuffix('_plot')}.png")
        elif isinstance(data, Mapping):
            self._client.log_dict(self._run_id, dict(data), f"{name}.json")

    # -- the end: the plugin closes the run

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._plugin is None:
            return
        try:
            self._plugin.after_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
        except Exception as error:  # noqa: BLE001
            self._off("closing the MLflow run", error)
        self._reset()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self._plugin is None:
            return
        try:
            self._plugin.on_pipeline_error(error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)
        except Exception as failure:  # noqa: BLE001
            self._off("closing the failed MLflow run", failure)
        self._reset()
