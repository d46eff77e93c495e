"""Kedro project settings."""

from fedpatchcore.config_loader import ProjectConfigLoader
from fedpatchcore.hooks import NodeTimingHook, ParameterValidationHook, PipelineStructureHook, RunLockHook
from fedpatchcore.provenance import RunProvenanceHook

# PipelineStructureHook: the per-client lanes depend on parameters (how many clients, which
# layout), so it hands the run's parameters to the pipeline registry before it builds them.
# NodeTimingHook: logs each node's wall time (and feeds benchmarks/end_to_end.py).
# ParameterValidationHook: checks every parameter (and the dataset layout) before any node runs.
# RunLockHook: one run at a time per project data/ folder; removes scratch of unfinished runs.
# RunProvenanceHook: records which version of each dataset the run read (for the HTML report).
HOOKS = (PipelineStructureHook(), NodeTimingHook(), ParameterValidationHook(), RunLockHook(), RunProvenanceHook())

# Parameters merge key by key (environment over base, --params over both) and carry every
# variant's resolved parameters under `variants` (see config_loader.py).
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
