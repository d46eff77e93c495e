"""Kedro pipelines: thin nodes wiring ``fedpatchcore.core``."""

from functools import partial, update_wrapper


def bind(function, **bound):
    """``function`` with keyword arguments fixed at pipeline-build time (a client id, a round).

    Keeps the wrapped function's name and docstring, which Kedro and kedro-viz display.
    """
    wrapped = partial(function, **bound)
    update_wrapper(wrapped, function)
    return wrapped
