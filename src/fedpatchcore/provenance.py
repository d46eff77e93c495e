"""What a run read: every file dataset loaded so far, with the version it resolved to.

:class:`RunProvenanceHook` records, for each dataset a node loads, its catalog type, file
path and (for versioned datasets) the version actually read; it also keeps the run's save
version. :class:`fedpatchcore.datasets.RunProvenanceDataset` hands that record to a node,
so the HTML report can say which versions of which datasets it was built from. The record
belongs to the process (like the parameters in :mod:`fedpatchcore.structure`) and starts
afresh with every run.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

logger = logging.getLogger(__name__)

_record: dict[str, Any] = {"save_version": None, "datasets": {}}


def current_record() -> dict[str, Any]:
    """What the current run has read, kept up to date as the run goes on.

    The live record, not a copy: a node that takes it as an input also sees the datasets
    loaded for that node after it (its other inputs).
    """
    return _record


def _describe(dataset: Any) -> dict[str, Any] | None:
    try:
        description = dataset._describe()
    except Exception:  # noqa: BLE001 - a dataset that cannot describe itself is left out
        return None
    filepath = description.get("filepath") or description.get("path")
    if filepath is None:
        return None  # memory datasets, parameters
    entry = {"type": f"{type(dataset).__module__}.{type(dataset).__name__}", "filepath": str(filepath)}
    if isinstance(dataset, AbstractVersionedDataset) and getattr(dataset, "_version", None) is not None:
        try:
            entry["version"] = dataset.resolve_load_version()
        except Exception:  # noqa: BLE001 - nothing saved yet
            entry["version"] = None
    else:
        entry["version"] = None  # unversioned: the file as it is
    return entry


class RunProvenanceHook:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog, save_version) -> None:
        self._catalog = catalog
        _record["save_version"] = save_version
        _record["datasets"] = {}

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str) -> None:
        if self._catalog is None or dataset_name.startswith("params:") or dataset_name == "parameters":
            return
        try:
            dataset = self._catalog.get(dataset_name)
        except Exception:  # noqa: BLE001
            return
        entry = _describe(dataset) if dataset is not None else None
        if entry is not None:
            _record["datasets"][dataset_name] = entry
