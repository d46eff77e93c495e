"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from fedpatchcore.hooks import PipelineStructureHook

# The per-client lanes of the federated pipeline depend on parameters (how many clients, which
# layout); this hook hands the run's parameters to the pipeline registry before it builds them.
HOOKS = (PipelineStructureHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
