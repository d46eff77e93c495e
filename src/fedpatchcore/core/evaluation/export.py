"""Anomaly maps on disk in the layouts the official evaluation scripts read.

AutoVI (``autovi_evaluation_code``): ``<maps_dir>/<category>/test/<defect>/<image_id>.png``,
one single-channel 16-bit PNG per test image, at the ORIGINAL image size.

16-bit integers need a scale. It is ONE scale per category, never one per image (per-image
normalisation gives every image the same maximum and image AUC-ROC collapses to 0.5):

    value  = round((map - offset) / scale * 65535)      (clipped to 0..65535)
    offset = minimum over all of the category's maps
    scale  = maximum - minimum over all of the category's maps (1.0 if they are constant)

The full range (max, not a quantile) is used so nothing saturates: every exported value maps
back to its score within ``scale / 65535 / 2``. ``offset`` and ``scale`` are written to
``<maps_dir>/<category>/map_scale.json``; :func:`read_autovi_maps` undoes the mapping. The
transform is monotone and the same for every image of a category, so every threshold-based
metric (AUROC, sPRO, PRO) is unchanged up to quantisation.

The maps arrive at the model's input size; they are resized bilinearly (Pillow, float32) to
the original size read from each image file's header. Bilinear interpolation stays inside the
input's value range, so offset/scale computed on the input maps also cover the resized ones.

MVTec AD / LOCO (``evaluate_experiment.py``): ``<maps_dir>/<category>/test/<defect>/<image_id>.tiff``,
float32 raw scores, original size: :func:`export_mvtec_maps`.

Results are versioned, never overwritten: exporting into an existing non-empty folder raises
``FileExistsError`` unless ``overwrite=True`` (which replaces the exported categories' folders).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from fedpatchcore.core.data.types import Sample, group_by_category

PNG_MAX = 65535
SCALE_FILE = "map_scale.json"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image, read from its header only."""
    with Image.open(path) as im:
        return im.size


def original_sizes_of(samples: Sequence[Sample]) -> dict[str, tuple[int, int]]:
    """``sample.key -> (width, height)`` read from every sample's image header."""
    return {s.key: image_size_of(s.image_path) for s in samples}


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one float map to ``size`` = (width, height); float32 out."""
    arr = np.asarray(anomaly_map, dtype=np.float32)
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr.copy()
    return np.asarray(Image.fromarray(arr).resize(tuple(size), Image.BILINEAR), dtype=np.float32)


def _map_path(maps_dir: Path, sample: Sample, suffix: str) -> Path:
    return maps_dir / sample.category / sample.split / sample.defect_type / f"{sample.image_id}{suffix}"


def _check_inputs(maps: np.ndarray, samples: Sequence[Sample]) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, H, W); got shape {maps.shape}")
    if len(maps) != len(samples):
        raise ValueError(f"{len(maps)} maps for {len(samples)} samples")
    if not np.all(np.isfinite(maps)):
        raise ValueError("maps contain NaN or inf")
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("samples contain the same image twice")
    return maps


def _prepare_dir(maps_dir: Path, categories: Sequence[str], overwrite: bool) -> None:
    if maps_dir.exists() and any(maps_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{maps_dir} already holds exported maps; results are never overwritten: export to a "
                f"new (versioned) folder or pass overwrite=True"
            )
        for cat in categories:
            shutil.rmtree(maps_dir / cat, ignore_errors=True)
    maps_dir.mkdir(parents=True, exist_ok=True)


def _sizes(samples: Sequence[Sample], original_sizes: dict | None) -> list[tuple[int, int]]:
    if original_sizes is None:
        return [image_size_of(s.image_path) for s in samples]
    missing = [s.key for s in samples if s.key not in original_sizes]
    if missing:
        raise KeyError(f"original_sizes has no entry for {missing[:3]} ({len(missing)} missing)")
    return [(int(original_sizes[s.key][0]), int(original_sizes[s.key][1])) for s in samples]


# ---------------------------------------------------------------------------------------------
# AutoVI: 16-bit PNG, one scale per category
# ---------------------------------------------------------------------------------------------


def category_scale(maps: np.ndarray) -> tuple[float, float]:
    """(offset, scale) of one category's maps: min and max - min (1.0 when constant)."""
    lo, hi = float(np.min(maps)), float(np.max(maps))
    span = hi - lo
    return lo, (span if span > 0 else 1.0)


def encode_uint16(anomaly_map: np.ndarray, offset: float, scale: float) -> np.ndarray:
    values = np.rint((np.asarray(anomaly_map, dtype=np.float64) - offset) / scale * PNG_MAX)
    return np.clip(values, 0, PNG_MAX).astype(np.uint16)


def decode_uint16(values: np.ndarray, offset: float, scale: float) -> np.ndarray:
    return (np.asarray(values, dtype=np.float64) / PNG_MAX * scale + offset).astype(np.float32)


