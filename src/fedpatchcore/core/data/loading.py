"""Reading images and ground-truth masks for indexed samples.

Every later stage reads pixels through these functions, so resizing, colour handling and
the checks on bad input happen in one place. Sizes are always ``(width, height)`` (PIL's
order); arrays come back as ``(height, width[, 3])`` (numpy's order).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from fedpatchcore.core.data.types import CategoryInfo, DefectConfig, Sample

# File endings the readers treat as images (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Errors PIL raises for missing, truncated or corrupt files.
_PIL_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image or mask file cannot be opened or decoded."""


class MaskSizeError(ValueError):
    """A ground-truth mask does not have the size of the image it annotates."""


class DatasetLayoutError(ValueError):
    """A dataset folder does not have the expected layout."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def natural_key(text: str) -> tuple:
    """Sort key that orders "2" before "10" and is total (ties broken by the raw text)."""
    parts = tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in parts), text


def original_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header only (no pixel decode)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _PIL_READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read image file {path}: {exc}") from exc
    if width <= 0 or height <= 0:
        raise ImageReadError(f"Image file {path} has an empty size {width}x{height}")
    return int(width), int(height)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale to 8 bits, then expand to three channels.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """RGB ``uint8`` array of shape ``(height, width, 3)``, resized bilinearly to ``size`` = (width, height).

    Grayscale images are expanded to three identical channels; alpha is dropped.
    Raises :class:`ImageReadError` naming the file when it cannot be decoded.
    """
    width, height = int(size[0]), int(size[1])
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (width, height):
                if image.mode not in ("RGB", "L"):
                    image = Image.fromarray(_to_rgb_array(image))
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = _to_rgb_array(image)
    except _PIL_READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read image file {path}: {exc}") from exc
    return np.ascontiguousarray(array)


def _read_mask_values(path: str | Path) -> np.ndarray:
    """Raw 2-D pixel values of a mask file (first channel of a colour mask)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "1":
                values = np.asarray(image, dtype=np.uint8) * 255
            elif image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                values = np.asarray(image)
            elif image.mode == "P":
                values = np.asarray(image.convert("L"))
            else:
                values = np.asarray(image)
                values = values[:, :, 0] if values.ndim == 3 else values
    except _PIL_READ_ERRORS as exc:
        raise ImageReadError(f"Cannot read mask file {path}: {exc}") from exc
    return values


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = int(size[0]), int(size[1])
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 0


def check_mask_size(image_path: str | Path, mask_path: str | Path, image_size: tuple[int, int] | None = None):
    """Raise :class:`MaskSizeError` when the mask's original size differs from its image's."""
    image_size = image_size or original_size(image_path)
    mask_size = original_size(mask_path)
    if mask_size != image_size:
        raise MaskSizeError(
            f"Mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}; a mask must have its image's size"
        )


def load_defect_channels(sample: Sample, info: CategoryInfo) -> list[tuple[np.ndarray, DefectConfig | None]]:
    """One ``(bool mask (H, W), defect)`` per ground-truth channel of ``sample``.

    The defect of a channel is the entry of the category's defects config whose
    ``pixel_value`` is the channel's (largest) non-zero value, as in AutoVI / MVTec LOCO;
    ``None`` when no entry matches (e.g. MVTec AD masks) or the channel is empty.
    Empty list for a good image or a dataset without pixel ground truth.
    """
    if not sample.mask_paths:
        return []
    image_size = original_size(sample.image_path)
    channels = []
    for mask_path in sample.mask_paths:
        check_mask_size(sample.image_path, mask_path, image_size)
        values = _read_mask_values(mask_path)
        nonzero = values > 0
        defect = info.defect_by_pixel_value(int(values.max())) if nonzero.any() else None
        channels.append((_resize_mask(nonzero, info.image_size), defect))
    return channels


def load_mask(sample: Sample, info: CategoryInfo) -> np.ndarray:
    """Boolean ``(height, width)`` mask at ``info.image_size``: all channels OR-merged.

    All zeros for a good image (or when the dataset has no pixel ground truth).
    """
    width, height = info.image_size
    mask = np.zeros((height, width), dtype=bool)
    for channel, _ in load_defect_channels(sample, info):
        mask |= channel
    return mask
