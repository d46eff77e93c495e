"""MVTec AD reader, and the folder walker every reader shares.

Layout (MVTec AD; also any dataset arranged the same way)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/<id>.png
    <root>/<category>/ground_truth/<defect>/<id>_mask.png     (optional)

The walker also accepts ``ground_truth/<defect>/<id>.png`` and AutoVI/LOCO's
``ground_truth/<defect>/<id>/<nnnn>.png`` (one file per defect channel). A category
without a ``ground_truth`` folder is indexed with ``has_pixel_ground_truth=False``.

Index time reads only image headers: a file that cannot be opened is skipped, logged and
reported; a mask whose size differs from its image's raises :class:`MaskSizeError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from fedpatchcore.core.data.loading import (
    DatasetLayoutError,
    ImageReadError,
    MaskSizeError,
    is_image_file,
    natural_key,
    original_size,
)
from fedpatchcore.core.data.types import GOOD, TEST, TRAIN, CategoryInfo, DefectConfig, Sample

logger = logging.getLogger(__name__)

# Default (width, height) every MVTec image and mask is resized to; override per call.
MVTEC_DEFAULT_IMAGE_SIZE = (256, 256)

ALL = "all"

IndexResult = tuple[list[Sample], dict[str, CategoryInfo], list[dict]]


def discover_categories(root: Path) -> list[str]:
    """Sub-folders of ``root`` that look like categories (hold a ``train`` or ``test`` folder)."""
    names = [
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / TRAIN).is_dir() or (p / TEST).is_dir())
    ]
    return sorted(names, key=natural_key)


def resolve_categories(root: Path, categories: str | Iterable[str] | None) -> list[str]:
    """The category names to index: ``"all"`` (or None) = every discovered one, sorted."""
    available = discover_categories(root)
    if categories is None or categories == ALL:
        if not available:
            raise DatasetLayoutError(
                f"No category folder under dataset root {root}: expected <root>/<category>/train/good/"
            )
        return available
    wanted = [categories] if isinstance(categories, str) else [str(c) for c in categories]
    if not wanted:
        raise ValueError("dataset.categories is empty: give 'all' or a list of category names")
    unknown = [c for c in wanted if not (root / c).is_dir()]
    if unknown:
        raise ValueError(
            f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} in dataset.categories; "
            f"available under {root}: {available}"
        )
    return sorted(dict.fromkeys(wanted), key=natural_key)


def normalize_image_sizes(image_sizes: Mapping | None) -> dict[str, tuple[int, int]]:
    """``{category: (width, height)}`` from a parameters mapping (lists allowed; key ``default`` too)."""
    sizes = {}
    for name, size in (image_sizes or {}).items():
        if size is None:
            continue
        if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
            raise ValueError(f"dataset.image_sizes[{name!r}] must be [width, height] > 0, got {size!r}")
        sizes[str(name)] = (int(size[0]), int(size[1]))
    return sizes


def pick_image_size(
    category: str,
    overrides: Mapping[str, tuple[int, int]],
    defaults: Mapping[str, tuple[int, int]],
    fallback: tuple[int, int],
) -> tuple[int, int]:
    """Per-call override, then the call's ``default`` key, then the reader's per-category default."""
    if category in overrides:
        return overrides[category]
    if "default" in overrides:
        return overrides["default"]
    return tuple(defaults.get(category, fallback))


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def _mask_lookup(gt_defect_dir: Path) -> Callable[[str], tuple[str, ...]]:
    """Function from image id to its mask paths in one ``ground_truth/<defect>`` folder."""
    if not gt_defect_dir.is_dir():
        return lambda image_id: ()
    entries = {p.name: p for p in gt_defect_dir.iterdir() if not p.name.startswith(".")}
    files_by_stem: dict[str, Path] = {}
    for _name, path in sorted(entries.items()):
        if is_image_file(path):
            files_by_stem.setdefault(path.stem, path)

    def lookup(image_id: str) -> tuple[str, ...]:
        folder = entries.get(image_id)
        if folder is not None and folder.is_dir():  # AutoVI / LOCO: one file per channel
            return tuple(str(p) for p in _image_files(folder))
        for stem in (f"{image_id}_mask", image_id):
            if stem in files_by_stem:
                return (str(files_by_stem[stem]),)
        return ()

    return lookup


def _skip(skipped: list[dict], path: Path | str, reason: str, category: str, split: str) -> None:
    logger.warning("Skipping %s: %s", path, reason)
    skipped.append({"path": str(path), "reason": reason, "category": category, "split": split})


def _index_split_folder(
    category: str,
    split: str,
    defect_type: str,
    folder: Path,
    gt_dir: Path | None,
    skipped: list[dict],
) -> list[Sample]:
    samples = []
    seen: set[str] = set()
    masks_for = _mask_lookup(gt_dir / defect_type) if gt_dir is not None and defect_type != GOOD else None
    for path in _image_files(folder):
        image_id = path.stem
        if image_id in seen:
            _skip(skipped, path, f"duplicate image id {image_id!r} in {folder}", category, split)
            continue
        try:
            size = original_size(path)
        except ImageReadError as exc:
            _skip(skipped, path, f"unreadable image ({exc.__cause__ or exc})", category, split)
            continue
        mask_paths: tuple[str, ...] = masks_for(image_id) if masks_for is not None else ()
        if masks_for is not None and not mask_paths:
            logger.warning("No ground-truth mask for defective image %s", path)
        unreadable_mask = None
        for mask_path in mask_paths:
            try:
                mask_size = original_size(mask_path)
            except ImageReadError as exc:
                unreadable_mask = f"unreadable mask {mask_path} ({exc.__cause__ or exc})"
                break
            if mask_size != size:
                raise MaskSizeError(
                    f"Mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {path} is "
                    f"{size[0]}x{size[1]}; a mask must have its image's size"
                )
        if unreadable_mask:
            _skip(skipped, path, unreadable_mask, category, split)
            continue
        seen.add(image_id)
        samples.append(
            Sample(
                category=category,
                split=split,
                defect_type=defect_type,
                image_id=image_id,
                image_path=str(path),
                mask_paths=mask_paths,
            )
        )
    return samples


def index_category_folder(
    root: Path,
    category: str,
    image_size: tuple[int, int],
    defects: Sequence[DefectConfig] = (),
    skipped: list[dict] | None = None,
) -> tuple[list[Sample], CategoryInfo]:
    """Samples (train first, then test; good before defects) and info of one category folder."""
    skipped = [] if skipped is None else skipped
    cat_dir = root / category
    train_good = cat_dir / TRAIN / GOOD
    if not train_good.is_dir():
        raise DatasetLayoutError(
            f"Category folder {cat_dir} has no train/good folder (expected {cat_dir}/train/good/*.png)"
        )
    gt_dir = cat_dir / "ground_truth"
    has_gt = gt_dir.is_dir()
    samples = _index_split_folder(category, TRAIN, GOOD, train_good, None, skipped)
    if not samples:
        logger.warning("Category %s has no readable training image in %s", category, train_good)
    test_dir = cat_dir / TEST
    if test_dir.is_dir():
        defect_dirs = sorted(
            (p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: (p.name != GOOD, natural_key(p.name)),
        )
        for folder in defect_dirs:
            samples += _index_split_folder(
                category, TEST, folder.name, folder, gt_dir if has_gt else None, skipped
            )
    else:
        logger.warning("Category %s has no test folder %s", category, test_dir)
    info = CategoryInfo(
        name=category,
        image_size=(int(image_size[0]), int(image_size[1])),
        has_pixel_ground_truth=has_gt,
        defects=tuple(defects),
    )
    return samples, info


def check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset root {root} does not exist or is not a folder; set the dataset.root parameter "
            f"(conf/base/parameters*.yml, or `kedro run --params dataset.root=<folder>`)"
        )
    return root


def index_layout(
    root: str | Path,
    categories: str | Iterable[str] | None,
    size_for: Callable[[str], tuple[int, int]],
    defects_for: Callable[[Path], Sequence[DefectConfig]] = lambda cat_dir: (),
) -> IndexResult:
    """Index every chosen category folder under ``root`` (shared by all readers)."""
    root = check_root(root)
    samples: list[Sample] = []
    infos: dict[str, CategoryInfo] = {}
    skipped: list[dict] = []
    for category in resolve_categories(root, categories):
        cat_samples, info = index_category_folder(
            root, category, size_for(category), defects_for(root / category), skipped
        )
        samples += cat_samples
        infos[category] = info
    return samples, infos, skipped


def index_mvtec(
    root: str | Path,
    categories: str | Iterable[str] = ALL,
    image_sizes: Mapping | None = None,
    default_size: tuple[int, int] = MVTEC_DEFAULT_IMAGE_SIZE,
) -> IndexResult:
    """Index an MVTec-AD-style dataset.

    ``categories``: ``"all"`` (every sub-folder with ``train``/``test``) or a list of names.
    ``image_sizes``: optional ``{category | "default": (width, height)}`` overriding
    ``default_size``. Returns ``(samples, {category: CategoryInfo}, skipped)`` where
    ``skipped`` lists ``{"path", "reason", "category", "split"}`` for every unreadable file left out.
    """
    overrides = normalize_image_sizes(image_sizes)
    fallback = (int(default_size[0]), int(default_size[1]))
    return index_layout(root, categories, lambda c: pick_image_size(c, overrides, {}, fallback))
