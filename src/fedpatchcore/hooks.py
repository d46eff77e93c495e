"""Project hooks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from fedpatchcore.config_loader import use_run_parameters
from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.layout_check import check_dataset_layout
from fedpatchcore.core.features.extraction import remove_stale_scratch
from fedpatchcore.params_schema import ParameterError, parameter_problems
from fedpatchcore.run_lock import RunLock, lock_path_for

logger = logging.getLogger(__name__)


class PipelineStructureHook:
    """Makes the run's parameters (conf env + ``--params``) shape the pipelines.

    Kedro builds pipelines in ``register_pipelines()``, which receives no parameters. The number
    of client lanes and rounds are parameters, so the context's merged parameters are handed to
    the config loader (their owner) before the session asks for its pipeline, and Kedro's cached
    pipelines are dropped when they changed. Reading ``context.params`` here would itself build
    the pipelines (for parameter validation), hence the raw config loader.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        if use_run_parameters(context.config_loader["parameters"]):
            # Kedro caches the registered pipelines per process; rebuild them for the new shape.
            from kedro.framework.project import pipelines

            pipelines.configure("fedpatchcore.pipeline_registry")


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


def _run_parameters(catalog) -> dict:
    """The run's merged parameters (conf environment + ``--params``) as the nodes will see them."""
    return catalog.load("parameters")


class ParameterValidationHook:
    """Checks the run's parameters, and the dataset folder they point at, before any node runs.

    A bad value used to surface only when its node ran (a ``coreset.ratio`` after the whole
    feature extraction, ``seed: "7"`` as a ``TypeError`` in round 2) and a broken dataset layout
    as an unrelated error at scoring or reporting. Here every problem is listed at once, named
    by its parameter path (``fedpatchcore.params_schema``) or file
    (``fedpatchcore.core.data.layout_check``), and the run stops before writing anything.

    The dataset layout is checked only when this run indexes the dataset (its pipeline makes
    ``dataset_index``); a run that starts from saved artifacts does not read ``dataset.root``.
    ``tryfirst``: it runs before the run lock is taken, so a rejected run never touches data/.

    The blocks that shape the pipelines (:data:`STRUCTURE_BLOCKS`: clients, rounds, variants,
    export) are checked already when the context is created: Kedro builds the pipelines from
    them before ``before_pipeline_run``, and a bad value would otherwise stop the build with an
    error that does not name the parameter.

    A run that starts from saved results (``predict``, ``explain``, ``evaluate``, ``report``,
    ``--from-nodes``) before any run saved them stops here too, with the command that makes
    them (:func:`missing_saved_inputs`, :func:`train_first`), instead of a ``DatasetError``
    traceback from the first node's load.
    """

    STRUCTURE_BLOCKS = ("federation", "comparison", "export")

    @hook_impl
    def after_context_created(self, context) -> None:
        problems = parameter_problems(context.config_loader["parameters"], blocks=self.STRUCTURE_BLOCKS)
        if problems:
            raise ParameterError(problems)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        params = _run_parameters(catalog)
        problems = parameter_problems(params)
        if not any(p.startswith("dataset") for p in problems) and "dataset_index" in pipeline.all_outputs():
            dataset = params["dataset"]
            problems += [
                f"dataset.root: {problem}"
                for problem in check_dataset_layout(dataset["format"], dataset["root"], dataset["categories"])
            ]
        if problems:
            raise ParameterError(problems)
        missing = missing_saved_inputs(pipeline, catalog)
        if missing:
            raise MissingInputError(train_first(missing, pipeline, params, run_params))


class MissingInputError(InputError):
    """A run reads saved results that no run has written yet."""


def _filepath(catalog, name: str) -> str | None:
    """The file ``name`` is configured to read or write (from the catalog's config: no dataset is built)."""
    return (catalog.config_resolver.resolve_pattern(name) or {}).get("filepath")


def missing_saved_inputs(pipeline, catalog) -> list[str]:
    """Datasets ``pipeline`` reads without making them, persisted by the catalog and not saved yet.

    An input that reads a file this pipeline writes under another name (``<experiment>_plot_png``
    reads ``<experiment>_plot``'s image) is made by this run: not missing.
    """
    missing = []
    for name in sorted(pipeline.inputs()):
        if name == "parameters" or name.startswith("params:"):
            continue
        dataset = catalog.get(name)
        if dataset is None or isinstance(dataset, MemoryDataset):
            continue  # not persisted: no earlier run could have made it
        try:
            saved = dataset.exists()
        except Exception:  # noqa: BLE001 - a dataset that cannot tell: its load will report it
            saved = True
        if not saved:
            missing.append(name)
    if missing:
        written = {_filepath(catalog, name) for name in pipeline.all_outputs()} - {None}
        missing = [name for name in missing if _filepath(catalog, name) not in written]
    return missing


