"""Decoded image batches for the backbone, with unreadable images skipped and reported.

Decoding PNGs is done on a small thread pool (PIL releases the GIL while decoding) so the
next batch is being read while the current one runs through the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fedpatchcore.core.data.loading import ImageReadError, load_image
from fedpatchcore.core.data.types import Sample

logger = logging.getLogger(__name__)


@dataclass
class ImageBatch:
    samples: list[Sample]  # the images that could be read, in input order
    images: np.ndarray  # uint8 (B, H, W, 3)


def _read(sample: Sample, size: tuple[int, int]) -> np.ndarray | ImageReadError:
    try:
        return load_image(sample.image_path, size)
    except ImageReadError as error:
        return error


def iter_image_batches(
    samples: Sequence[Sample],
    size: tuple[int, int],
    batch_size: int,
    skipped: list[dict[str, str]],
    num_workers: int = 2,
) -> Iterator[ImageBatch]:
    """Yield batches of resized RGB images; unreadable files are logged and appended to ``skipped``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    if num_workers < 1:
        # Decode in the caller's thread: on a machine whose cores the network already fills,
        # loader threads only fight its threads for the same cores.
        for chunk in chunks:
            batch = _collect(chunk, [_read(sample, size) for sample in chunk], skipped)
            if batch is not None:
                yield batch
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        # Submit one batch ahead: it decodes while the caller runs the network on the current one.
        pending = [pool.map(_read, chunk, [size] * len(chunk)) for chunk in chunks[:1]]
        for position, chunk in enumerate(chunks):
            if position + 1 < len(chunks):
                following = chunks[position + 1]
                pending.append(pool.map(_read, following, [size] * len(following)))
            batch = _collect(chunk, list(pending.pop(0)), skipped)
            if batch is not None:
                yield batch


def _collect(
    chunk: list[Sample], results: list[np.ndarray | ImageReadError], skipped: list[dict[str, str]]
) -> ImageBatch | None:
    """The readable images of one chunk as a batch; unreadable ones are logged and reported."""
    kept_samples, kept_images = [], []
    for sample, result in zip(chunk, results, strict=True):
        if isinstance(result, ImageReadError):
            logger.warning("Skipping unreadable image %s: %s", sample.image_path, result)
            skipped.append({"path": sample.image_path, "reason": str(result)})
            continue
        kept_samples.append(sample)
        kept_images.append(result)
    return ImageBatch(kept_samples, np.stack(kept_images)) if kept_images else None
