"""What one client does with its training images: stream them into patch-feature files.

Full vectors go to a float16 file per category as they are produced; only their random
projection (used to choose the coreset) stays in memory, so a client with a million patches
needs a few hundred MB, not the ~6 GB the vectors would take in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fedpatchcore.core.backbones import load_backbone
from fedpatchcore.core.batches import iter_image_batches
from fedpatchcore.core.data.types import CategoryInfo, Sample, group_by_category
from fedpatchcore.core.feature_store import PatchFeatureFile, PatchFeatureWriter
from fedpatchcore.core.patchcore import PatchEmbedder
from fedpatchcore.core.runtime import resolve_device, set_torch_threads

logger = logging.getLogger(__name__)


def make_embedder(backbone: Mapping[str, Any], extraction: Mapping[str, Any]) -> PatchEmbedder:
    """The frozen pretrained feature extractor every client and the evaluator share.

    ``backbone`` and ``extraction`` are the parameter blocks of the same names.
    """
    set_torch_threads(extraction["num_threads"])
    device = resolve_device(backbone["device"], parameter="backbone.device")
    network = load_backbone(
        backbone["name"],
        weights_path=backbone.get("weights_path"),
        device=device,
        allow_download=bool(backbone.get("allow_download", False)),
    )
    return PatchEmbedder(network, neighbourhood=extraction["neighbourhood"], device=device)


@dataclass
class ExtractedFeatures:
    """Patch features of one client's training images, one file per category.

    Rows of a category's file come image by image (in ``image_keys`` order), each image's
    ``grid`` = (h, w) patches in row-major order, so row ``r`` is patch
    ``(r // w % h, r % w)`` of image ``image_keys[r // (h * w)]``.
    """

    files: dict[str, PatchFeatureFile]
    image_keys: dict[str, list[str]]  # category -> the images whose patches are in its file
    grid: dict[str, tuple[int, int]]  # category -> (h, w) patches per image
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable images, not in the files
    numbers: dict[str, float] = field(default_factory=dict)  # what the client measured on its images

    @property
    def n_images(self) -> dict[str, int]:
        return {category: len(keys) for category, keys in self.image_keys.items()}


def extract_patch_features(
    samples: Sequence[Sample],
    infos: dict[str, CategoryInfo],
    embedder: PatchEmbedder,
    output_dir: str | Path,
    *,
    batch_size: int,
    projection_dim: int | None,
    seed: int,
    num_workers: int = 2,
    description: str = "extract",
    transform: Callable[[Sample, np.ndarray], np.ndarray] | None = None,
) -> ExtractedFeatures:
    """Embed every image and append its patch vectors to ``<output_dir>/<category>.npy``.

    ``transform(sample, image)`` (optional) sees each decoded uint8 image before the network and
    returns the image to embed (a site's degradations, per-image measurements).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, skipped, image_keys, grid = {}, [], {}, {}
    for category, category_samples in group_by_category(samples).items():
        info = infos[category]
        writer = PatchFeatureWriter(
            output_dir / f"{category}.npy",
            dim=embedder.feature_dim,
            projection_dim=projection_dim,
            seed=seed,
        )
        keys: list[str] = []
        progress = tqdm(
            total=len(category_samples), desc=f"{description} {category}", unit="img", leave=False
        )
        # numpy's BLAS (the projection in writer.append) would otherwise start its own threads,
        # which keep spinning after each call and slow the network's threads on the same cores.
        with threadpool_limits(limits=1, user_api="blas"):
            for batch in iter_image_batches(
                category_samples, info.image_size, batch_size, skipped, num_workers
            ):
                images = batch.images
                if transform is not None:
                    images = np.stack([transform(s, im) for s, im in zip(batch.samples, images, strict=True)])
                patches = embedder.embed(images)
                writer.append(patches.reshape(-1, patches.shape[-1]))
                keys.extend(sample.key for sample in batch.samples)
                grid[category] = (int(patches.shape[1]), int(patches.shape[2]))
                progress.update(len(batch.samples))
        progress.close()
        if not keys:
            writer.close()
            raise ValueError(f"no readable training image for category {category} (all skipped: see log)")
        files[category] = writer.close()
        image_keys[category] = keys
        logger.info(
            "%s: %s -> %d images, %d patch vectors of dim %d",
            description,
            category,
            len(keys),
            files[category].n_rows,
            files[category].dim,
        )
    return ExtractedFeatures(files, image_keys, grid, skipped)
