"""One entry point that indexes a dataset of any supported format.

Returns ``(samples, {category: CategoryInfo}, skipped)`` where ``skipped`` lists
``{"path", "reason", "category", "split"}`` for every unreadable file that was left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fedpatchcore.core.common.seeding import derive_rng
from fedpatchcore.core.data.autovi import AUTOVI_CATEGORIES, AUTOVI_IMAGE_SIZES, index_autovi
from fedpatchcore.core.data.loading import DatasetLayoutError, ImageReadError, MaskSizeError
from fedpatchcore.core.data.mvtec import ALL, MVTEC_DEFAULT_IMAGE_SIZE, IndexResult, index_mvtec
from fedpatchcore.core.data.synthetic import MANIFEST_FILE, SYNTHETIC_IMAGE_SIZE
from fedpatchcore.core.data.types import TRAIN, Sample

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
    "subsample_training",
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


def subsample_training(
    samples: Sequence[Sample], train_fraction: Mapping[str, float] | None, seed: int
) -> tuple[list[Sample], dict[str, dict[str, int]]]:
    """Keep only ``fraction`` of the named categories' training images (``dataset.train_fraction``).

    A category keeps ``round(fraction × n)`` of its ``n`` training images (half rounds up, at
    least one), drawn with a generator seeded by ``(seed, "train_fraction", category)`` from the
    images sorted by key, so the draw does not depend on file order or on other categories. Test
    images are never touched. Returns the kept samples (input order) and, per subsampled
    category, ``{"kept": .., "of": ..}``. An unknown category or a fraction outside (0, 1] is a
    ValueError.
    """
    fractions = {str(c): f for c, f in (train_fraction or {}).items()}
    if not fractions:
        return list(samples), {}
    train = {}
    for s in samples:
        if s.split == TRAIN:
            train.setdefault(s.category, []).append(s.key)
    unknown = sorted(set(fractions) - set(train))
    if unknown:
        raise ValueError(
            f"dataset.train_fraction names categories without training images: {unknown} (known: {sorted(train)})"
        )
    dropped: set[str] = set()
    counts = {}
    for category, fraction in fractions.items():
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"dataset.train_fraction.{category} must be in (0, 1], got {fraction!r}")
        keys = sorted(train[category])
        keep = min(len(keys), max(1, math.floor(fraction * len(keys) + 0.5)))
        order = derive_rng(int(seed), "train_fraction", category).permutation(len(keys))
        dropped.update(keys[i] for i in order[keep:])
        counts[category] = {"kept": keep, "of": len(keys)}
    return [s for s in samples if s.key not in dropped], counts


def few_shot_training(samples: Sequence[Sample], train_shots: int | str | None, seed: int) -> list[Sample]:
    """Keep ``train_shots`` training images per category (``dataset.train_shots``; ``"all"``/None: all).

    Each category's subset is drawn with a generator seeded by ``(seed, "train_shots", category)``
    from its training images sorted by key, and the subsets are nested: the 1-shot image is among
    the 4 shots, which are among the 8, so a few-shot curve adds images rather than swapping them.
    A category with fewer images keeps them all. Test samples are returned untouched; the caller
    removes the validation split first.
    """
    if train_shots in (None, "all"):
        return list(samples)
    if isinstance(train_shots, bool) or not isinstance(train_shots, int) or train_shots < 1:
        raise ValueError(f"dataset.train_shots must be 'all' or a positive number of images, got {train_shots!r}")
    train: dict[str, list[str]] = {}
    for s in samples:
        if s.split == TRAIN:
            train.setdefault(s.category, []).append(s.key)
    kept: set[str] = set()
    for category, keys in train.items():
        keys = sorted(keys)
        order = derive_rng(int(seed), "train_shots", category).permutation(len(keys))
        kept.update(keys[i] for i in order[:train_shots])
    return [s for s in samples if s.split != TRAIN or s.key in kept]
