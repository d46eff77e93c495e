"""Kedro project settings."""

from fedpatchcore.config_loader import BASE_ENV, DEFAULT_RUN_ENV, ProjectConfigLoader
from fedpatchcore.hooks import NodeTimingHook, ParameterValidationHook, PipelineStructureHook, RunLockHook
from fedpatchcore.provenance import RunProvenanceHook

# PipelineStructureHook: the per-client lanes depend on parameters (how many clients, which
# layout), so it hands the run's parameters to the config loader, which the pipeline registry
# reads them from when it builds the pipelines.
# NodeTimingHook: logs each node's wall time (and feeds benchmarks/end_to_end.py).
# ParameterValidationHook: checks every parameter (and the dataset layout) before any node runs.
# RunLockHook: one run at a time per project data/ folder; removes scratch of unfinished runs.
# RunProvenanceHook: records which version of each dataset the run read (for the HTML report).
HOOKS = (PipelineStructureHook(), NodeTimingHook(), ParameterValidationHook(), RunLockHook(), RunProvenanceHook())

# Parameters merge key by key (environment over base, --params over both) and carry every
# variant's resolved parameters under `variants` (see config_loader.py).
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": BASE_ENV,
    "default_run_env": DEFAULT_RUN_ENV,
}
