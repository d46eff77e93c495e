"""Catalog dataset for one client's streamed patch features (float16 ``.npy`` per category)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fedpatchcore.core.features.extraction import SCRATCH_MARKER, ExtractedFeatures
from fedpatchcore.core.features.feature_store import PatchFeatureFile, projected_path
from fedpatchcore.datasets._local import LocalVersionedDataset


class PatchFeaturesDataset(LocalVersionedDataset):
    """A folder ``<category>.npy`` (+ ``<category>.projected.npy``) and ``features.json``.

    Extraction streams features into a scratch folder on the same disk; saving *moves* those
    files here instead of copying gigabytes, and loading reopens them without reading them,
    so ``kedro run --from-nodes <client>.select_coreset`` re-selects a coreset from cached
    features at no extraction cost.
    """

    def _write(self, path: Path, data: ExtractedFeatures) -> None:
        if not isinstance(data, ExtractedFeatures):
            raise TypeError(f"PatchFeaturesDataset saves ExtractedFeatures, got {type(data).__name__}")
        path.mkdir(parents=True)
        meta = {
            "image_keys": data.image_keys,
            "grid": {category: list(grid) for category, grid in data.grid.items()},
            "skipped": data.skipped,
            "numbers": data.numbers,
        }
        (path / "features.json").write_text(json.dumps(meta, indent=2))
        for category, feature_file in data.files.items():
            if feature_file.projected is not None:
                feature_file.save_projected(projected_path(path / f"{category}.npy"))
        # Moved last: if anything above fails, the extracted features are still in scratch.
        sources = set()
        for category, feature_file in data.files.items():
            sources.add(feature_file.path.parent)
            shutil.move(str(feature_file.path), path / f"{category}.npy")
        for source in sources:  # the emptied scratch folder of the extraction
            (source / SCRATCH_MARKER).unlink(missing_ok=True)
            if source.is_dir() and not any(source.iterdir()):
                os.rmdir(source)

    def _read(self, path: Path) -> ExtractedFeatures:
        meta = json.loads((path / "features.json").read_text())
        files = {
            category: PatchFeatureFile.open(path / f"{category}.npy") for category in sorted(meta["image_keys"])
        }
        grid = {category: (int(h), int(w)) for category, (h, w) in meta["grid"].items()}
        return ExtractedFeatures(files, meta["image_keys"], grid, meta["skipped"], meta.get("numbers", {}))
