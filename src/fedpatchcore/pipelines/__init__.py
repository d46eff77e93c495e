"""Kedro pipelines: thin nodes wiring ``fedpatchcore.core``, and the few helpers every pipeline builder uses.

Pipelines never import each other's nodes: what two of them share lives in ``core/``. A
pipeline builder may use another pipeline's builder where one is part of the other (a
federated variant is made of client lanes: ``federated/pipeline.py`` uses ``training/pipeline.py``).
"""

from collections.abc import Callable, Iterable, Sequence
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline, node, pipeline

from fedpatchcore.structure import VARIANTS_KEY


def bind(function, **bound):
    """``function`` with keyword arguments fixed at pipeline-build time (a client id, a round).

    Keeps the wrapped function's name and docstring, which Kedro and kedro-viz display.
    """
    wrapped = partial(function, **bound)
    update_wrapper(wrapped, function)
    return wrapped


def node_with_parameters(
    function: Callable,
    datasets: Sequence[str],
    blocks: Iterable[str],
    outputs,
    *,
    name: str,
    **bound,
) -> Node:
    """A node calling ``function(*datasets, parameters={block: value, ...}, **bound)``.

    Its inputs are ``datasets`` followed by ``params:<block>`` for each of ``blocks`` (e.g.
    ``core.federation.client.CLIENT_BLOCKS``), which reach ``function`` as one dict: a node
    hands them to one ``from_run`` and never lists a block itself.
    """
    datasets, blocks = list(datasets), tuple(blocks)
    # A partial of a module-level function (not a closure): picklable like every other node function.
    run = partial(_call_with_parameters, function, len(datasets), blocks, bound)
    update_wrapper(run, function)
    return node(run, [*datasets, *(f"params:{block}" for block in blocks)], outputs, name=name)


def _call_with_parameters(function: Callable, count: int, blocks: tuple[str, ...], bound: dict, *inputs):
    parameters = dict(zip(blocks, inputs[count:], strict=True))
    return function(*inputs[:count], parameters=parameters, **bound)


def variant_parameters(template: Pipeline, variant: str) -> dict[str, str]:
    """``params:<path>`` of every node in ``template`` -> ``params:variants.<variant>.<path>``.

    The config loader publishes each variant's complete, resolved parameters there, so a
    variant's nodes see its overrides and nothing else.
    """
    return {
        name: f"params:{VARIANTS_KEY}.{variant}.{name.removeprefix('params:')}"
        for name in template.inputs()
        if name.startswith("params:")
    }


def in_variant(
    template: Pipeline,
    variant: str,
    *,
    namespace: str | None = None,
    inputs: dict[str, str] | set[str] | None = None,
    outputs: dict[str, str] | None = None,
) -> Pipeline:
    """``template`` namespaced into ``namespace`` (default: the variant) reading the variant's parameters."""
    return pipeline(
        template,
        namespace=namespace or variant,
        inputs=inputs,
        outputs=outputs,
        parameters=variant_parameters(template, variant),
    )
