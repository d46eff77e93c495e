"""AutoVI (Renault) reader.

Layout per category::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/<id>.png
    <root>/<category>/ground_truth/<defect>/<id>/<nnnn>.png   one PNG per defect channel
    <root>/<category>/defects_config.json                       [{defect_name, pixel_value,
                                                                  saturation_threshold,
                                                                  relative_saturation}, ...]

A channel's defect is the config entry whose ``pixel_value`` the channel's pixels carry
(MVTec LOCO semantics), see :func:`fedpatchcore.core.data.loading.load_defect_channels`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedpatchcore.core.data.loading import DatasetLayoutError
from fedpatchcore.core.data.mvtec import (
    ALL,
    IndexResult,
    index_layout,
    normalize_image_sizes,
    pick_image_size,
)
from fedpatchcore.core.data.types import DefectConfig

logger = logging.getLogger(__name__)

AUTOVI_CATEGORIES = (
    "engine_wiring",
    "pipe_clip",
    "pipe_staple",
    "tank_screw",
    "underbody_pipes",
    "underbody_screw",
)

# Default (width, height) each AutoVI category is resized to (the sizes of the AutoVI paper).
AUTOVI_IMAGE_SIZES = {
    "engine_wiring": (400, 400),
    "pipe_clip": (400, 400),
    "pipe_staple": (400, 400),
    "tank_screw": (1000, 750),
    "underbody_pipes": (1000, 750),
    "underbody_screw": (1000, 750),
}

# Size for a category in AutoVI layout that is not one of AutoVI's own.
AUTOVI_FALLBACK_IMAGE_SIZE = (400, 400)

DEFECTS_CONFIG_FILE = "defects_config.json"


def read_defects_config(path: str | Path) -> tuple[DefectConfig, ...]:
    """Entries of a ``defects_config.json``; empty (with a log line) when the file is absent."""
    path = Path(path)
    if not path.is_file():
        logger.info("No %s; defect channels of this category carry no saturation config", path)
        return ()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(entries, dict):  # tolerate {"defects": [...]}
            entries = entries.get("defects", [])
        defects = tuple(
            DefectConfig(
                defect_name=str(e["defect_name"]),
                pixel_value=int(e["pixel_value"]),
                saturation_threshold=float(e["saturation_threshold"]),
                relative_saturation=bool(e["relative_saturation"]),
            )
            for e in entries
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetLayoutError(f"Malformed defects config {path}: {exc!r}") from exc
    values = [d.pixel_value for d in defects]
    if len(set(values)) != len(values):
        raise DatasetLayoutError(f"Defects config {path} gives the same pixel_value to two defects: {values}")
    return defects


def index_autovi(
    root: str | Path,
    categories: str | Iterable[str] = ALL,
    image_sizes: Mapping | None = None,
    default_sizes: Mapping[str, tuple[int, int]] | None = None,
    fallback_size: tuple[int, int] = AUTOVI_FALLBACK_IMAGE_SIZE,
) -> IndexResult:
    """Index a dataset in AutoVI layout.

    ``categories``: ``"all"`` (every sub-folder with ``train``/``test``) or a list of names.
    ``image_sizes``: optional ``{category | "default": (width, height)}`` overriding
    ``default_sizes`` (AutoVI's own, :data:`AUTOVI_IMAGE_SIZES`, when None); categories in
    neither get ``fallback_size``. Returns ``(samples, {category: CategoryInfo}, skipped)``.
    """
    overrides = normalize_image_sizes(image_sizes)
    defaults = AUTOVI_IMAGE_SIZES if default_sizes is None else normalize_image_sizes(default_sizes)
    fallback = (int(fallback_size[0]), int(fallback_size[1]))
    return index_layout(
        root,
        categories,
        size_for=lambda c: pick_image_size(c, overrides, defaults, fallback),
        defects_for=lambda cat_dir: read_defects_config(cat_dir / DEFECTS_CONFIG_FILE),
    )
