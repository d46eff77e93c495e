"""Kedro project settings."""

from fedpatchcore.config_loader import BASE_ENV, DEFAULT_RUN_ENV, ProjectConfigLoader
from fedpatchcore.hooks import NodeTimingHook, ParameterValidationHook, PipelineStructureHook, RunLockHook
from fedpatchcore.provenance import RunProvenanceHook
from fedpatchcore.tracking import MlflowTrackingHook

# PipelineStructureHook: the per-client lanes depend on parameters (how many clients, which
# layout), so it hands the run's parameters to the config loader, which the pipeline registry
# reads them from when it builds the pipelines.
# NodeTimingHook: logs each node's wall time (and feeds benchmarks/end_to_end.py).
# ParameterValidationHook: checks every parameter (and the dataset layout) before any node runs.
# RunLockHook: one run at a time per project data/ folder; removes scratch of unfinished runs.
# RunProvenanceHook: records which version of each dataset the run read (for the HTML report).
HOOKS = (PipelineStructureHook(), NodeTimingHook(), ParameterValidationHook(), RunLockHook(), RunProvenanceHook())

# MLflow tracking: kedro-mlflow's hook would register itself (entry point) with its defaults (a
# file store under the working directory, which MLflow 3 refuses, no switch per run, a run that
# stops when the store is unusable); MlflowTrackingHook drives it instead (see tracking.py).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # its distribution name, either spelling
HOOKS = (*HOOKS, MlflowTrackingHook())

# Parameters merge key by key (environment over base, --params over both) and carry every
# variant's resolved parameters under `variants` (see config_loader.py).
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": BASE_ENV,
    "default_run_env": DEFAULT_RUN_ENV,
}
