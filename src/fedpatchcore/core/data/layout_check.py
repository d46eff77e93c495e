"""Check a dataset folder before a run uses it, so layout problems stop the run at once.

Without this, an empty ``train/good`` showed up as a ``KeyError`` at scoring, a category
without ``test/`` as a missing-version error of the overlays, and a truncated ground-truth mask
only in the metrics node, each after the whole feature extraction. :func:`check_dataset_layout`
finds those in seconds: it reads image headers (as indexing does) and, for ground-truth masks,
the header plus the end of the file (a PNG must end with its ``IEND`` chunk); only a mask whose
end looks wrong is decoded in full to confirm.

It returns the problems as ``"<path>: <what is wrong>"`` strings instead of raising, so a caller
can report every problem of a dataset in one message.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from fedpatchcore.core.data.loading import ImageReadError, is_image_file, original_size
from fedpatchcore.core.data.mvtec import ALL, _image_files, _mask_lookup, resolve_categories
from fedpatchcore.core.data.synthetic import folder_problem
from fedpatchcore.core.data.types import GOOD, TEST, TRAIN

# The last chunk of every PNG file: length 0, type IEND, its CRC.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How far from the end the IEND chunk may sit (some writers append a few bytes after it).
_TAIL_BYTES = 64


def _looks_complete(path: Path) -> bool:
    """Cheap test that a PNG file was not cut short: it ends with (or near) its IEND chunk."""
    with open(path, "rb") as handle:
        head = handle.read(len(_PNG_SIGNATURE))
        if head != _PNG_SIGNATURE:
            return False  # not a PNG: decide by decoding
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        return _PNG_END in handle.read()


def mask_problem(mask_path: str | Path, image_size: tuple[int, int] | None = None) -> str | None:
    """Why a ground-truth mask cannot be used (unreadable, truncated, wrong size), or None.

    ``image_size`` is the ``(width, height)`` of the image the mask annotates.
    """
    mask_path = Path(mask_path)
    try:
        mask_size = original_size(mask_path)
    except ImageReadError as exc:
        return f"ground-truth mask cannot be read ({exc.__cause__ or exc})"
    if image_size is not None and mask_size != tuple(image_size):
        return (
            f"ground-truth mask is {mask_size[0]}x{mask_size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; a mask must have its image's size"
        )
    if not _looks_complete(mask_path):
        try:
            with Image.open(mask_path) as image:
                image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            return f"ground-truth mask is truncated or corrupt ({exc})"
    return None


def _has_image(folder: Path) -> bool:
    return any(is_image_file(p) for p in folder.iterdir())


def check_category_layout(root: Path, category: str) -> list[str]:
    """Problems of one category folder: train/good, test/ and its ground-truth masks."""
    problems: list[str] = []
    cat_dir = root / category
    train_good = cat_dir / TRAIN / GOOD
    if not train_good.is_dir():
        problems.append(
            f"{train_good}: missing; every category needs its defect-free training images in train/good/"
        )
    elif not _has_image(train_good):
        problems.append(f"{train_good}: holds no training image (.png, .jpg, ...)")
    test_dir = cat_dir / TEST
    if not test_dir.is_dir():
        problems.append(f"{test_dir}: missing; every category needs test images in test/<good|defect>/")
        return problems
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(_has_image(folder) for folder in defect_dirs):
        problems.append(f"{test_dir}: holds no test image (expected test/good/*.png, test/<defect>/*.png)")
    gt_dir = cat_dir / "ground_truth"
    if not gt_dir.is_dir():
        return problems  # image-level labels only: pixel metrics are left out, not an error
    for folder in defect_dirs:
        if folder.name == GOOD:
            continue
        masks_for = _mask_lookup(gt_dir / folder.name)
        for image_path in _image_files(folder):
            mask_paths = masks_for(image_path.stem)
            if not mask_paths:
                continue  # indexing logs it; the image still counts for image-level metrics
            try:
                size = original_size(image_path)
            except ImageReadError:
                continue  # an unreadable test image is skipped and recorded, not an error
            for mask_path in mask_paths:
                problem = mask_problem(mask_path, size)
                if problem:
                    problems.append(f"{mask_path}: {problem} (image {image_path})")
    return problems


def check_dataset_layout(
    format: str, root: str | Path, categories: str | Iterable[str] | None = ALL
) -> list[str]:
    """Everything that would make a run on this dataset fail late or score the wrong thing.

    Per chosen category: ``train/good`` exists and holds an image, ``test/`` exists and holds
    an image, and every ground-truth mask of a defect image is readable, complete and of its
    image's size. ``format="synthetic"``: ingest (re)generates that dataset, so only a ``root``
    that cannot be a folder (a file) is a problem.
    """
    if str(format).lower() == "synthetic":
        problem = folder_problem(root)
        return [problem] if problem else []
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: dataset root does not exist or is not a folder"]
    try:
        names = resolve_categories(root, categories)
    except ValueError as exc:  # DatasetLayoutError too: no category folder, unknown names
        return [f"{root}: {exc}"]
    problems: list[str] = []
    for category in names:
        problems += check_category_layout(root, category)
    return problems
