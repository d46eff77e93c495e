"""Kedro pipelines: thin nodes wiring ``fedpatchcore.core``."""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, pipeline

from fedpatchcore.structure import VARIANTS_KEY


def bind(function, **bound):
    """``function`` with keyword arguments fixed at pipeline-build time (a client id, a round).

    Keeps the wrapped function's name and docstring, which Kedro and kedro-viz display.
    """
    wrapped = partial(function, **bound)
    update_wrapper(wrapped, function)
    return wrapped


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
