"""The one exception type for input a user can fix: a parameter, a file, a run to do first.

Every stage raises :class:`InputError` (a ``ValueError``, so ``except ValueError`` still
catches it) when what it was given is wrong in a way the message can name, e.g.
``explain.category 'woven_fabric' contradicts dataset_index``. The command line
(``fedpatchcore.cli.run``) prints such a message alone, without the traceback that a bug
deserves.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, named in the message (parameter path or file), with what to do about it."""
