"""The inspector: one folder per category holding what an inspection station needs, and nothing else.

:func:`write_inspector` writes, for one ready-to-score :class:`~fedpatchcore.core.scoring.predict.CategoryModel`::

    <category>/embedder.onnx    backbone + neighbourhood aggregation (core/features/onnx_embedder.py),
                                float32 (batch, 3, H, W) normalised RGB -> (batch, h, w, d) features
    <category>/bank.npy         the memory bank, float32 (rows, d)
    <category>/thresholds.json  how patch distances become a decision: the scoring settings
                                (sigma, image score, top-k, reweighting) and predict's calibration
                                (threshold, pixel threshold, normalisation location/scale), or null
    <category>/manifest.json    input size, mean/std, category, setting, bank fingerprint, opset,
                                project version, the files and what they hold

:func:`load_inspector` reads such a folder back into a ``CategoryModel`` scored by ONNX Runtime
(checking the bank against its fingerprint), so the station-side path is the one tested here.
The patch score is the Euclidean distance to the nearest bank row; the anomaly map is the patch
grid resized bilinearly to the input size and Gaussian-smoothed with ``sigma``; the image score
is the map's maximum (``scoring.image_score``): :mod:`fedpatchcore.core.scoring.patch_scores`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedpatchcore.core.banks import bank_fingerprint
from fedpatchcore.core.banks.knn import build_index
from fedpatchcore.core.features.onnx_embedder import INPUT_NAME, OPSET, OUTPUT_NAME, OnnxEmbedder, export_onnx
from fedpatchcore.core.features.setting import Setting
from fedpatchcore.core.scoring.predict import CategoryModel
from fedpatchcore.core.scoring.thresholds import Calibration

__all__ = ["FILES", "load_inspector", "write_inspector"]

FILES = {
    "network": "embedder.onnx",
    "bank": "bank.npy",
    "thresholds": "thresholds.json",
    "manifest": "manifest.json",
}
MANIFEST_FORMAT = 1


def _fingerprint(category: str, bank: np.ndarray) -> str:
    return bank_fingerprint({f"bank/{category}": bank})


def write_inspector(
    folder: str | Path,
    model: CategoryModel,
    calibration: Calibration | None,
    *,
    project_version: str,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Write ``model``'s inspector into ``folder`` (created; must not exist) and return its manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    if not hasattr(model.embedder, "backbone"):
        raise TypeError("write_inspector exports a torch PatchEmbedder (build the model with runtime='torch')")
    export_onnx(model.embedder, model.image_size, folder / FILES["network"], opset=opset)
    bank = np.ascontiguousarray(model.bank, dtype=np.float32)
    np.save(folder / FILES["bank"], bank)
    setting = model.setting
    thresholds = {
        "scoring": {
            "sigma": float(model.sigma),
            "image_score": setting.image_score,
            "topk": int(setting.topk),
            "reweight": bool(setting.reweight),
            "reweight_neighbours": int(setting.num_neighbours),
        },
        "calibration": None if calibration is None else calibration.to_dict(),
    }
    (folder / FILES["thresholds"]).write_text(json.dumps(thresholds, indent=2) + "\n")
    width, height = model.image_size
    grid = model.embedder.grid_size(model.image_size)
    backbone = model.embedder.backbone
    manifest = {
        "format": MANIFEST_FORMAT,
        "category": model.category,
        "setting": setting.name,
        "backbone": setting.backbone,
        "layers": list(backbone.layers),
        "neighbourhood": int(setting.neighbourhood),
        "input_size": [int(width), int(height)],
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, int(height), int(width)],
            "dtype": "float32",
            "normalisation": "RGB resized to input_size (bilinear), divided by 255, minus mean, divided by std",
        },
        "mean": [float(m) for m in backbone.mean],
        "std": [float(s) for s in backbone.std],
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(grid[0]), int(grid[1]), int(model.embedder.feature_dim)]},
        "opset": int(opset),
        "bank": {"rows": int(bank.shape[0]), "dim": int(bank.shape[1]), "fingerprint": _fingerprint(model.category, bank)},
        "files": dict(FILES),
        "project_version": project_version,
    }
    (folder / FILES["manifest"]).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_inspector(folder: str | Path, threads: int | None = None) -> tuple[CategoryModel, Calibration | None, dict]:
    """A written inspector as (``CategoryModel`` on ONNX Runtime, its calibration or None, manifest)."""
    folder = Path(folder)
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"inspector folder {str(folder)!r} lacks {missing}")
    manifest = json.loads((folder / FILES["manifest"]).read_text())
    thresholds = json.loads((folder / FILES["thresholds"]).read_text())
    bank = np.load(folder / FILES["bank"])
    category = manifest["category"]
    if _fingerprint(category, bank) != manifest["bank"]["fingerprint"]:
        raise ValueError(f"{folder / FILES['bank']} does not match the fingerprint in its manifest: a changed bank")
    embedder = OnnxEmbedder(folder / FILES["network"], manifest["mean"], manifest["std"], threads=threads)
    scoring: Mapping[str, Any] = thresholds["scoring"]
    setting = Setting(
        backbone=manifest["backbone"],
        image_size=tuple(manifest["input_size"]),
        image_score=scoring["image_score"],
        topk=int(scoring["topk"]),
        reweight=bool(scoring["reweight"]),
        num_neighbours=int(scoring["reweight_neighbours"]),
        neighbourhood=int(manifest["neighbourhood"]),
    )
    model = CategoryModel(
        category, setting, tuple(manifest["input_size"]), embedder, bank, build_index(bank), float(scoring["sigma"])
    )
    calibration = thresholds.get("calibration")
    return model, None if calibration is None else Calibration.from_dict(calibration), manifest
