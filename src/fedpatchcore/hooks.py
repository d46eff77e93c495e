"""Project hooks."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from fedpatchcore import structure


class PipelineStructureHook:
    """Makes the run's parameters (conf env + ``--params``) shape the pipelines.

    Kedro builds pipelines in ``register_pipelines()``, which receives no parameters. The number
    of client lanes and rounds are parameters, so the context's merged parameters are stored
    before the session asks for its pipeline. Reading ``context.params`` here would itself build
    the pipelines (for parameter validation), hence the raw config loader.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        structure.use_parameters(context.config_loader["parameters"])