def _start_export(
    maps: np.ndarray,
    samples: Sequence[Sample],
    maps_dir: str | Path,
    original_sizes: dict[str, tuple[int, int]] | None,
    overwrite: bool,
) -> tuple[np.ndarray, Path, list[tuple[int, int]], dict[str, list[int]]]:
    """Checked maps, the folder (prepared for the categories), each map's original size, the map
    indices per category: what every exporter starts from."""
    maps = _check_inputs(maps, samples)
    maps_dir = Path(maps_dir)
    sizes = _sizes(samples, original_sizes)
    groups = group_by_category(range(len(samples)), category=lambda i: samples[i].category)
    _prepare_dir(maps_dir, list(groups), overwrite)
    return maps, maps_dir, sizes, groups


def export_autovi_maps(
    maps: np.ndarray,
    samples: Sequence[Sample],
    maps_dir: str | Path,
    original_sizes: dict[str, tuple[int, int]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``maps[i]`` for ``samples[i]`` as a 16-bit PNG in the AutoVI evaluation layout.

    ``original_sizes`` maps ``sample.key`` to (width, height); ``None`` reads every size from
    ``sample.image_path``'s header. Returns ``{"maps_dir", "n_maps", "categories": {category:
    {"offset", "scale", "n_maps"}}}``.
    """
    maps, maps_dir, sizes, groups = _start_export(maps, samples, maps_dir, original_sizes, overwrite)
    summary: dict = {"maps_dir": str(maps_dir), "n_maps": len(samples), "categories": {}}
    for cat, idx in groups.items():
        offset, scale = category_scale(maps[idx])
        for i in idx:
            path = _map_path(maps_dir, samples[i], ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(encode_uint16(resize_map(maps[i], sizes[i]), offset, scale)).save(path)
        info = {
            "category": cat,
            "offset": offset,
            "scale": scale,
            "max_value": PNG_MAX,
            "n_maps": len(idx),
            "encoding": "value = round((map - offset) / scale * 65535); map = value / 65535 * scale + offset",
            "scale_rule": "offset = min, scale = max - min over all of the category's maps (one scale per category)",
            "resize": "bilinear (Pillow, float32) from the model's map size to the original image size",
        }
        (maps_dir / cat / SCALE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        summary["categories"][cat] = {"offset": offset, "scale": scale, "n_maps": len(idx)}
    return summary


def _stack(maps: list[np.ndarray]) -> np.ndarray:
    if len({m.shape for m in maps}) <= 1:
        return np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)
    out = np.empty(len(maps), dtype=object)
    for i, m in enumerate(maps):
        out[i] = m
    return out


def read_autovi_maps(maps_dir: str | Path, samples: Sequence[Sample]) -> np.ndarray:
    """Read back exported PNG maps as float32 scores (offset/scale undone), at original size.

    Returns ``(n, H, W)`` float32 when every map has the same size, otherwise a 1-D object
    array of per-image float32 maps (categories of different image sizes).
    """
    maps_dir = Path(maps_dir)
    scales: dict[str, tuple[float, float]] = {}
    out = []
    for s in samples:
        if s.category not in scales:
            info = json.loads((maps_dir / s.category / SCALE_FILE).read_text())
            scales[s.category] = (float(info["offset"]), float(info["scale"]))
        with Image.open(_map_path(maps_dir, s, ".png")) as im:
            values = np.asarray(im)
        out.append(decode_uint16(values, *scales[s.category]))
    return _stack(out)


# ---------------------------------------------------------------------------------------------
# MVTec AD / LOCO: float32 TIFF, raw scores
# ---------------------------------------------------------------------------------------------


def export_mvtec_maps(
    maps: np.ndarray,
    samples: Sequence[Sample],
    maps_dir: str | Path,
    original_sizes: dict[str, tuple[int, int]] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write raw float32 maps as ``<maps_dir>/<category>/test/<defect>/<image_id>.tiff`` (original size)."""
    maps, maps_dir, sizes, groups = _start_export(maps, samples, maps_dir, original_sizes, overwrite)
    for i, s in enumerate(samples):
        path = _map_path(maps_dir, s, ".tiff")
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, resize_map(maps[i], sizes[i]))
    return {
        "maps_dir": str(maps_dir),
        "n_maps": len(samples),
        "categories": {cat: {"n_maps": len(idx)} for cat, idx in groups.items()},
    }


def read_mvtec_maps(maps_dir: str | Path, samples: Sequence[Sample]) -> np.ndarray:
    """Read back TIFF maps written by :func:`export_mvtec_maps` (same return shape rules as PNG)."""
    maps_dir = Path(maps_dir)
    return _stack([np.asarray(tifffile.imread(_map_path(maps_dir, s, ".tiff")), np.float32) for s in samples])