def _smallest_pipeline_making(names: set[str]) -> str | None:
    """The registered pipeline with the fewest nodes that makes every dataset in ``names``."""
    from kedro.framework.project import pipelines

    makers = [(len(p.nodes), name) for name, p in pipelines.items() if name != "__default__" and names <= p.all_outputs()]
    return min(makers)[1] if makers else None


_NAMED = 6  # missing datasets named in the message; the command that makes them matters more


def train_first(missing: list[str], pipeline, params: dict, run_params: dict) -> str:
    """What is missing and the ``kedro run`` that makes it (same ``--env``; the validation
    split ``predict`` calibrates on when this run reads one and does not enable it)."""
    running = ",".join(run_params.get("pipeline_names") or ["__default__"])
    maker = _smallest_pipeline_making(set(missing))
    named = ", ".join(missing[:_NAMED]) + (f" and {len(missing) - _NAMED} more" if len(missing) > _NAMED else "")
    lines = [f"`kedro run --pipeline {running}` reads saved results that no run has written yet: {named}."]
    if maker is None:
        return " ".join([*lines, "Run the pipelines that make them first (`kedro registry describe <pipeline>` lists outputs)."])
    command = f"kedro run --pipeline {maker}"
    env = run_params.get("env")
    if env and env != "local":
        command += f" --env {env}"
    if "validation_split" in pipeline.inputs() and not (params.get("validation") or {}).get("enabled", False):
        command += " --params validation.enabled=true"
    return " ".join([*lines, f"Train first: {command} (with this run's dataset parameters), then run this again."])


def log_input_versions(pipeline, catalog) -> dict[str, str]:
    """Log which saved version of each versioned input this run will load (and return them).

    A run that starts part-way (``--from-nodes``, ``--pipeline evaluate``) loads the newest
    version of every versioned artifact it did not make itself; the log names them, so a result
    can be traced to its inputs, and ``--load-versions <name>:<version>`` picks another one.
    """
    versions = {}
    for name in sorted(pipeline.inputs()):
        if name == "parameters" or name.startswith("params:"):
            continue
        try:
            dataset = catalog.get(name)
            resolve = getattr(dataset, "resolve_load_version", None)
            version = resolve() if resolve is not None else None
        except Exception:  # noqa: BLE001 - nothing saved yet: the node's load reports it
            continue
        if version:
            versions[name] = version
            logger.info("Input %s: loading saved version %s", name, version)
    if versions:
        logger.info("(the newest of each; `kedro run --load-versions <name>:<version>` loads another)")
    return versions


class RunLockHook:
    """One run at a time per project ``data/`` folder (see ``fedpatchcore.run_lock``).

    The lock is taken before the first node (so before ingest writes anything) and released
    when the run ends, successfully or not; on Ctrl-C the interpreter's exit releases it, and
    if the process dies the operating system does. Holding the lock, the run then deletes
    scratch folders that interrupted extractions left in ``extraction.scratch_dir``: no other
    run can be writing there.
    """

    def __init__(self) -> None:
        self._project_path: Path | None = None
        self._lock: RunLock | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project_path = Path(context.project_path)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        project_path = self._project_path or Path(run_params.get("project_path") or Path.cwd())
        if self._lock is not None:  # an earlier run in this process ended without its hooks
            self._lock.release()
        lock = RunLock(lock_path_for(project_path), run_id=run_params.get("run_id"))
        lock.acquire()
        self._lock = lock
        try:
            scratch_dir = (_run_parameters(catalog).get("extraction") or {}).get("scratch_dir")
            if scratch_dir:
                remove_stale_scratch(scratch_dir)
            log_input_versions(pipeline, catalog)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self, catalog) -> None:
        # Scratch of this run's extractions is useless now, and nobody else can be writing there.
        try:
            scratch_dir = (_run_parameters(catalog).get("extraction") or {}).get("scratch_dir")
            if scratch_dir:
                remove_stale_scratch(scratch_dir)
        finally:
            self._release()
