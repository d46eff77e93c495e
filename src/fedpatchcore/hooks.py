"""Project hooks."""

from __future__ import annotations

import logging
import time

from kedro.framework.hooks import hook_impl

from fedpatchcore import structure

logger = logging.getLogger(__name__)


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


class NodeTimingHook:
    """Logs how long each node took and, at the end of a run, the slowest stages.

    ``timings`` (node name -> seconds) of the last run stays readable in-process; the
    end-to-end benchmark (benchmarks/end_to_end.py) reads it.
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._started: dict[str, float] = {}

    @hook_impl
    def before_pipeline_run(self) -> None:
        self.timings = {}

    @hook_impl
    def before_node_run(self, node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node) -> None:
        elapsed = time.perf_counter() - self._started.pop(node.name, time.perf_counter())
        self.timings[node.name] = elapsed
        logger.info("%s took %.1f s", node.name, elapsed)

    @hook_impl
    def after_pipeline_run(self) -> None:
        slowest = sorted(self.timings.items(), key=lambda item: -item[1])[:5]
        logger.info(
            "Run took %.1f s in nodes; slowest: %s",
            sum(self.timings.values()),
            ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest),
        )
