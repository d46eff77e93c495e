"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from fedpatchcore.hooks import NodeTimingHook, PipelineStructureHook

# PipelineStructureHook: the per-client lanes depend on parameters (how many clients, which
# layout), so it hands the run's parameters to the pipeline registry before it builds them.
# NodeTimingHook: logs each node's wall time (and feeds benchmarks/end_to_end.py).
HOOKS = (PipelineStructureHook(), NodeTimingHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
