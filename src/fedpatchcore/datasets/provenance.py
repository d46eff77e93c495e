"""A read-only dataset holding what the current run has read (see :mod:`fedpatchcore.provenance`)."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError


class RunProvenanceDataset(AbstractDataset):
    """Loads ``{"save_version": ..., "datasets": {name: {type, filepath, version}}}``.

    Catalog entry::

        run_provenance:
          type: fedpatchcore.datasets.RunProvenanceDataset
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        from fedpatchcore.provenance import current_record

        return current_record()

    def save(self, data: Any) -> None:
        raise DatasetError("RunProvenanceDataset is filled by the run itself and cannot be saved")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {}
