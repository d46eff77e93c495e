"""One entry point that indexes a dataset of any supported format.

Returns ``(samples, {category: CategoryInfo}, skipped)`` where ``skipped`` lists
``{"path", "reason"}`` for every unreadable file that was left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedpatchcore.core.data.autovi import AUTOVI_CATEGORIES, AUTOVI_IMAGE_SIZES, index_autovi
from fedpatchcore.core.data.loading import DatasetLayoutError, ImageReadError, MaskSizeError
from fedpatchcore.core.data.mvtec import ALL, MVTEC_DEFAULT_IMAGE_SIZE, IndexResult, index_mvtec
from fedpatchcore.core.data.synthetic import MANIFEST_FILE, SYNTHETIC_IMAGE_SIZE

DATASET_FORMATS = ("synthetic", "autovi", "mvtec")

__all__ = [
    "ALL",
    "AUTOVI_CATEGORIES",
    "AUTOVI_IMAGE_SIZES",
    "DATASET_FORMATS",
    "MVTEC_DEFAULT_IMAGE_SIZE",
    "DatasetLayoutError",
    "ImageReadError",
    "MaskSizeError",
    "index_dataset",
    "synthetic_image_size",
]


def synthetic_image_size(root: str | Path) -> tuple[int, int]:
    """The size a synthetic dataset was drawn at (from its manifest), else the generator default."""
    try:
        manifest = json.loads((Path(root) / MANIFEST_FILE).read_text(encoding="utf-8"))
        width, height = manifest["settings"]["image_size"]
        return int(width), int(height)
    except (OSError, ValueError, KeyError, TypeError):
        return SYNTHETIC_IMAGE_SIZE


def index_dataset(
    format: str,
    root: str | Path,
    categories: str | Iterable[str] = ALL,
    image_sizes: Mapping | None = None,
) -> IndexResult:
    """Index ``root`` as a ``format`` dataset ("synthetic" | "autovi" | "mvtec").

    ``categories``: ``"all"`` or a list of category names (an unknown one raises
    ValueError listing those available). ``image_sizes``: optional
    ``{category | "default": [width, height]}`` overriding the format's default sizes
    (synthetic: the size it was drawn at; AutoVI: :data:`AUTOVI_IMAGE_SIZES`; MVTec: 256x256).
    """
    fmt = str(format).lower()
    if fmt == "synthetic":  # drawn in AutoVI layout, read at the size it was drawn at
        return index_autovi(
            root, categories, image_sizes, default_sizes={}, fallback_size=synthetic_image_size(root)
        )
    if fmt == "autovi":
        return index_autovi(root, categories, image_sizes)
    if fmt == "mvtec":
        return index_mvtec(root, categories, image_sizes)
    raise ValueError(f"Unknown dataset.format parameter {format!r}; choose one of {list(DATASET_FORMATS)}")
