"""One recipe for "is this the same work?": a stable digest of the values a piece of work depends on.

Variants of one run share a partition, a client's feature extraction or its whole client lane
when their fingerprints are equal (``fedpatchcore.structure``); a Flower site keeps its local
coreset between rounds, and a restarted Flower server resumes its persisted rounds, on the same
test. What each piece of work depends on is said by its owner (e.g.
``core.federation.client.coreset_inputs``); this module only reads values out of the run's
parameters and turns them into one string.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


def value_at(parameters: Mapping[str, Any], path: Iterable[str]) -> Any:
    """The value at ``path`` (``("federation", "clients")``), ``None`` where a key is absent.

    Client ids may be written as numbers in YAML (``1:``) and arrive as strings elsewhere: a
    key matches its string form too.
    """
    value: Any = parameters
    for key in path:
        if not isinstance(value, Mapping):
            return None
        match = next((k for k in value if k == key or str(k) == str(key)), None)
        if match is None:
            return None
        value = value[match]
    return value


def values_at(parameters: Mapping[str, Any], paths: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    """``{"a.b": value at ("a", "b"), ...}`` for every path (``None`` where absent)."""
    return {".".join(path): value_at(parameters, path) for path in paths}


def fingerprint(*parts: Any) -> str:
    """SHA-256 of the parts as canonical JSON (keys sorted; anything not JSON by its ``str``).

    Two pieces of work with equal fingerprints compute the same thing.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
